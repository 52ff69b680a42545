"""The audit log's entries: round trip, the bytes hidsctl always wrote, and entries that do
not decode refused with a message naming the field. (Commands, envelopes and acks are
tested in test_protocol.py.)"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire.commands import (
    MAX_COMMAND_BYTES,
    AuditEntry,
    CommandKind,
    decode_audit_entry,
    encode_audit_entry,
)
from hidsd.wire.names import Scope

ENTRY = AuditEntry("18c2f-0a1b2c3d4e5f", CommandKind.PLUGIN_RESTART, Scope.GROUP, "web",
                   1700000000.25, "k-0123abcd", "alice", {"plugin": "fim"})  # fmt: skip


def entry_map(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"id": ENTRY.id, "kind": "plugin_restart", "scope": "group",
                         "target": "web", "issued_at": ENTRY.issued_at, "key_id": "k-0123abcd",
                         "author": "alice", "args": {"plugin": "fim"}}  # fmt: skip
    m.update(overrides)
    return {k: v for k, v in m.items() if v is not ...}


def test_round_trip_and_the_bytes_hidsctl_wrote_before() -> None:
    data = encode_audit_entry(ENTRY)
    # as `issue_command` built it inline: msgpack.packb of the map, in this order
    assert data == msgpack.packb(entry_map())
    assert decode_audit_entry(data) == ENTRY
    fleet = AuditEntry("c1", CommandKind.STOP, Scope.FLEET, "*", 1.0, "k")
    assert decode_audit_entry(encode_audit_entry(fleet)) == fleet


def test_int_time_becomes_a_float() -> None:
    got = decode_audit_entry(msgpack.packb(entry_map(issued_at=17)))
    assert got.issued_at == 17.0 and isinstance(got.issued_at, float)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"id": ...}, "missing field 'id'"),
        ({"id": "bad id"}, "command id"),
        ({"kind": "explode"}, "'explode' is not a valid CommandKind"),
        ({"scope": 3}, "'scope' has the wrong type"),
        ({"scope": "fleet"}, "fleet commands target '*'"),
        ({"target": "../etc"}, "target"),
        ({"issued_at": float("nan")}, "finite"),
        ({"key_id": None}, "'key_id' has the wrong type"),
        ({"author": ...}, "missing field 'author'"),
        ({"args": []}, "'args' has the wrong type"),
    ],
)
def test_malformed_entries_are_refused(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_audit_entry(msgpack.packb(entry_map(**overrides)))
    assert words in str(info.value)


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", msgpack.packb(["id"]), msgpack.packb({"args": "x" * MAX_COMMAND_BYTES})]
)
def test_not_an_entry(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_audit_entry(data)
