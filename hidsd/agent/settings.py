"""Bootstrap settings: a TOML file plus `HIDSD_*` environment overrides.

Only what an agent needs before it can reach the control plane lives here (who am I, where is
the bus, where is etcd, whom do I trust). Everything else is desired state in etcd. The fields
below are the whole description: `hidsd.base.settings` reads them (environment > file >
defaults; the agent has no setting flags), and `load_agent_settings` adds the checks that
need more than a type.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from hidsd.base.errors import ConfigError, HidsError
from hidsd.base.settings import load_settings, setting
from hidsd.wire.commands import MAX_COMMAND_BYTES
from hidsd.wire.names import DEFAULT_KEY_PREFIX, DEFAULT_SUBJECT_PREFIX

MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


DEFAULT_NATS_SERVERS = ("nats://127.0.0.1:4222",)
DEFAULT_ETCD_ENDPOINTS = ("127.0.0.1:2379",)
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")
_CGROUP_MODES = ("auto", "off", "cgroup-v1", "cgroup-v2")
_CGROUP_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class NatsSettings:
    servers: tuple[str, ...] = setting(
        DEFAULT_NATS_SERVERS, env="HIDSD_NATS_SERVERS", nonempty=True
    )
    user: str | None = setting(None, env="HIDSD_NATS_USER")
    password: str | None = setting(None, env="HIDSD_NATS_PASSWORD")
    token: str | None = setting(None)
    #: First reconnect delay; doubles per failed attempt up to `reconnect_max_s`, with jitter.
    reconnect_base_s: float = setting(0.2, gt=0)
    reconnect_max_s: float = setting(10.0, gt=0)
    connect_timeout_s: float = setting(2.0, gt=0)


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = setting(
        DEFAULT_ETCD_ENDPOINTS, env="HIDSD_ETCD_ENDPOINTS", nonempty=True
    )
    user: str | None = setting(None, env="HIDSD_ETCD_USER")
    password: str | None = setting(None, env="HIDSD_ETCD_PASSWORD")
    timeout_s: float = setting(3.0, gt=0)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    #: empty: derived from /etc/machine-id
    host_id: str = setting("", env="HIDSD_HOST_ID")
    groups: tuple[str, ...] = setting((), env="HIDSD_GROUPS")
    nats: NatsSettings = setting(default_factory=NatsSettings)
    etcd: EtcdSettings = setting(default_factory=EtcdSettings)
    trusted_keys: tuple[str, ...] = setting(
        (), env="HIDSD_TRUSTED_KEYS", nonempty=True,
        hint="print an operator public key with `hidsctl keys show`; an agent that trusts "
        "nobody cannot be controlled",
    )  # fmt: skip
    data_dir: Path = setting(Path("/var/lib/hidsd"), env="HIDSD_DATA_DIR")
    subject_prefix: str = setting(DEFAULT_SUBJECT_PREFIX)
    key_prefix: str = setting(DEFAULT_KEY_PREFIX)
    heartbeat_s: float = setting(10.0, env="HIDSD_HEARTBEAT_S", gt=0)
    resync_s: float = setting(60.0, env="HIDSD_RESYNC_S", gt=0)
    #: Watch the desired-state keys in etcd (off: converge on reconnect and resync only).
    watch: bool = setting(True)
    max_command_bytes: int = setting(MAX_COMMAND_BYTES, ge=256)
    shutdown_timeout_s: float = setting(5.0, gt=0)
    log_level: str = setting("info", env="HIDSD_LOG_LEVEL", choices=_LOG_LEVELS)
    log_format: str = setting("auto", env="HIDSD_LOG_FORMAT", choices=_LOG_FORMATS)
    #: the circuit breaker's resource control: "auto" (cgroup v2, else v1, else psutil
    #: accounting), "cgroup-v1"/"cgroup-v2" (that one; if it cannot be set up the agent still
    #: runs, on psutil accounting, and says so), or "off" (psutil, no kernel limits)
    cgroups: str = setting(
        "auto", env="HIDSD_CGROUPS", choices=_CGROUP_MODES,
        hint="'auto' is cgroup v2, else v1, else psutil accounting; 'cgroup-v1' or "
        "'cgroup-v2' that one only; 'off' psutil accounting, no kernel limits",
    )  # fmt: skip
    #: our cgroup subtree's name, under the agent's own cgroup (a systemd unit's, or root's)
    cgroup_name: str = setting("hidsd")
    #: a second copy of the control state, outside the data dir (a tmpfs: kept across agent
    #: restarts), so a stop accepted while the data dir is read-only survives a restart;
    #: "" turns the copy off
    runtime_dir: Path | None = setting(Path("/run/hidsd"), env="HIDSD_RUNTIME_DIR")


def read_machine_id(paths: tuple[Path, ...] = MACHINE_ID_PATHS) -> str | None:
    for p in paths:
        try:
            text = p.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None


def load_agent_settings(
    path: Path | None,
    env: Mapping[str, str] | None = None,
    machine_id_paths: tuple[Path, ...] = MACHINE_ID_PATHS,
) -> AgentSettings:
    """Read and validate the agent's bootstrap settings; ConfigError names the bad field.

    The agent does not refuse unknown `HIDSD_*` variables: the prefix is shared (the
    controller's `HIDSD_CONTROLLER_*`, the dev stack's), and an agent must not stop over a
    variable meant for someone else.
    """
    from hidsd.wire.names import check_name
    from hidsd.wire.signing import TrustStore

    env = os.environ if env is None else env
    s = load_settings(AgentSettings, file=path, env=env, what="agent settings").value
    host_id = s.host_id or read_machine_id(machine_id_paths)
    if not host_id:
        raise ConfigError(
            "no host_id set and no /etc/machine-id to derive it from", field="host_id"
        )
    try:
        check_name(host_id, "host_id")
        for g in s.groups:
            check_name(g, "groups")
    except HidsError as exc:
        raise ConfigError(exc.message, field=exc.fields.get("field", "host_id")) from exc
    try:
        TrustStore.from_b64(list(s.trusted_keys))
    except HidsError as exc:
        raise ConfigError(f"setting 'trusted_keys': {exc.message}", field="trusted_keys") from exc
    if not _CGROUP_NAME_RE.fullmatch(s.cgroup_name):
        raise ConfigError(
            "setting 'cgroup_name': letters, digits, '.', '-' or '_' (one path component)",
            field="cgroup_name",
        )
    if not s.key_prefix.startswith("/") or not s.key_prefix.endswith("/"):
        raise ConfigError("setting 'key_prefix': must start and end with '/'", field="key_prefix")
    return replace(s, host_id=host_id)
