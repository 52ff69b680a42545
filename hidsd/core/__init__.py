"""Agent core: settings, lifecycle, run-mode state, logging and errors."""
