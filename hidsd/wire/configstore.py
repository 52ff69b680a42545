"""Config versions as stored in etcd: immutable version records and the scope's pointer.

Pure: no I/O, no state; every decoder takes untrusted bytes and returns a validated value
or raises `ProtocolError`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hidsd.base.errors import ProtocolError
from hidsd.wire.codec import finite, get_field


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
    version = get_field(m, "version", int, what)
    if version < 1:
        raise ProtocolError(f"{what}: version must be >= 1", field="version")
    return ConfigVersion(
        scope=get_field(m, "scope", str, what),
        version=version,
        content=get_field(m, "content", str, what),
        digest=get_field(m, "digest", str, what),
        author=get_field(m, "author", str, what),
        time=finite(m, "time", what),
        message=get_field(m, "message", str, what),
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
