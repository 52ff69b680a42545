"""The msgpack helpers every decoder shares: bounded unpack, typed fields, finite numbers.

Pure: no I/O, no state; every decoder takes untrusted bytes and returns a validated value
or raises `ProtocolError`."""

from __future__ import annotations

import math
from typing import Any

import msgpack

from hidsd.base.errors import ProtocolError


def unpack(data: bytes, what: str, max_bytes: int | None = None) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what}: expected bytes", got=type(data).__name__)
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"{what}: {len(data)} bytes exceeds {max_bytes}", size=len(data))
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"{what}: malformed msgpack ({type(exc).__name__})") from exc


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def get_field(m: dict[str, Any], name: str, typ: type | tuple[type, ...], what: str) -> Any:
    if name not in m:
        raise ProtocolError(f"{what}: missing field {name!r}", field=name)
    value = m[name]
    if isinstance(value, bool) and typ in (int, float, (int, float)):
        raise ProtocolError(f"{what}: field {name!r} has the wrong type", field=name)
    if not isinstance(value, typ):
        raise ProtocolError(f"{what}: field {name!r} has the wrong type", field=name)
    return value


def finite(m: dict[str, Any], name: str, what: str) -> float:
    """A timestamp: NaN or infinity would make every expiry comparison false."""
    value = float(get_field(m, name, (int, float), what))
    if not math.isfinite(value):
        raise ProtocolError(f"{what}: field {name!r} must be a finite number", field=name)
    return value


def optional_int(m: dict[str, Any], name: str, what: str) -> int | None:
    return None if m.get(name) is None else int(get_field(m, name, int, what))


def optional_map(m: dict[str, Any], name: str) -> dict[str, Any]:
    value = m.get(name, {})
    if not isinstance(value, dict):
        raise ProtocolError(f"heartbeat: field {name!r} must be a map", field=name)
    return value
