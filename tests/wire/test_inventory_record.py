"""The PACKAGES_STATE record: round trip, the same bytes as the plugin always sent, bounded
decompression and malformed fields refused with a message that names them."""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import msgpack
import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire.inventory import (
    PackageRow,
    PackagesState,
    decode_packages_state,
    encode_packages_state,
    packages_digest,
)

LIMIT = 1 << 20

ROWS = (
    PackageRow("deb", "openssl", "3.0.11-1~deb12u2", "amd64", "openssl", "3.0.11-1~deb12u2"),
    PackageRow("deb", "libssl3", "3.0.11-1~deb12u2", "amd64", "openssl", "3.0.11-1~deb12u2"),
    PackageRow("rpm", "kernel", "5.14.0-1.el9", "x86_64", "kernel", "5.14.0-1.el9"),
    PackageRow("apk", "musl", "1.2.4-r2", "x86_64", "musl", "1.2.4-r2"),
)
SOURCES: dict[str, str | None] = {"deb": "ok", "rpm": "skipped", "apk": None}


def state(**overrides: Any) -> PackagesState:
    fields: dict[str, Any] = {
        "os_id": "debian",
        "os_version": "12",
        "count": len(ROWS),
        "digest": packages_digest(ROWS),
        "reason": "start",
        "packages": ROWS,
        "sources": SOURCES,
    }
    return PackagesState(**{**fields, **overrides})


def old_encoding(s: PackagesState) -> bytes:
    """The record as `Inventory.report_state` built it inline before this codec."""
    rows = sorted([r.ecosystem, r.name, r.version, r.arch, r.source, r.source_version]
                  for r in s.packages)  # fmt: skip
    blob = msgpack.packb(rows, use_bin_type=True)
    record = {
        "os_id": s.os_id,
        "os_version": s.os_version,
        "count": s.count,
        "digest": hashlib.sha256(blob).hexdigest()[:16],
        "reason": s.reason,
        "sources": s.sources,
        "packages_z": zlib.compress(blob, 6),
    }
    out: bytes = msgpack.packb(record, use_bin_type=True)
    return out


def record(**overrides: Any) -> bytes:
    m = msgpack.unpackb(encode_packages_state(state()), raw=False)
    m.update(overrides)
    out: bytes = msgpack.packb({k: v for k, v in m.items() if v is not ...}, use_bin_type=True)
    return out


def test_round_trip_sorts_rows() -> None:
    got = decode_packages_state(encode_packages_state(state()), LIMIT)
    assert got == state(packages=tuple(sorted(ROWS)))
    assert [r.name for r in got.packages] == ["musl", "libssl3", "openssl", "kernel"]


def test_bytes_are_the_ones_the_plugin_sent_before() -> None:
    s = state()
    assert encode_packages_state(s) == old_encoding(s)
    # the digest is the one the plugin computed over the sorted rows
    assert s.digest == msgpack.unpackb(old_encoding(s), raw=False)["digest"]
    assert packages_digest(reversed(ROWS)) == packages_digest(ROWS)
    assert packages_digest(ROWS[:2]) != packages_digest(ROWS)


def test_short_rows_have_empty_fields_and_extra_fields_are_ignored() -> None:
    rows = [["deb", "bash", "5.2"], ["deb", "zsh", "5.9", "amd64", "zsh", "5.9", "future"]]
    data = record(packages_z=zlib.compress(msgpack.packb(rows), 6))
    got = decode_packages_state(data, LIMIT)
    assert got.packages == (PackageRow("deb", "bash", "5.2"),
                            PackageRow("deb", "zsh", "5.9", "amd64", "zsh", "5.9"))  # fmt: skip


def test_zlib_bomb_is_refused_before_it_is_inflated() -> None:
    bomb = zlib.compress(b"\0" * (LIMIT * 4), 9)
    assert len(bomb) < LIMIT // 100
    with pytest.raises(ProtocolError, match="over 1048576 bytes"):
        decode_packages_state(record(packages_z=bomb), LIMIT)
    # a real list exactly at the limit still decodes
    rows = [["deb", f"p{i}", "1.0", "amd64", f"p{i}", "1.0"] for i in range(2000)]
    blob = msgpack.packb(rows)
    got = decode_packages_state(record(packages_z=zlib.compress(blob, 6)), len(blob))
    assert len(got.packages) == 2000


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"os_id": 7}, "'os_id' has the wrong type"),
        ({"os_version": ...}, "missing field 'os_version'"),
        ({"count": -1}, "negative count"),
        ({"count": True}, "'count' has the wrong type"),
        ({"digest": None}, "'digest' has the wrong type"),
        ({"reason": ...}, "missing field 'reason'"),
        ({"sources": ["deb"]}, "'sources' has the wrong type"),
        ({"sources": {"deb": 1}}, "sources must map"),
        ({"packages_z": ...}, "missing field 'packages_z'"),
        ({"packages_z": "text"}, "'packages_z' has the wrong type"),
        ({"packages_z": b"not zlib"}, "not a zlib stream"),
        ({"packages_z": zlib.compress(msgpack.packb([["deb", "a", "1"]]))[:-3]}, "truncated"),
        ({"packages_z": zlib.compress(b"\xc1")}, "malformed msgpack"),
        ({"packages_z": zlib.compress(msgpack.packb({"a": 1}))}, "not a list"),
        ({"packages_z": zlib.compress(msgpack.packb([["deb", "a"]]))}, "row 0 must be a list"),
        ({"packages_z": zlib.compress(msgpack.packb(["deb a 1"]))}, "row 0 must be a list"),
        ({"packages_z": zlib.compress(msgpack.packb([["deb", "a", 1]]))}, "not a string"),
    ],
)
def test_malformed_fields_are_refused(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ProtocolError, match="inventory record") as info:
        decode_packages_state(record(**overrides), LIMIT)
    assert words in info.value.message


@pytest.mark.parametrize("data", [b"", b"\x93\x01\x02\x03", b"\xc1", msgpack.packb([1, 2])])
def test_not_a_record(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="inventory record"):
        decode_packages_state(data, LIMIT)
