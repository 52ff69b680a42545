"""`hidsd`: the agent's entry point (settings, logging, uvloop, signals)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from hidsd.core.errors import ConfigError, HidsError
from hidsd.core.settings import AgentSettings, load_agent_settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_FORCED = 130


async def serve(settings: AgentSettings) -> int:
    """Run the agent; the first SIGINT/SIGTERM shuts down gracefully, a second one forces."""
    from hidsd.core.agent import Agent

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


def main(argv: list[str] | None = None) -> int:
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
    try:
        settings = load_agent_settings(args.config)
    except ConfigError as exc:
        print(f"hidsd: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(f"hidsd: settings OK (host_id={settings.host_id}, groups={list(settings.groups)})")
        return EXIT_OK

    from hidsd.core.logging import configure

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
