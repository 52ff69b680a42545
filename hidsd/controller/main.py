"""`hidsd-controller` entry point."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from hidsd.base.errors import ConfigError, HidsError
from hidsd.base.settings import load_settings as load_settings_of
from hidsd.controller.service import Controller, ControllerSettings


def load_settings(args: argparse.Namespace) -> ControllerSettings:
    """Flags win over HIDSD_CONTROLLER_* env, which wins over the TOML file, then defaults.

    An unknown key in the file or an unknown HIDSD_CONTROLLER_* variable is refused.
    """
    flags = {"nats_servers": args.nats, "sys_nats_servers": args.sys_nats,
             "etcd_endpoints": args.etcd, "subject_prefix": args.subject_prefix,
             "key_prefix": args.key_prefix, "name": args.name}  # fmt: skip
    return load_settings_of(
        ControllerSettings,
        file=Path(args.config) if args.config else None,
        env=os.environ,
        flags={k: v or None for k, v in flags.items()},
        defaults={"name": socket.gethostname()},
        env_namespace="HIDSD_CONTROLLER_",
        what="controller settings",
    ).value


async def serve(settings: ControllerSettings) -> int:
    ctl = Controller(settings)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    count = [0]

    def on_signal() -> None:
        count[0] += 1
        ctl.should_exit.set()
        if count[0] > 1 and task is not None:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return await ctl.run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hidsd-controller")
    p.add_argument("-c", "--config", help="controller settings (TOML)")
    p.add_argument("--nats", help="comma-separated NATS URLs (application account)")
    p.add_argument("--sys-nats", help="NATS URLs with system-account credentials, for "
                   "connect/disconnect advisories (exact presence)")  # fmt: skip
    p.add_argument("--etcd", help="comma-separated etcd endpoints host:port")
    p.add_argument("--subject-prefix", help="NATS subject prefix (default hidsd)")
    p.add_argument("--key-prefix", help="etcd key prefix (default /hidsd/)")
    p.add_argument("--name", help="this controller's name (default: hostname)")
    p.add_argument("--log-format", default=os.environ.get("HIDSD_LOG_FORMAT", "auto"))
    p.add_argument("--log-level", default=os.environ.get("HIDSD_LOG_LEVEL", "info"))
    args = p.parse_args(argv)
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        print(f"hidsd-controller: {exc.message}", file=sys.stderr)
        return 2
    from hidsd.base.logging import configure

    configure(args.log_level, args.log_format)
    import uvloop

    try:
        return uvloop.run(serve(settings))
    except asyncio.CancelledError:
        return 130
    except HidsError as exc:
        print(f"hidsd-controller: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
