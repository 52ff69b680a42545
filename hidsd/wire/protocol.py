"""The wire and store protocol, in one pure module: names, layouts, encode and decode on bytes.

Nothing here does I/O or holds state. Every decoder takes untrusted bytes and either returns a
validated value or raises `ProtocolError`; policy (trust, replay, revisions) lives elsewhere.

Commands are signed as bytes, not objects: the envelope is the msgpack array
``[body_bytes, key_id, signature]`` and the body is the msgpack map
``{v, id, kind, scope, target, rev, issued_at, expires_at, args}``. The same envelope, with
``rev = 0``, is the value of a desired-state key in etcd; there the key's ``mod_revision`` is
the revision.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from hidsd.base.errors import ProtocolError
from hidsd.base.storage import StorageReport, StorageStatus

PROTOCOL_VERSION = 1
DEFAULT_SUBJECT_PREFIX = "hidsd"
DEFAULT_KEY_PREFIX = "/hidsd/"
#: Commands are small; anything larger is refused before it is decoded.
MAX_COMMAND_BYTES = 16 * 1024
#: Upper bound on a command's validity window; bounds the replay cache too.
MAX_COMMAND_TTL_S = 3600.0
#: A command issued more than this far in the agent's future is not yet valid.
CLOCK_TOLERANCE_S = 30.0
#: Target of a fleet-wide command.
FLEET_TARGET = "*"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class Scope(StrEnum):
    """Who a command or a desired state is for."""

    FLEET = "fleet"
    GROUP = "group"
    HOST = "host"


class CommandKind(StrEnum):
    """Typed commands (E3). Stop/resume are the kill switch; plugin_* act on one plugin
    (args {"plugin": name}); start/stop are desired state, restart is a one-off action."""

    STOP = "stop"
    RESUME = "resume"
    PLUGIN_START = "plugin_start"
    PLUGIN_STOP = "plugin_stop"
    PLUGIN_RESTART = "plugin_restart"
    #: take a plugin off the circuit breaker's denylist (one-off, like restart)
    PLUGIN_CLEAR = "plugin_clear"


PLUGIN_KINDS = (CommandKind.PLUGIN_START, CommandKind.PLUGIN_STOP, CommandKind.PLUGIN_RESTART,
                CommandKind.PLUGIN_CLEAR)  # fmt: skip
#: plugin commands that are actions, not desired state: never recorded as a plugin's state
PLUGIN_ACTIONS = (CommandKind.PLUGIN_RESTART, CommandKind.PLUGIN_CLEAR)


class RunMode(StrEnum):
    """The agent's run mode: `stopped` halts all HIDS work but keeps the control channel."""

    RUNNING = "running"
    STOPPED = "stopped"
    EXITING = "exiting"


class AckStatus(StrEnum):
    """What an agent says about a command addressed to it."""

    APPLIED = "applied"
    SUPERSEDED = "superseded"
    REJECTED = "rejected"


def desired_mode(kind: CommandKind) -> RunMode:
    """The run mode a kill-switch command asks for."""
    return RunMode.STOPPED if kind is CommandKind.STOP else RunMode.RUNNING


def command_plugin(cmd: Command) -> str:
    """The plugin a plugin_* command is about; ProtocolError if it names none."""
    name = cmd.args.get("plugin")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name):
        raise ProtocolError("plugin command without a valid args.plugin", field="args.plugin")
    return name


