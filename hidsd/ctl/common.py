"""Shared by the hidsctl command modules: settings, credentials, exit codes, output."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from hidsd.base.errors import (
    BusUnavailable,
    ConfigError,
    HidsError,
    NoResponse,
    NotRecorded,
    OperatorKeyError,
    StoreAuthError,
    StoreConflict,
    StorePermissionDenied,
    StoreUnavailable,
)
from hidsd.wire.fields import WireMap
from hidsd.wire.names import KeyLayout, Subjects
from hidsd.wire.rpc import Reply, Verb, encode_request

T = TypeVar("T")
R = TypeVar("R", bound=Reply)


class Exit(IntEnum):
    OK = 0
    INCOMPLETE = 1  # some expected hosts did not ack, or rejected, or the expected set is unknown
    USAGE = 2  # bad arguments or settings
    NOT_RECORDED = 3  # etcd down: refused, or broadcast without a record
    BUS = 4  # NATS unreachable
    CONTROLLER = 5  # no controller answered a read
    AUTH = 6  # etcd credentials or permissions
    NOT_FOUND = 7
    CONFLICT = 8  # a concurrent writer won the compare-and-swap
    INVALID = 9  # a config file (or an advisory) failed validation
    AFFECTED = 10  # a fleet query is complete and found affected hosts


out = Console()
err = Console(stderr=True, soft_wrap=True)  # errors stay one grep-able line


@dataclass
class CtlSettings:
    nats: tuple[str, ...]
    etcd: tuple[str, ...]
    key_file: Path
    subject_prefix: str = "hidsd"
    key_prefix: str = "/hidsd/"
    etcd_user: str | None = None
    etcd_password: str | None = None
    timeout_s: float = 2.0

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.subject_prefix)

    @property
    def keys(self) -> KeyLayout:
        return KeyLayout(self.key_prefix)


def _default_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hidsd" / "hidsctl.toml"


def _split(v: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in v.split(",") if x.strip())


def read_credentials(path: Path) -> tuple[str, str]:
    """A credentials file: TOML with `user` and `password`, readable by its owner only."""
    try:
        mode = path.stat().st_mode
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(
            f"cannot read credentials {path}: {exc.strerror}", field="credentials"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"credentials {path} are not valid TOML", field="credentials") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"credentials {path} are readable by others; run `chmod 600 {path}`",
            field="credentials",
        )
    user, password = data.get("user"), data.get("password")
    if not isinstance(user, str) or not isinstance(password, str) or not user:
        raise ConfigError(
            f"credentials {path}: need string `user` and `password`", field="credentials"
        )
    return user, password


def load_ctl_settings(
    config: Path | None,
    nats: str | None,
    etcd: str | None,
    key: Path | None,
    user: str | None = None,
    password: str | None = None,
) -> CtlSettings:
    """Flags > HIDSCTL_* env > credentials file > hidsctl.toml > defaults."""
    path = config or Path(os.environ.get("HIDSCTL_CONFIG", "") or _default_config())
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}", field="config") from exc
    elif config is not None:
        raise ConfigError(f"config file {config} does not exist", field="config")
    env = os.environ

    def pick(flag: Any, var: str, name: str, default: Any) -> Any:
        if flag:
            return flag
        if env.get(var):
            return env[var]
        return raw.get(name, default)

    def as_tuple(v: Any, name: str) -> tuple[str, ...]:
        if isinstance(v, str):
            return _split(v)
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return tuple(v)
        raise ConfigError(f"{name}: expected a list of strings", field=name)

    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "hidsd"
    key_default = base / "operator.key"
    etcd_user = user or env.get("HIDSCTL_ETCD_USER")
    etcd_password = password or env.get("HIDSCTL_ETCD_PASSWORD")
    if etcd_user is None:
        cred_path = env.get("HIDSCTL_CREDENTIALS") or raw.get("credentials_file")
        cred = Path(cred_path) if cred_path else base / "credentials.toml"
        if cred_path or cred.exists():
            etcd_user, file_password = read_credentials(cred)
            etcd_password = etcd_password or file_password
    if etcd_user is None:
        etcd_user = raw.get("etcd_user")
        etcd_password = etcd_password or raw.get("etcd_password")
    return CtlSettings(
        nats=as_tuple(
            pick(nats, "HIDSCTL_NATS", "nats_servers", "nats://127.0.0.1:4222"), "nats_servers"
        ),
        etcd=as_tuple(
            pick(etcd, "HIDSCTL_ETCD", "etcd_endpoints", "127.0.0.1:2379"), "etcd_endpoints"
        ),
        key_file=Path(pick(key, "HIDSCTL_KEY", "key_file", str(key_default))),
        subject_prefix=str(raw.get("subject_prefix", "hidsd")),
        key_prefix=str(raw.get("key_prefix", "/hidsd/")),
        etcd_user=etcd_user,
        etcd_password=etcd_password,
        timeout_s=float(raw.get("timeout_s", 2.0)),
    )


def open_store(s: CtlSettings) -> Any:
    """An etcd Store with the operator's credentials (never logged)."""
    from hidsd.bus.store import Store

    return Store(s.etcd, s.etcd_user, s.etcd_password, timeout_s=s.timeout_s)


