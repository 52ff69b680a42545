"""Plugin runtime (pipe protocol, supervisor, SDK). Built in the plugins issue (#5)."""