def check_name(value: str, what: str) -> str:
    """Host ids and group names become subject tokens and key segments: keep them plain."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ProtocolError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '-' or '_' "
            "(no dots, spaces or wildcards)",
            field=what,
        )
    return value


# --------------------------------------------------------------------------- subjects


@dataclass(frozen=True, slots=True)
class Subjects:
    """NATS subject names under a configurable prefix."""

    prefix: str = DEFAULT_SUBJECT_PREFIX

    def cmd_all(self) -> str:
        return f"{self.prefix}.cmd.all"

    def cmd_group(self, group: str) -> str:
        return f"{self.prefix}.cmd.group.{group}"

    def cmd_host(self, host: str) -> str:
        return f"{self.prefix}.cmd.host.{host}"

    def cmd_for(self, scope: Scope, target: str) -> str:
        if scope is Scope.FLEET:
            return self.cmd_all()
        if scope is Scope.GROUP:
            return self.cmd_group(target)
        return self.cmd_host(target)

    def ack(self, cmd_id: str) -> str:
        return f"{self.prefix}.ack.{cmd_id}"

    def ack_all(self) -> str:
        return f"{self.prefix}.ack.*"

    def heartbeat(self, host: str) -> str:
        return f"{self.prefix}.hb.{host}"

    def heartbeat_all(self) -> str:
        return f"{self.prefix}.hb.*"

    def event(self, host: str) -> str:
        """Agent events (config rejected, state changes): low volume, for operators."""
        return f"{self.prefix}.evt.{host}"

    def event_all(self) -> str:
        return f"{self.prefix}.evt.*"

    def telemetry(self, host: str, plugin: str) -> str:
        return f"{self.prefix}.tel.{host}.{plugin}"

    def telemetry_all(self) -> str:
        return f"{self.prefix}.tel.>"

    def telemetry_stream(self) -> str:
        """The JetStream stream that holds this prefix's telemetry."""
        return "HIDSD_TEL_" + re.sub(r"[^A-Za-z0-9]", "_", self.prefix).upper()

    def ctl_sync(self) -> str:
        """Controllers forwarding what each received to the others (and announcing)."""
        return f"{self.prefix}.ctlsync"

    def ctl_peer(self, member_id: str, verb: str) -> str:
        """A request to one controller (its share of a split query)."""
        return f"{self.prefix}.ctlpeer.{member_id}.{verb}"

    def inventory(self, host: str) -> str:
        """A host's latest package set (one message per host kept: the query index's source)."""
        return f"{self.prefix}.inv.{host}"

    def inventory_all(self) -> str:
        return f"{self.prefix}.inv.*"

    def inventory_stream(self) -> str:
        return "HIDSD_INV_" + re.sub(r"[^A-Za-z0-9]", "_", self.prefix).upper()

    def ctl(self, verb: str) -> str:
        """Controller request/reply subjects (served by a queue group)."""
        return f"{self.prefix}.ctl.{verb}"

    def ctl_all(self) -> str:
        return f"{self.prefix}.ctl.>"


#: Queue group the controllers share for request/reply work.
CONTROLLER_QUEUE = "hidsd-controllers"


