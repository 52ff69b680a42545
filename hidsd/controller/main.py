"""`hidsd-controller` entry point."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any

from hidsd.base.errors import ConfigError, HidsError
from hidsd.controller.service import Controller, ControllerSettings


def _split(v: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in v.split(",") if x.strip())


def load_settings(args: argparse.Namespace) -> ControllerSettings:
    """Flags win over HIDSD_CONTROLLER_* env, which wins over the TOML file."""
    raw: dict[str, Any] = {}
    if args.config:
        try:
            raw = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read controller settings {args.config}: {exc}",
                              field="config") from exc  # fmt: skip
    env = os.environ
    known = {"nats_servers", "sys_nats_servers", "etcd_endpoints", "etcd_user", "etcd_password",
             "offline_timeout_factor", "stream_max_bytes", "inventory_max_bytes",
             "subject_prefix", "key_prefix", "name", "test_share_delay_s"}  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"controller settings {args.config}: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}",
            field=unknown[0],
        )

    def pick(flag: str | None, var: str, key: str, default: Any) -> Any:
        if flag:
            return flag
        if var in env:
            return env[var]
        return raw.get(key, default)

    servers = pick(args.nats, "HIDSD_CONTROLLER_NATS", "nats_servers", "nats://127.0.0.1:4222")
    sys_servers = pick(args.sys_nats, "HIDSD_CONTROLLER_SYS_NATS", "sys_nats_servers", "")
    etcd = pick(args.etcd, "HIDSD_CONTROLLER_ETCD", "etcd_endpoints", "127.0.0.1:2379")

    def as_tuple(v: str | list[str]) -> tuple[str, ...]:
        return _split(v) if isinstance(v, str) else tuple(v)

    if not as_tuple(servers):
        raise ConfigError("controller: list at least one NATS server", field="nats_servers")
    factor = raw.get("offline_timeout_factor", 3.0)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 1:
        raise ConfigError(
            "offline_timeout_factor: expected a number > 1", field="offline_timeout_factor"
        )

    def size(var: str, key: str, default: int) -> int:
        v = env.get(var, raw.get(key, default))
        try:
            n = int(v)
        except (TypeError, ValueError):
            n = -1
        if n <= 0:
            raise ConfigError(f"{key}: expected a positive number of bytes, got {v!r}", field=key)
        return n

    return ControllerSettings(
        stream_max_bytes=size("HIDSD_CONTROLLER_STREAM_MAX_BYTES", "stream_max_bytes", 1 << 30),
        inventory_max_bytes=size(
            "HIDSD_CONTROLLER_INVENTORY_MAX_BYTES", "inventory_max_bytes", 2 << 30
        ),
        servers=as_tuple(servers),
        sys_servers=as_tuple(sys_servers),
        etcd_endpoints=as_tuple(etcd),
        etcd_user=pick(None, "HIDSD_CONTROLLER_ETCD_USER", "etcd_user", None),
        etcd_password=pick(None, "HIDSD_CONTROLLER_ETCD_PASSWORD", "etcd_password", None),
        timeout_factor=float(factor),
        subject_prefix=pick(
            args.subject_prefix, "HIDSD_CONTROLLER_SUBJECT_PREFIX", "subject_prefix", "hidsd"
        ),
        key_prefix=pick(args.key_prefix, "HIDSD_CONTROLLER_KEY_PREFIX", "key_prefix", "/hidsd/"),
        name=pick(args.name, "HIDSD_CONTROLLER_NAME", "name", socket.gethostname()),
        test_share_delay_s=_seconds(
            pick(None, "HIDSD_CONTROLLER_TEST_SHARE_DELAY_S", "test_share_delay_s", 0.0),
            "test_share_delay_s",
        ),
    )


def _seconds(v: Any, key: str) -> float:
    try:
        n = float(v)
    except (TypeError, ValueError):
        n = -1.0
    if not math.isfinite(n) or n < 0:
        raise ConfigError(f"{key}: expected a number of seconds >= 0, got {v!r}", field=key)
    return n


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
