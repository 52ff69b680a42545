"""Events, the controller's request/reply envelopes (compressed when large), the verbs' request
parameters, and `Verb`: a verb's name with its reply's decoder.

Pure: no I/O, no state; every decoder takes untrusted bytes and returns a validated value
or raises `ProtocolError`."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from hidsd.base.errors import ProtocolError
from hidsd.wire.codec import finite, get_field, pack, unpack
from hidsd.wire.fields import (
    Plain,
    WireMap,
    as_map,
    as_number,
    as_plain,
    as_text,
    enum_of,
    get,
    get_or,
)
from hidsd.wire.names import FLEET_TARGET, Scope, check_name


def encode_event(host: str, event: dict[str, Any], at: float) -> bytes:
    return pack({"host": host, "at": at, **event})


def decode_event(data: bytes) -> dict[str, Any]:
    m = unpack(data, "event", 64 * 1024)
    if not isinstance(m, dict):
        raise ProtocolError("event: expected a map")
    check_name(get_field(m, "host", str, "event"), "host id")
    get_field(m, "kind", str, "event")
    finite(m, "at", "event")
    return m


@dataclass(frozen=True, slots=True)
class Event:
    """An agent event as the controller keeps it (and `agents show` lists it): who, what kind,
    when by the agent's clock, and the kind's own details."""

    host: str
    kind: str
    at: float
    detail: Mapping[str, Plain]

    def to_wire(self) -> dict[str, Plain]:
        return {"host": self.host, "at": self.at, "kind": self.kind, **self.detail}

    @classmethod
    def from_wire(cls, obj: object, what: str = "event") -> Event:
        m = as_map(obj, what)
        rest = {k: as_plain(v, f"{what}.{k}") for k, v in m.items()
                if k not in ("host", "kind", "at")}  # fmt: skip
        return cls(get(m, "host", as_text, what), get(m, "kind", as_text, what),
                   get(m, "at", as_number, what), rest)  # fmt: skip


def encode_request(params: WireMap) -> bytes:
    return pack(params)


def decode_request(data: bytes) -> dict[str, Any]:
    m = unpack(data, "request", 64 * 1024) if data else {}
    if not isinstance(m, dict):
        raise ProtocolError("request: expected a map")
    return m


#: replies above this are zlib-compressed (a fleet-wide query answer lists every host; NATS's
#: max_payload is 1 MiB by default)
REPLY_COMPRESS_BYTES = 64 << 10


#: a compressed reply may not expand beyond this
REPLY_MAX_BYTES = 256 << 20


def encode_reply(result: Plain = None, error: str | None = None) -> bytes:
    if error is not None:
        return pack({"ok": False, "error": error})
    body = pack({"ok": True, "result": result})
    if len(body) > REPLY_COMPRESS_BYTES:
        body = pack({"ok": True, "z": zlib.compress(pack(result), 6)})
    return body


def decode_reply(data: bytes) -> object:
    """Return the result or raise ProtocolError carrying the controller's error message.
    The result is untrusted: a verb's reply type checks it (`Verb.decode`)."""
    m = unpack(data, "reply")
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
        return unpack(raw, "reply")
    return m.get("result")


class Reply(Protocol):
    """What a verb's handler returns: the reply encoder sends `to_wire()`."""

    def to_wire(self) -> WireMap: ...


R_co = TypeVar("R_co", bound=Reply, covariant=True)


@dataclass(frozen=True, slots=True)
class Verb(Generic[R_co]):
    """A request/reply verb: the name it is asked by (`<prefix>.ctl.<name>`, or
    `<prefix>.ctlpeer.<id>.<name>` between controllers) and its reply's decoder."""

    name: str
    reply: Callable[[object, str], R_co]

    def check(self, result: object) -> R_co:
        """A decoded reply's result to its type; ProtocolError naming the field that is wrong."""
        return self.reply(result, f"{self.name} reply")

    def decode(self, data: bytes) -> R_co:
        """A reply's bytes to its type; ProtocolError with the controller's error message or
        naming the field that is wrong."""
        return self.check(decode_reply(data))


# --------------------------------------------------------------------------- request parameters


def _params(params: Mapping[str, object], verb: str) -> dict[str, object]:
    return as_map(params, f"{verb} request")


@dataclass(frozen=True, slots=True)
class HostRequest:
    """`agents.show`: one host."""

    host: str

    def to_params(self) -> dict[str, Plain]:
        return {"host": self.host}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> HostRequest:
        return cls(get(_params(params, "agents.show"), "host", as_text, "agents.show request"))


@dataclass(frozen=True, slots=True)
class ExpectedRequest:
    """`expected`: who should ack a command for this scope and target."""

    scope: Scope
    target: str

    def to_params(self) -> dict[str, Plain]:
        return {"scope": self.scope.value, "target": self.target}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> ExpectedRequest:
        """A scope and its target (a group or host name, or the fleet's `*`), each checked: a
        list where a name belongs is a clear error, not a target named "['x']"."""
        what = "expected request"
        m = _params(params, "expected")
        if "scope" not in m or "target" not in m:
            raise ProtocolError("expected: needs scope and target")
        scope = get(m, "scope", enum_of(Scope), what)
        target = get(m, "target", as_text, what)
        if scope is Scope.FLEET:
            if target != FLEET_TARGET:
                raise ProtocolError(f"{what}.target: the fleet's target is {FLEET_TARGET!r}",
                                    field="target")  # fmt: skip
        else:
            check_name(target, f"{scope.value} name")
        return cls(scope, target)


@dataclass(frozen=True, slots=True)
class AcksRequest:
    """`acks`: the acks one command got."""

    cmd_id: str

    def to_params(self) -> dict[str, Plain]:
        return {"cmd_id": self.cmd_id}

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> AcksRequest:
        """An absent id is "" (no acks recorded); one that is not text is refused."""
        m = _params(params, "acks")
        return cls(get_or(m, "cmd_id", as_text, "acks request", ""))