# --------------------------------------------------------------------------- etcd keys


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """etcd key layout. Desired state has one key per scope; commands are an audit log."""

    prefix: str = DEFAULT_KEY_PREFIX

    @property
    def desired_prefix(self) -> str:
        return f"{self.prefix}desired/"

    def desired(self, scope: Scope, target: str) -> str:
        if scope is Scope.FLEET:
            return f"{self.prefix}desired/fleet"
        return f"{self.prefix}desired/{scope.value}/{target}"

    def applicable(self, host: str, groups: tuple[str, ...]) -> list[str]:
        """The desired-state keys that govern one agent."""
        keys = [self.desired(Scope.FLEET, FLEET_TARGET)]
        keys += [self.desired(Scope.GROUP, g) for g in groups]
        keys.append(self.desired(Scope.HOST, host))
        return keys

    def parse_desired(self, key: str) -> tuple[Scope, str]:
        """Map a desired-state key back to (scope, target); ProtocolError if it is not one."""
        if not key.startswith(self.desired_prefix):
            raise ProtocolError("not a desired-state key", key=key)
        rest = key[len(self.desired_prefix) :]
        if rest == "fleet":
            return Scope.FLEET, FLEET_TARGET
        kind, _, target = rest.partition("/")
        if kind in (Scope.GROUP.value, Scope.HOST.value) and target:
            return Scope(kind), target
        raise ProtocolError("not a desired-state key", key=key)

    def command_log(self, cmd_id: str) -> str:
        return f"{self.prefix}commands/{cmd_id}"

    # Plugin desired state (start/stop by an operator), one key per scope and plugin.

    def plugin_scope_prefix(self, scope: Scope, target: str) -> str:
        if scope is Scope.FLEET:
            return f"{self.prefix}plugins/fleet/"
        return f"{self.prefix}plugins/{scope.value}/{target}/"

    def plugin_desired(self, scope: Scope, target: str, plugin: str) -> str:
        return self.plugin_scope_prefix(scope, target) + plugin

    @property
    def plugins_prefix(self) -> str:
        return f"{self.prefix}plugins/"

    def plugin_applicable(self, host: str, groups: tuple[str, ...]) -> list[str]:
        """Prefixes of the plugin desired state that governs one agent."""
        return [
            self.plugin_scope_prefix(Scope.FLEET, FLEET_TARGET),
            *(self.plugin_scope_prefix(Scope.GROUP, g) for g in groups),
            self.plugin_scope_prefix(Scope.HOST, host),
        ]

    # Config versions: immutable keys of their own (compaction never loses history) and a
    # `current` pointer per scope that writers compare-and-swap.

    @staticmethod
    def scope_label(scope: Scope, target: str) -> str:
        """'fleet', 'group:web', 'host:h1': how operators and heartbeats name a scope."""
        return "fleet" if scope is Scope.FLEET else f"{scope.value}:{target}"

    def _config_base(self, scope: Scope, target: str) -> str:
        if scope is Scope.FLEET:
            return f"{self.prefix}config/fleet/"
        return f"{self.prefix}config/{scope.value}/{target}/"

    def config_current(self, scope: Scope, target: str) -> str:
        return self._config_base(scope, target) + "current"

    def config_versions(self, scope: Scope, target: str) -> str:
        return self._config_base(scope, target) + "versions/"

    def config_version(self, scope: Scope, target: str, version: int) -> str:
        return f"{self.config_versions(scope, target)}{version:010d}"

    def config_scope_prefix(self, scope: Scope, target: str) -> str:
        return self._config_base(scope, target)

    @property
    def config_prefix(self) -> str:
        return f"{self.prefix}config/"

    def config_applicable(self, host: str, groups: tuple[str, ...]) -> list[tuple[Scope, str]]:
        """Scopes whose config governs one agent, lowest precedence first."""
        return [
            (Scope.FLEET, FLEET_TARGET),
            *((Scope.GROUP, g) for g in sorted(groups)),
            (Scope.HOST, host),
        ]


def parse_scope(label: str) -> tuple[Scope, str]:
    """'fleet' | 'group:G' | 'host:H' -> (Scope, target); ProtocolError names the format."""
    if label == "fleet":
        return Scope.FLEET, FLEET_TARGET
    kind, sep, target = label.partition(":")
    if sep and kind in (Scope.GROUP.value, Scope.HOST.value):
        return Scope(kind), check_name(target, f"{kind} name")
    raise ProtocolError(f"invalid scope {label!r}: use fleet, group:NAME or host:NAME")


# --------------------------------------------------------------------------- msgpack


def _unpack(data: bytes, what: str, max_bytes: int | None = None) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what}: expected bytes", got=type(data).__name__)
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"{what}: {len(data)} bytes exceeds {max_bytes}", size=len(data))
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"{what}: malformed msgpack ({type(exc).__name__})") from exc


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _field(m: dict[str, Any], name: str, typ: type | tuple[type, ...], what: str) -> Any:
    if name not in m:
        raise ProtocolError(f"{what}: missing field {name!r}", field=name)
    value = m[name]
    if isinstance(value, bool) and typ in (int, float, (int, float)):
        raise ProtocolError(f"{what}: field {name!r} has the wrong type", field=name)
    if not isinstance(value, typ):
        raise ProtocolError(f"{what}: field {name!r} has the wrong type", field=name)
    return value


def _finite(m: dict[str, Any], name: str, what: str) -> float:
    """A timestamp: NaN or infinity would make every expiry comparison false."""
    value = float(_field(m, name, (int, float), what))
    if not math.isfinite(value):
        raise ProtocolError(f"{what}: field {name!r} must be a finite number", field=name)
    return value


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command:
    """A command body. `rev` is the etcd revision of the desired state it announces."""

    id: str
    kind: CommandKind
    scope: Scope
    target: str
    rev: int
    issued_at: float
    expires_at: float
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def unrecorded(self) -> bool:
        """An emergency stop broadcast while etcd was down: it carries no revision."""
        return bool(self.args.get("unrecorded")) and self.rev == 0


