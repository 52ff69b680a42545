"""Plugin runtime: the pipe frame protocol (`frames`), the supervisor and telemetry pipeline
(`supervisor`, `telemetry`), the Python SDK for plugin authors (`sdk`) and the built-in
plugins (`builtin`), each runnable as its own process."""
