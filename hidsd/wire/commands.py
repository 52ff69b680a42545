"""Commands, signed envelopes, acks and the audit log's entries (the kill switch's bytes).

Commands are signed as bytes, not objects: the envelope is the msgpack array
``[body_bytes, key_id, signature]`` and the body is the msgpack map
``{v, id, kind, scope, target, rev, issued_at, expires_at, args}``. The same envelope, with
``rev = 0``, is the value of a desired-state key in etcd; there the key's ``mod_revision`` is
the revision.

Pure: no I/O, no state; every decoder takes untrusted bytes and returns a validated value
or raises `ProtocolError`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hidsd.base.errors import ProtocolError
from hidsd.wire.codec import finite, get_field, pack, unpack
from hidsd.wire.names import (
    FLEET_TARGET,
    PROTOCOL_VERSION,
    Scope,
    check_name,
)

#: Commands are small; anything larger is refused before it is decoded.
MAX_COMMAND_BYTES = 16 * 1024


#: Upper bound on a command's validity window; bounds the replay cache too.
MAX_COMMAND_TTL_S = 3600.0


#: A command issued more than this far in the agent's future is not yet valid.
CLOCK_TOLERANCE_S = 30.0


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
    return pack(
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


def _target(m: dict[str, Any], scope: Scope, what: str) -> str:
    """The target field, checked against its scope."""
    target: str = get_field(m, "target", str, what)
    if scope is Scope.FLEET:
        if target != FLEET_TARGET:
            raise ProtocolError(f"{what}: fleet commands target '*'", field="target")
    else:
        check_name(target, "target")
    return target


def _kind_and_scope(m: dict[str, Any], what: str) -> tuple[CommandKind, Scope]:
    try:
        return CommandKind(get_field(m, "kind", str, what)), Scope(get_field(m, "scope", str, what))
    except ValueError as exc:
        raise ProtocolError(f"{what}: {exc}") from exc


def decode_command_body(body: bytes) -> Command:
    m = unpack(body, "command body")
    what = "command body"
    if not isinstance(m, dict):
        raise ProtocolError(f"{what}: expected a map")
    version = get_field(m, "v", int, what)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"{what}: unsupported protocol version {version}", field="v")
    cmd_id = check_name(get_field(m, "id", str, what), "command id")
    kind, scope = _kind_and_scope(m, what)
    target = _target(m, scope, what)
    rev = get_field(m, "rev", int, what)
    if rev < 0:
        raise ProtocolError(f"{what}: negative revision", field="rev")
    issued_at = finite(m, "issued_at", what)
    expires_at = finite(m, "expires_at", what)
    args = get_field(m, "args", dict, what)
    return Command(cmd_id, kind, scope, target, rev, issued_at, expires_at, args)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A command in etcd's audit log (`KeyLayout.command_log`): written create-only in the
    transaction that records its desired state, so every recorded command says who issued
    it, when and with which key, even one-off actions that leave no desired state."""

    id: str
    kind: CommandKind
    scope: Scope
    target: str
    issued_at: float
    key_id: str
    author: str = ""
    args: dict[str, Any] = field(default_factory=dict)


def encode_audit_entry(entry: AuditEntry) -> bytes:
    return pack(
        {
            "id": entry.id,
            "kind": entry.kind.value,
            "scope": entry.scope.value,
            "target": entry.target,
            "issued_at": entry.issued_at,
            "key_id": entry.key_id,
            "author": entry.author,
            "args": entry.args,
        }
    )


def decode_audit_entry(data: bytes) -> AuditEntry:
    what = "audit entry"
    m = unpack(data, what, MAX_COMMAND_BYTES)
    if not isinstance(m, dict):
        raise ProtocolError(f"{what}: expected a map")
    cmd_id = check_name(get_field(m, "id", str, what), "command id")
    kind, scope = _kind_and_scope(m, what)
    return AuditEntry(
        id=cmd_id,
        kind=kind,
        scope=scope,
        target=_target(m, scope, what),
        issued_at=finite(m, "issued_at", what),
        key_id=get_field(m, "key_id", str, what),
        author=get_field(m, "author", str, what),
        args=get_field(m, "args", dict, what),
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    body: bytes
    key_id: str
    sig: bytes


def encode_envelope(env: Envelope) -> bytes:
    return pack([env.body, env.key_id, env.sig])


class Unsigned(ProtocolError):
    """Decoded, but carries no signature (a bare body or an empty signature)."""


def decode_envelope(data: bytes, max_bytes: int = MAX_COMMAND_BYTES) -> Envelope:
    """Split an envelope; raises `Unsigned` for bare or unsigned bodies, ProtocolError else."""
    obj = unpack(data, "command envelope", max_bytes)
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
    return pack(
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
    m = unpack(data, "ack", 4096)
    if not isinstance(m, dict):
        raise ProtocolError("ack: expected a map")
    try:
        status = AckStatus(get_field(m, "status", str, "ack"))
        mode = RunMode(get_field(m, "mode", str, "ack"))
    except ValueError as exc:
        raise ProtocolError(f"ack: {exc}") from exc
    rev = get_field(m, "rev", int, "ack")
    if rev < 0:
        raise ProtocolError("ack: negative revision", field="rev")
    return Ack(
        cmd_id=check_name(get_field(m, "cmd_id", str, "ack"), "command id"),
        host=check_name(get_field(m, "host", str, "ack"), "host id"),
        status=status,
        rev=rev,
        detail=get_field(m, "detail", str, "ack"),
        mode=mode,
        reason=get_field(m, "reason", str, "ack") if "reason" in m else "",
        sent_at=finite(m, "sent_at", "ack") if "sent_at" in m else 0.0,
    )
