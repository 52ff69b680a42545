"""`hidsd`: the agent's entry point (settings, logging, uvloop, signals)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from hidsd.agent.settings import AgentSettings, load_agent_settings
from hidsd.base.errors import ConfigError, HidsError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_FORCED = 130


async def serve(settings: AgentSettings) -> int:
    """Run the agent; the first SIGINT/SIGTERM shuts down gracefully, a second one forces."""
    from hidsd.agent.app import Agent

    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            agent.log.info("shutdown_requested", signal=signal.Signals(signum).name)
            agent.should_exit.set()
        else:
            agent.log.warning("forced_exit", signal=signal.Signals(signum).name)
            agent.force_exit.set()
            if task is not None:
                task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    return await agent.run()


def _lean_imports(log_format: str) -> None:
    """Keep rich (and pygments with it) out of an agent that logs JSON lines.

    structlog imports rich when it is installed (hidsctl needs it), for pretty tracebacks on
    a terminal: 4.3 MB of RSS that JSON logging never uses. A `None` entry in `sys.modules`
    makes `import rich` raise ImportError, which structlog handles (plain tracebacks). It
    must run before anything imports structlog. With console output (a terminal, or
    `log_format = "console"`) rich stays. The condition is `hidsd.base.logging.configure`'s.
    """
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    if use_json and "structlog" not in sys.modules:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]


def _argparse(argv: list[str]) -> tuple[Path | None, bool]:
    import argparse

    parser = argparse.ArgumentParser(prog="hidsd", description="hidsd host agent")
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=Path(os.environ["HIDSD_CONFIG"]) if "HIDSD_CONFIG" in os.environ else None,
        help="bootstrap settings (TOML); HIDSD_* environment variables override it",
    )
    parser.add_argument("--check", action="store_true", help="validate the settings and exit")
    args = parser.parse_args(argv)
    return args.config, args.check


def parse_args(argv: list[str]) -> tuple[Path | None, bool]:
    """(config path, --check). The usual command lines (`-c PATH`, `--config[=]PATH`,
    `--check`) are read here: importing argparse costs 0.3 MB of RSS for the agent's whole
    life. Anything else (`--help`, a mistake) goes to argparse, which answers as it always did.
    """
    config = Path(os.environ["HIDSD_CONFIG"]) if "HIDSD_CONFIG" in os.environ else None
    check = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--check":
            check = True
        elif arg in ("-c", "--config") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            i += 1
            config = Path(argv[i])
        elif arg.startswith("--config=") and len(arg) > len("--config="):
            config = Path(arg[len("--config=") :])
        else:
            return _argparse(argv)
        i += 1
    return config, check


def main(argv: list[str] | None = None) -> int:
    config, check = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_agent_settings(config)
    except ConfigError as exc:
        print(f"hidsd: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    if check:
        print(f"hidsd: settings OK (host_id={settings.host_id}, groups={list(settings.groups)})")
        return EXIT_OK

    _lean_imports(settings.log_format)
    from hidsd.base.logging import configure

    configure(settings.log_level, settings.log_format)
    import uvloop

    try:
        return uvloop.run(serve(settings))
    except asyncio.CancelledError:
        return EXIT_FORCED
    except HidsError as exc:
        print(f"hidsd: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