def author(s: CtlSettings) -> str:
    """Who to record as the author: the etcd user when auth is on (etcd vouches for it)."""
    return s.etcd_user or os.environ.get("USER", "") or "unknown"


def _fail(exc: HidsError) -> typer.Exit:
    code = Exit.INCOMPLETE
    if isinstance(exc, BusUnavailable):
        code = Exit.BUS
    elif isinstance(exc, StoreAuthError | StorePermissionDenied):
        code = Exit.AUTH
    elif isinstance(exc, StoreUnavailable | NotRecorded):
        code = Exit.NOT_RECORDED
    elif isinstance(exc, NoResponse):
        code = Exit.CONTROLLER
    elif isinstance(exc, StoreConflict):
        code = Exit.CONFLICT
    elif isinstance(exc, ConfigError) and exc.fields.get("source") == "config-file":
        code = Exit.INVALID
    elif isinstance(exc, ConfigError | OperatorKeyError):
        code = Exit.USAGE
    err.print(f"[red]error:[/] {exc.message}")
    return typer.Exit(code)


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except HidsError as exc:
        raise _fail(exc) from exc


async def _connect(s: CtlSettings) -> Any:
    from hidsd.bus.transport import Bus, BusOptions

    bus = Bus(BusOptions(servers=s.nats, name="hidsctl", connect_timeout_s=s.timeout_s,
                         reconnect_base_s=0.1, reconnect_max_s=0.5))  # fmt: skip
    await bus.connect(attempts=2)
    return bus


async def _ask(
    s: CtlSettings, verb: Verb[R], params: WireMap | None = None, timeout_s: float | None = None,
    attempts: int = 3,
) -> R:  # fmt: skip
    """A read from the controllers, decoded to the verb's reply type (ProtocolError if it is
    malformed). A controller that dies with our request in flight leaves no reply: ask again,
    and the queue group hands it to another (reads are idempotent)."""
    bus = await _connect(s)
    try:
        for attempt in range(1, attempts + 1):
            try:
                data = await bus.request(
                    s.subjects.ctl(verb.name), encode_request(params or {}),
                    timeout_s or s.timeout_s,
                )  # fmt: skip
                break
            except NoResponse as exc:
                if attempt == attempts:
                    raise NoResponse(
                        f"no hidsd-controller answered {verb.name!r} ({attempts} tries); is one "
                        f"running and connected to {', '.join(s.nats)}?"
                    ) from exc
    finally:
        await bus.close()
    return verb.decode(data)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = time.time() - ts
    return f"{d:.1f}s ago" if d < 120 else f"{d / 60:.0f}m ago"
