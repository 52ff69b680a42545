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
from typing import Annotated, Any, TypeVar

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
from hidsd.base.settings import Source, load_settings, setting
from hidsd.wire.fields import WireMap
from hidsd.wire.names import KeyLayout, Subjects
from hidsd.wire.rpc import Reply, Verb, encode_request

T = TypeVar("T")
R = TypeVar("R", bound=Reply)


#: options every read command shares (one definition, so help and spelling agree)
JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output")]
HostFilter = Annotated[str | None, typer.Option("--host", help="only this host id")]
GroupFilter = Annotated[str | None, typer.Option("--group", help="only agents in this group")]


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


def _config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "hidsd"


def _default_config() -> Path:
    return _config_dir() / "hidsctl.toml"


@dataclass
class CtlSettings:
    """hidsctl's settings: flags > HIDSCTL_* environment > hidsctl.toml > defaults."""

    nats: tuple[str, ...] = setting(
        ("nats://127.0.0.1:4222",), key="nats_servers", env="HIDSCTL_NATS", text_list=True,
        nonempty=True,
    )  # fmt: skip
    etcd: tuple[str, ...] = setting(
        ("127.0.0.1:2379",), key="etcd_endpoints", env="HIDSCTL_ETCD", text_list=True,
        nonempty=True,
    )  # fmt: skip
    key_file: Path = setting(default_factory=lambda: _config_dir() / "operator.key",
                             env="HIDSCTL_KEY")  # fmt: skip
    subject_prefix: str = setting("hidsd")
    key_prefix: str = setting("/hidsd/")
    etcd_user: str | None = setting(None, env="HIDSCTL_ETCD_USER")
    etcd_password: str | None = setting(None, env="HIDSCTL_ETCD_PASSWORD")
    timeout_s: float = setting(2.0, gt=0)
    #: etcd `user` and `password` (default: credentials.toml beside hidsctl.toml, if there)
    credentials_file: Path | None = setting(None, env="HIDSCTL_CREDENTIALS")

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.subject_prefix)

    @property
    def keys(self) -> KeyLayout:
        return KeyLayout(self.key_prefix)


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
    """Flags > HIDSCTL_* env > credentials file > hidsctl.toml > defaults.

    The credentials file ranks between the environment and hidsctl.toml for the etcd user
    and password. An unknown key in hidsctl.toml or an unknown HIDSCTL_* variable is refused.
    """
    path = config or Path(os.environ.get("HIDSCTL_CONFIG", "") or _default_config())
    if config is not None and not config.exists():
        raise ConfigError(f"config file {config} does not exist", field="config")
    flags = {"nats_servers": nats, "etcd_endpoints": etcd, "key_file": key,
             "etcd_user": user, "etcd_password": password}  # fmt: skip
    loaded = load_settings(
        CtlSettings,
        file=path if path.exists() else None,
        env=os.environ,
        flags={k: v or None for k, v in flags.items()},
        env_namespace="HIDSCTL_",
        env_known=("HIDSCTL_CONFIG", "HIDSCTL_LOG_LEVEL"),
        what="hidsctl settings",
    )
    s, src = loaded.value, loaded.sources
    given = (Source.FLAG, Source.ENV)
    if src["etcd_user"] not in given:
        cred = s.credentials_file or _config_dir() / "credentials.toml"
        if s.credentials_file is not None or cred.exists():
            s.etcd_user, file_password = read_credentials(cred)
            if src["etcd_password"] not in given:
                s.etcd_password = file_password
    return s


def open_store(s: CtlSettings) -> Any:
    """An etcd Store with the operator's credentials (never logged)."""
    from hidsd.bus.store import Store

    return Store(s.etcd, s.etcd_user, s.etcd_password, timeout_s=s.timeout_s)


def author(s: CtlSettings) -> str:
    """Who to record as the author: the etcd user when auth is on (etcd vouches for it)."""
    return s.etcd_user or os.environ.get("USER", "") or "unknown"


def failure(exc: HidsError) -> typer.Exit:
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


def run_sync(coro_fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except HidsError as exc:
        raise failure(exc) from exc


async def connect_bus(s: CtlSettings) -> Any:
    from hidsd.bus.transport import Bus, BusOptions

    bus = Bus(BusOptions(servers=s.nats, name="hidsctl", connect_timeout_s=s.timeout_s,
                         reconnect_base_s=0.1, reconnect_max_s=0.5))  # fmt: skip
    await bus.connect(attempts=2)
    return bus


async def ask(
    s: CtlSettings, verb: Verb[R], params: WireMap | None = None, timeout_s: float | None = None,
    attempts: int = 3,
) -> R:  # fmt: skip
    """A read from the controllers, decoded to the verb's reply type (ProtocolError if it is
    malformed). A controller that dies with our request in flight leaves no reply: ask again,
    and the queue group hands it to another (reads are idempotent)."""
    bus = await connect_bus(s)
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


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = time.time() - ts
    return f"{d:.1f}s ago" if d < 120 else f"{d / 60:.0f}m ago"