def encode_command_body(cmd: Command) -> bytes:
    return _pack(
        {
            "v": PROTOCOL_VERSION,
            "id": cmd.id,
            "kind": cmd.kind.value,
            "scope": cmd.scope.value,
            "target": cmd.target,
            "rev": cmd.rev,
            "issued_at": cmd.issued_at,
            "expires_at": cmd.expires_at,
            "args": cmd.args,
        }
    )


def decode_command_body(body: bytes) -> Command:
    m = _unpack(body, "command body")
    what = "command body"
    if not isinstance(m, dict):
        raise ProtocolError(f"{what}: expected a map")
    version = _field(m, "v", int, what)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"{what}: unsupported protocol version {version}", field="v")
    cmd_id = check_name(_field(m, "id", str, what), "command id")
    try:
        kind = CommandKind(_field(m, "kind", str, what))
        scope = Scope(_field(m, "scope", str, what))
    except ValueError as exc:
        raise ProtocolError(f"{what}: {exc}") from exc
    target = _field(m, "target", str, what)
    if scope is Scope.FLEET:
        if target != FLEET_TARGET:
            raise ProtocolError(f"{what}: fleet commands target '*'", field="target")
    else:
        check_name(target, "target")
    rev = _field(m, "rev", int, what)
    if rev < 0:
        raise ProtocolError(f"{what}: negative revision", field="rev")
    issued_at = _finite(m, "issued_at", what)
    expires_at = _finite(m, "expires_at", what)
    args = _field(m, "args", dict, what)
    return Command(cmd_id, kind, scope, target, rev, issued_at, expires_at, args)


@dataclass(frozen=True, slots=True)
class Envelope:
    body: bytes
    key_id: str
    sig: bytes


def encode_envelope(env: Envelope) -> bytes:
    return _pack([env.body, env.key_id, env.sig])


class Unsigned(ProtocolError):
    """Decoded, but carries no signature (a bare body or an empty signature)."""


def decode_envelope(data: bytes, max_bytes: int = MAX_COMMAND_BYTES) -> Envelope:
    """Split an envelope; raises `Unsigned` for bare or unsigned bodies, ProtocolError else."""
    obj = _unpack(data, "command envelope", max_bytes)
    if isinstance(obj, dict):
        raise Unsigned("command is not signed: a bare body was sent without an envelope")
    if not isinstance(obj, list) or len(obj) != 3:
        raise ProtocolError("command envelope: expected [body, key_id, signature]")
    body, key_id, sig = obj
    if not isinstance(body, bytes) or not isinstance(key_id, str) or not isinstance(sig, bytes):
        raise ProtocolError("command envelope: wrong element types")
    if not sig or not key_id:
        raise Unsigned("command is not signed: empty key id or signature")
    return Envelope(body, key_id, sig)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """One immutable config version of a scope (stored as JSON: readable with etcdctl)."""

    scope: str
    version: int
    content: str
    digest: str
    author: str
    time: float
    message: str
    rollback_of: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope, "version": self.version, "content": self.content,
            "digest": self.digest, "author": self.author, "time": self.time,
            "message": self.message, "rollback_of": self.rollback_of,
        }  # fmt: skip


def encode_config_version(cv: ConfigVersion) -> bytes:
    return json.dumps(cv.to_dict(), sort_keys=True).encode()


def decode_config_version(data: bytes) -> ConfigVersion:
    what = "config version"
    try:
        m = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what}: not JSON ({type(exc).__name__})") from exc
    if not isinstance(m, dict):
        raise ProtocolError(f"{what}: expected an object")
    rb = m.get("rollback_of")
    if rb is not None and (isinstance(rb, bool) or not isinstance(rb, int) or rb < 1):
        raise ProtocolError(f"{what}: rollback_of must be a version number", field="rollback_of")
    version = _field(m, "version", int, what)
    if version < 1:
        raise ProtocolError(f"{what}: version must be >= 1", field="version")
    return ConfigVersion(
        scope=_field(m, "scope", str, what),
        version=version,
        content=_field(m, "content", str, what),
        digest=_field(m, "digest", str, what),
        author=_field(m, "author", str, what),
        time=_finite(m, "time", what),
        message=_field(m, "message", str, what),
        rollback_of=rb,
    )


