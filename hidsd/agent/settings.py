"""Bootstrap settings: a TOML file plus `HIDSD_*` environment overrides.

Only what an agent needs before it can reach the control plane lives here (who am I, where is
the bus, where is etcd, whom do I trust). Everything else is desired state in etcd.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hidsd.base.errors import ConfigError, HidsError
from hidsd.wire.commands import MAX_COMMAND_BYTES
from hidsd.wire.names import DEFAULT_KEY_PREFIX, DEFAULT_SUBJECT_PREFIX

MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


DEFAULT_NATS_SERVERS = ("nats://127.0.0.1:4222",)
DEFAULT_ETCD_ENDPOINTS = ("127.0.0.1:2379",)


@dataclass(frozen=True, slots=True)
class NatsSettings:
    servers: tuple[str, ...] = DEFAULT_NATS_SERVERS
    user: str | None = None
    password: str | None = None
    token: str | None = None
    #: First reconnect delay; doubles per failed attempt up to `reconnect_max_s`, with jitter.
    reconnect_base_s: float = 0.2
    reconnect_max_s: float = 10.0
    connect_timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = DEFAULT_ETCD_ENDPOINTS
    user: str | None = None
    password: str | None = None
    timeout_s: float = 3.0


@dataclass(frozen=True, slots=True)
class AgentSettings:
    host_id: str
    groups: tuple[str, ...]
    nats: NatsSettings
    etcd: EtcdSettings
    trusted_keys: tuple[str, ...]
    data_dir: Path
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    key_prefix: str = DEFAULT_KEY_PREFIX
    heartbeat_s: float = 10.0
    resync_s: float = 60.0
    #: Watch the desired-state keys in etcd (off: converge on reconnect and resync only).
    watch: bool = True
    max_command_bytes: int = MAX_COMMAND_BYTES
    shutdown_timeout_s: float = 5.0
    log_level: str = "info"
    log_format: str = "auto"
    #: the circuit breaker's resource control: "auto" (cgroup v2, else v1, else psutil
    #: accounting), "cgroup-v1"/"cgroup-v2" (that one; if it cannot be set up the agent still
    #: runs, on psutil accounting, and says so), or "off" (psutil, no kernel limits)
    cgroups: str = "auto"
    #: our cgroup subtree's name, under the agent's own cgroup (a systemd unit's, or root's)
    cgroup_name: str = "hidsd"
    #: a second copy of the control state, outside the data dir (a tmpfs: kept across agent
    #: restarts), so a stop accepted while the data dir is read-only survives a restart;
    #: "" turns the copy off
    runtime_dir: Path | None = Path("/run/hidsd")


_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")
_CGROUP_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class _Reader:
    """Typed access to a TOML table that names the offending field on error."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def _err(self, key: str, expected: str, value: Any) -> ConfigError:
        name = f"{self.where}.{key}" if self.where else key
        return ConfigError(f"setting {name!r}: expected {expected}, got {value!r}", field=name)

    def get_str(self, key: str, default: str | None) -> str | None:
        v = self.data.get(key, default)
        if v is not None and not isinstance(v, str):
            raise self._err(key, "a string", v)
        return v

    def get_num(self, key: str, default: float, minimum: float = 0.0) -> float:
        v = self.data.get(key, default)
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            or v <= minimum
        ):
            raise self._err(key, f"a finite number > {minimum}", v)
        return float(v)

    def get_bool(self, key: str, default: bool) -> bool:
        v = self.data.get(key, default)
        if not isinstance(v, bool):
            raise self._err(key, "true or false", v)
        return v

    def get_int(self, key: str, default: int, minimum: int = 1) -> int:
        v = self.data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self._err(key, f"an integer >= {minimum}", v)
        return v

    def get_strs(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self.data.get(key, list(default))
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise self._err(key, "a list of non-empty strings", v)
        return tuple(v)

    def table(self, key: str) -> _Reader:
        v = self.data.get(key, {})
        if not isinstance(v, dict):
            raise self._err(key, "a table", v)
        return _Reader(v, f"{self.where}.{key}" if self.where else key)

    def check_known(self, known: set[str]) -> None:
        unknown = sorted(set(self.data) - known)
        if unknown:
            where = f" in [{self.where}]" if self.where else ""
            name = f"{self.where}.{unknown[0]}" if self.where else unknown[0]
            raise ConfigError(
                f"unknown setting {unknown[0]!r}{where}; known: {', '.join(sorted(known))}",
                field=name,
            )


def read_machine_id(paths: tuple[Path, ...] = MACHINE_ID_PATHS) -> str | None:
    for p in paths:
        try:
            text = p.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None


def _split(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """HIDSD_* variables override the file (containers and tests set them)."""
    nats = raw.setdefault("nats", {})
    etcd = raw.setdefault("etcd", {})
    for name, table in (("nats", nats), ("etcd", etcd)):
        if not isinstance(table, dict):
            raise ConfigError(
                f"setting {name!r}: expected a table ([{name}]), got {table!r}", field=name
            )
    mapping: dict[str, tuple[dict[str, Any], str, bool]] = {
        "HIDSD_HOST_ID": (raw, "host_id", False),
        "HIDSD_GROUPS": (raw, "groups", True),
        "HIDSD_DATA_DIR": (raw, "data_dir", False),
        "HIDSD_RUNTIME_DIR": (raw, "runtime_dir", False),
        "HIDSD_LOG_LEVEL": (raw, "log_level", False),
        "HIDSD_LOG_FORMAT": (raw, "log_format", False),
        "HIDSD_CGROUPS": (raw, "cgroups", False),
        "HIDSD_TRUSTED_KEYS": (raw, "trusted_keys", True),
        "HIDSD_NATS_SERVERS": (nats, "servers", True),
        "HIDSD_NATS_USER": (nats, "user", False),
        "HIDSD_NATS_PASSWORD": (nats, "password", False),
        "HIDSD_ETCD_ENDPOINTS": (etcd, "endpoints", True),
        "HIDSD_ETCD_USER": (etcd, "user", False),
        "HIDSD_ETCD_PASSWORD": (etcd, "password", False),
    }
    for var, (table, key, is_list) in mapping.items():
        if var in env:
            table[key] = _split(env[var]) if is_list else env[var]
    for var, key in (("HIDSD_HEARTBEAT_S", "heartbeat_s"), ("HIDSD_RESYNC_S", "resync_s")):
        if var in env:
            try:
                raw[key] = float(env[var])
            except ValueError as exc:
                raise ConfigError(f"{var}={env[var]!r} is not a number", field=var) from exc


def load_agent_settings(
    path: Path | None,
    env: Mapping[str, str] | None = None,
    machine_id_paths: tuple[Path, ...] = MACHINE_ID_PATHS,
) -> AgentSettings:
    """Read and validate the agent's bootstrap settings; ConfigError names the bad field."""
    from hidsd.wire.names import check_name
    from hidsd.wire.signing import TrustStore

    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read settings {path}: {exc.strerror}", field="path") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"settings {path} are not valid TOML: {exc}", field="path") from exc
    _apply_env(raw, env)
    r = _Reader(raw, "")
    r.check_known(
        {
            "host_id", "groups", "nats", "etcd", "trusted_keys", "data_dir", "subject_prefix",
            "key_prefix", "heartbeat_s", "resync_s", "watch", "max_command_bytes",
            "shutdown_timeout_s", "log_level", "log_format", "cgroups", "cgroup_name",
            "runtime_dir",
        }
    )  # fmt: skip

    host_id = r.get_str("host_id", None) or read_machine_id(machine_id_paths)
    if not host_id:
        raise ConfigError(
            "no host_id set and no /etc/machine-id to derive it from", field="host_id"
        )
    groups = r.get_strs("groups", ())
    try:
        check_name(host_id, "host_id")
        for g in groups:
            check_name(g, "groups")
    except HidsError as exc:
        raise ConfigError(exc.message, field=exc.fields.get("field", "host_id")) from exc

    n = r.table("nats")
    n.check_known(
        {"servers", "user", "password", "token", "reconnect_base_s", "reconnect_max_s",
         "connect_timeout_s"}
    )  # fmt: skip
    servers = n.get_strs("servers", DEFAULT_NATS_SERVERS)
    if not servers:
        raise ConfigError("setting 'nats.servers': list at least one server", field="nats.servers")
    nats = NatsSettings(
        servers=servers,
        user=n.get_str("user", None),
        password=n.get_str("password", None),
        token=n.get_str("token", None),
        reconnect_base_s=n.get_num("reconnect_base_s", 0.2),
        reconnect_max_s=n.get_num("reconnect_max_s", 10.0),
        connect_timeout_s=n.get_num("connect_timeout_s", 2.0),
    )
    e = r.table("etcd")
    e.check_known({"endpoints", "user", "password", "timeout_s"})
    endpoints = e.get_strs("endpoints", DEFAULT_ETCD_ENDPOINTS)
    if not endpoints:
        raise ConfigError(
            "setting 'etcd.endpoints': list at least one endpoint", field="etcd.endpoints"
        )
    etcd = EtcdSettings(
        endpoints=endpoints,
        user=e.get_str("user", None),
        password=e.get_str("password", None),
        timeout_s=e.get_num("timeout_s", 3.0),
    )

    trusted = r.get_strs("trusted_keys", ())
    if not trusted:
        raise ConfigError(
            "setting 'trusted_keys': list at least one operator public key "
            "(print one with `hidsctl keys show`); an agent that trusts nobody cannot be "
            "controlled",
            field="trusted_keys",
        )
    try:
        TrustStore.from_b64(list(trusted))
    except HidsError as exc:
        raise ConfigError(f"setting 'trusted_keys': {exc.message}", field="trusted_keys") from exc

    log_level = (r.get_str("log_level", "info") or "info").lower()
    if log_level not in _LOG_LEVELS:
        raise ConfigError(
            f"setting 'log_level': expected one of {', '.join(_LOG_LEVELS)}, got {log_level!r}",
            field="log_level",
        )
    log_format = (r.get_str("log_format", "auto") or "auto").lower()
    if log_format not in _LOG_FORMATS:
        raise ConfigError(
            f"setting 'log_format': expected one of {', '.join(_LOG_FORMATS)}",
            field="log_format",
        )
    cgroups = (r.get_str("cgroups", "auto") or "auto").lower()
    if cgroups not in ("auto", "off", "cgroup-v1", "cgroup-v2"):
        raise ConfigError(
            f"setting 'cgroups': expected 'auto' (cgroup v2, else v1, else psutil accounting), "
            f"'cgroup-v1' or 'cgroup-v2' (that one only), or 'off' (psutil accounting, no "
            f"kernel limits), got {cgroups!r}",
            field="cgroups",
        )
    cgroup_name = r.get_str("cgroup_name", "hidsd") or "hidsd"
    if not _CGROUP_NAME_RE.fullmatch(cgroup_name):
        raise ConfigError(
            "setting 'cgroup_name': letters, digits, '.', '-' or '_' (one path component)",
            field="cgroup_name",
        )
    runtime = r.get_str("runtime_dir", "/run/hidsd")
    prefix = r.get_str("subject_prefix", DEFAULT_SUBJECT_PREFIX) or DEFAULT_SUBJECT_PREFIX
    key_prefix = r.get_str("key_prefix", DEFAULT_KEY_PREFIX) or DEFAULT_KEY_PREFIX
    if not key_prefix.startswith("/") or not key_prefix.endswith("/"):
        raise ConfigError("setting 'key_prefix': must start and end with '/'", field="key_prefix")
    return AgentSettings(
        host_id=host_id,
        groups=groups,
        nats=nats,
        etcd=etcd,
        trusted_keys=trusted,
        data_dir=Path(r.get_str("data_dir", "/var/lib/hidsd") or "/var/lib/hidsd"),
        subject_prefix=prefix,
        key_prefix=key_prefix,
        heartbeat_s=r.get_num("heartbeat_s", 10.0),
        resync_s=r.get_num("resync_s", 60.0),
        cgroups=cgroups,
        cgroup_name=cgroup_name,
        watch=r.get_bool("watch", True),
        max_command_bytes=r.get_int("max_command_bytes", MAX_COMMAND_BYTES, 256),
        shutdown_timeout_s=r.get_num("shutdown_timeout_s", 5.0),
        log_level=log_level,
        log_format=log_format,
        runtime_dir=Path(runtime) if runtime else None,
    )
