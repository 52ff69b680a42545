"""The hidsd agent: the app, its services and its pure policies."""