def encode_config_pointer(version: int, digest: str) -> bytes:
    return json.dumps({"version": version, "digest": digest}).encode()


def decode_config_pointer(data: bytes) -> tuple[int, str]:
    try:
        m = json.loads(data)
        version, digest = m["version"], m["digest"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"config pointer: corrupt ({type(exc).__name__})") from exc
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ProtocolError("config pointer: version must be a number >= 1", field="version")
    if not isinstance(digest, str):
        raise ProtocolError("config pointer: digest must be a string", field="digest")
    return version, digest


# --------------------------------------------------------------------------- acks


@dataclass(frozen=True, slots=True)
class Ack:
    cmd_id: str
    host: str
    status: AckStatus
    rev: int
    detail: str = ""
    mode: RunMode = RunMode.RUNNING
    #: for a rejection: the RejectReason (e.g. "expired" when the host's clock is off)
    reason: str = ""
    #: the agent's wall clock when it acked: the issuer compares it with its own (0: unknown)
    sent_at: float = 0.0


def encode_ack(ack: Ack) -> bytes:
    return _pack(
        {
            "cmd_id": ack.cmd_id,
            "host": ack.host,
            "status": ack.status.value,
            "rev": ack.rev,
            "detail": ack.detail,
            "mode": ack.mode.value,
            **({"reason": ack.reason} if ack.reason else {}),
            **({"sent_at": ack.sent_at} if ack.sent_at else {}),
        }
    )


def decode_ack(data: bytes) -> Ack:
    m = _unpack(data, "ack", 4096)
    if not isinstance(m, dict):
        raise ProtocolError("ack: expected a map")
    try:
        status = AckStatus(_field(m, "status", str, "ack"))
        mode = RunMode(_field(m, "mode", str, "ack"))
    except ValueError as exc:
        raise ProtocolError(f"ack: {exc}") from exc
    rev = _field(m, "rev", int, "ack")
    if rev < 0:
        raise ProtocolError("ack: negative revision", field="rev")
    return Ack(
        cmd_id=check_name(_field(m, "cmd_id", str, "ack"), "command id"),
        host=check_name(_field(m, "host", str, "ack"), "host id"),
        status=status,
        rev=rev,
        detail=_field(m, "detail", str, "ack"),
        mode=mode,
        reason=_field(m, "reason", str, "ack") if "reason" in m else "",
        sent_at=_finite(m, "sent_at", "ack") if "sent_at" in m else 0.0,
    )


# --------------------------------------------------------------------------- heartbeats


def storage_to_map(r: StorageReport) -> dict[str, Any]:
    return {"status": r.status.value, "path": r.path, "error": r.error,
            "free_bytes": r.free_bytes, "failing": r.failing,
            "errors_total": r.errors_total, "recoveries": r.recoveries,
            "fds_open": r.fds_open, "fds_limit": r.fds_limit}  # fmt: skip


def storage_from_map(m: Any) -> StorageReport:
    what = "heartbeat.storage"
    if not isinstance(m, dict):
        raise ProtocolError(f"{what}: expected a map", field="storage")
    try:
        status = StorageStatus(_field(m, "status", str, what))
    except ValueError as exc:
        raise ProtocolError(f"{what}: {exc}", field="storage") from exc
    failing = _field(m, "failing", dict, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in failing.items()):
        raise ProtocolError(f"{what}: failing must map writer to text", field="storage")
    return StorageReport(
        status=status,
        path=_field(m, "path", str, what),
        error=_field(m, "error", str, what),
        free_bytes=_optional_int(m, "free_bytes", what),
        failing=failing,
        errors_total=_field(m, "errors_total", int, what),
        recoveries=_field(m, "recoveries", int, what),
        fds_open=_optional_int(m, "fds_open", what),
        fds_limit=_optional_int(m, "fds_limit", what),
    )


