"""Plugin runtime: the supervisor and telemetry pipeline (`supervisor`, `telemetry`), plugins'
logs (`pluginlog`), resource control (`cgroups`), the Python SDK for plugin authors (`sdk`) and
the built-in plugins (`builtin`), each runnable as its own process. The pipe frame format is in
`hidsd.wire.frames`."""
