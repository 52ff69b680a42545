"""Events, and the controller's request/reply envelopes (compressed when large).

Pure: no I/O, no state; every decoder takes untrusted bytes and returns a validated value
or raises `ProtocolError`."""

from __future__ import annotations

import zlib
from typing import Any

from hidsd.base.errors import ProtocolError
from hidsd.wire.codec import finite, get_field, pack, unpack
from hidsd.wire.names import (
    check_name,
)


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


def encode_request(params: dict[str, Any]) -> bytes:
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


def encode_reply(result: Any = None, error: str | None = None) -> bytes:
    if error is not None:
        return pack({"ok": False, "error": error})
    body = pack({"ok": True, "result": result})
    if len(body) > REPLY_COMPRESS_BYTES:
        body = pack({"ok": True, "z": zlib.compress(pack(result), 6)})
    return body


def decode_reply(data: bytes) -> Any:
    """Return the result or raise ProtocolError carrying the controller's error message."""
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