@dataclass(frozen=True, slots=True)
class ClockReport:
    """The agent's clock as its signed commands show it: an operator's `issued_at` is the
    only trusted time an agent receives, so skew is measured against it (the controller
    measures it against the heartbeat's `sent_at` too)."""

    #: agent clock minus the issuer's, at the newest verified command (None: none seen yet)
    command_skew_s: float | None = None
    #: commands refused because the agent's clock says they are expired / not yet valid
    refused_expired: int = 0
    refused_not_yet_valid: int = 0
    last_refusal: str = ""

    def to_map(self) -> dict[str, Any]:
        return {"command_skew_s": self.command_skew_s, "refused_expired": self.refused_expired,
                "refused_not_yet_valid": self.refused_not_yet_valid,
                "last_refusal": self.last_refusal}  # fmt: skip

    @classmethod
    def from_map(cls, m: Any) -> ClockReport:
        what = "heartbeat.clock"
        if not isinstance(m, dict):
            raise ProtocolError(f"{what}: expected a map", field="clock")
        skew = m.get("command_skew_s")
        if skew is not None:
            skew = _finite(m, "command_skew_s", what)
        return cls(
            command_skew_s=skew,
            refused_expired=_field(m, "refused_expired", int, what),
            refused_not_yet_valid=_field(m, "refused_not_yet_valid", int, what),
            last_refusal=_field(m, "last_refusal", str, what),
        )


def _optional_int(m: dict[str, Any], name: str, what: str) -> int | None:
    return None if m.get(name) is None else int(_field(m, name, int, what))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What an agent tells the fleet about itself (E1, E4). `bye` marks a clean exit."""

    host: str
    version: str
    groups: tuple[str, ...]
    mode: RunMode
    applied_rev: int
    held: bool
    interval_s: float
    seq: int
    sent_at: float
    uptime_s: float
    cpu_pct: float
    rss_bytes: int
    facts: dict[str, Any] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    bye: bool = False
    #: {"versions": {scope label: version}, "fingerprint", "status": ok|rejected, "error"}
    config: dict[str, Any] = field(default_factory=dict)
    #: per plugin: state, pid, cpu, rss, records, drops (every drop counted), spool
    plugins: dict[str, Any] = field(default_factory=dict)
    #: the circuit breaker: state, reason, held plugins, denylist, accounting mode (psutil or
    #: cgroup-v1/v2, and why)
    breaker: dict[str, Any] = field(default_factory=dict)
    #: outputs other than telemetry, e.g. {"inventory": {published, pending, failures, ...}}
    outputs: dict[str, Any] = field(default_factory=dict)
    #: the data dir and descriptors: ok / full / read-only / error, with the path (None:
    #: an agent from before this field)
    storage: StorageReport | None = None
    clock: ClockReport = field(default_factory=ClockReport)


_HB_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("host", str),
    ("version", str),
    ("groups", list),
    ("mode", str),
    ("applied_rev", int),
    ("held", bool),
    ("interval_s", (int, float)),
    ("seq", int),
    ("sent_at", (int, float)),
    ("uptime_s", (int, float)),
    ("cpu_pct", (int, float)),
    ("rss_bytes", int),
    ("facts", dict),
    ("rejections", dict),
    ("bye", bool),
)


def _optional_map(m: dict[str, Any], name: str) -> dict[str, Any]:
    value = m.get(name, {})
    if not isinstance(value, dict):
        raise ProtocolError(f"heartbeat: field {name!r} must be a map", field=name)
    return value


def encode_heartbeat(hb: Heartbeat) -> bytes:
    return _pack(
        {
            "v": PROTOCOL_VERSION,
            "host": hb.host,
            "version": hb.version,
            "groups": list(hb.groups),
            "mode": hb.mode.value,
            "applied_rev": hb.applied_rev,
            "held": hb.held,
            "interval_s": hb.interval_s,
            "seq": hb.seq,
            "sent_at": hb.sent_at,
            "uptime_s": hb.uptime_s,
            "cpu_pct": hb.cpu_pct,
            "rss_bytes": hb.rss_bytes,
            "facts": hb.facts,
            "rejections": hb.rejections,
            "bye": hb.bye,
            "config": hb.config,
            "plugins": hb.plugins,
            "breaker": hb.breaker,
            "outputs": hb.outputs,
            **({"storage": storage_to_map(hb.storage)} if hb.storage is not None else {}),
            "clock": hb.clock.to_map(),
        }
    )


def decode_heartbeat(data: bytes) -> Heartbeat:
    m = _unpack(data, "heartbeat", 64 * 1024)
    if not isinstance(m, dict):
        raise ProtocolError("heartbeat: expected a map")
    values = {name: _field(m, name, typ, "heartbeat") for name, typ in _HB_FIELDS}
    try:
        mode = RunMode(values["mode"])
    except ValueError as exc:
        raise ProtocolError(f"heartbeat: {exc}") from exc
    if values["applied_rev"] < 0:
        raise ProtocolError("heartbeat: negative applied_rev", field="applied_rev")
    groups = values["groups"]
    if not all(isinstance(g, str) for g in groups):
        raise ProtocolError("heartbeat: groups must be strings", field="groups")
    for g in groups:
        check_name(g, "group")
    rejections = values["rejections"]
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in rejections.items()):
        raise ProtocolError("heartbeat: rejections must map reason to count")
    return Heartbeat(
        host=check_name(values["host"], "host id"),
        version=values["version"],
        groups=tuple(groups),
        mode=mode,
        applied_rev=values["applied_rev"],
        held=values["held"],
        interval_s=float(values["interval_s"]),
        seq=values["seq"],
        sent_at=float(values["sent_at"]),
        uptime_s=float(values["uptime_s"]),
        cpu_pct=float(values["cpu_pct"]),
        rss_bytes=values["rss_bytes"],
        facts=values["facts"],
        rejections=rejections,
        bye=values["bye"],
        config=_optional_map(m, "config"),
        plugins=_optional_map(m, "plugins"),
        breaker=_optional_map(m, "breaker"),
        outputs=_optional_map(m, "outputs"),
        storage=storage_from_map(m["storage"]) if "storage" in m else None,
        clock=ClockReport.from_map(m["clock"]) if "clock" in m else ClockReport(),
    )


# --------------------------------------------------------------------------- events


def encode_event(host: str, event: dict[str, Any], at: float) -> bytes:
    return _pack({"host": host, "at": at, **event})


def decode_event(data: bytes) -> dict[str, Any]:
    m = _unpack(data, "event", 64 * 1024)
    if not isinstance(m, dict):
        raise ProtocolError("event: expected a map")
    check_name(_field(m, "host", str, "event"), "host id")
    _field(m, "kind", str, "event")
    _finite(m, "at", "event")
    return m


# --------------------------------------------------------------------------- controller RPC


def encode_request(params: dict[str, Any]) -> bytes:
    return _pack(params)


def decode_request(data: bytes) -> dict[str, Any]:
    m = _unpack(data, "request", 64 * 1024) if data else {}
    if not isinstance(m, dict):
        raise ProtocolError("request: expected a map")
    return m


#: replies above this are zlib-compressed (a fleet-wide query answer lists every host; NATS's
#: max_payload is 1 MiB by default)
REPLY_COMPRESS_BYTES = 64 << 10
#: a compressed reply may not expand beyond this
REPLY_MAX_BYTES = 256 << 20


def encode_reply(result: Any = None, error: str | None = None) -> bytes:
    if error is not None:
        return _pack({"ok": False, "error": error})
    body = _pack({"ok": True, "result": result})
    if len(body) > REPLY_COMPRESS_BYTES:
        body = _pack({"ok": True, "z": zlib.compress(_pack(result), 6)})
    return body


def decode_reply(data: bytes) -> Any:
    """Return the result or raise ProtocolError carrying the controller's error message."""
    m = _unpack(data, "reply")
    if not isinstance(m, dict) or "ok" not in m:
        raise ProtocolError("reply: expected a map with 'ok'")
    if not m["ok"]:
        raise ProtocolError(f"controller error: {m.get('error', 'unknown')}")
    if "z" in m:
        try:
            z = zlib.decompressobj()
            raw = z.decompress(m["z"], REPLY_MAX_BYTES)
        except (zlib.error, TypeError) as exc:
            raise ProtocolError(f"reply: bad compressed body ({exc})") from exc
        if z.unconsumed_tail:
            raise ProtocolError(f"reply: expands beyond {REPLY_MAX_BYTES} bytes")
        return _unpack(raw, "reply")
    return m.get("result")
