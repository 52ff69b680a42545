"""The PACKAGES_STATE record: one host's whole package set, for the fleet query index.

The inventory plugin emits it (`DataType.PACKAGES_STATE`) when the set changes and every
`state_interval_s` anyway; the agent routes it to the inventory stream, latest per host, and
every controller indexes it. On the wire it is the msgpack map ``{os_id, os_version, count,
digest, reason, sources, packages_z}`` where ``packages_z`` is ``zlib(msgpack([[eco, name,
version, arch, source, source_version], ...]), level 6)``, rows sorted: a thousand packages
take a few tens of kB, and the same set always gives the same bytes (the digest, and
JetStream's de-duplication, rely on it).

Pure: no I/O, no state. The decoder takes untrusted bytes; decompression is bounded by the
caller's limit, so a zlib bomb is refused before it is inflated.
"""

from __future__ import annotations

import hashlib
import itertools
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hidsd.base.errors import ProtocolError
from hidsd.wire.codec import get_field, pack, unpack

#: zlib level of the package list: the bytes of a set must not change between versions
ZLIB_LEVEL = 6
#: the fields a row carries, in wire order (a row needs the first three)
ROW_FIELDS = ("ecosystem", "name", "version", "arch", "source", "source_version")
_WHAT = "inventory record"


class PackageRow(NamedTuple):
    """One installed package. The source package travels with it because Debian and Alpine
    advisories name source packages (DSA "openssl" covers the libssl3 binary).

    A named tuple, not a dataclass: a controller decodes a thousand of them per host and
    inventory (a frozen dataclass's constructor made indexing 3x slower); ordered by field."""

    ecosystem: str
    name: str
    version: str
    arch: str = ""
    source: str = ""
    source_version: str = ""

    def to_list(self) -> list[str]:
        return list(self)


@dataclass(frozen=True, slots=True)
class PackagesState:
    """A host's package set. `count` and `digest` are the sender's (see `packages_digest`);
    `sources` says per ecosystem how its database read (ok, absent, skipped, error)."""

    os_id: str
    os_version: str
    count: int
    digest: str
    reason: str
    packages: tuple[PackageRow, ...]
    sources: dict[str, str | None] = field(default_factory=dict)


def _rows_blob(rows: Iterable[PackageRow]) -> bytes:
    return pack([r.to_list() for r in sorted(rows)])


def packages_digest(rows: Iterable[PackageRow]) -> str:
    """What tells two package sets apart: the plugin sends a new record when it changes."""
    return hashlib.sha256(_rows_blob(rows)).hexdigest()[:16]


def encode_packages_state(state: PackagesState) -> bytes:
    """The record's payload (msgpack, as a frame carries it); rows sorted, zlib level 6."""
    return pack({
        "os_id": state.os_id,
        "os_version": state.os_version,
        "count": state.count,
        "digest": state.digest,
        "reason": state.reason,
        "sources": state.sources,
        "packages_z": zlib.compress(_rows_blob(state.packages), ZLIB_LEVEL),
    })  # fmt: skip


def _inflate(z: bytes, max_bytes: int) -> bytes:
    """At most `max_bytes` of output: a small record that inflates to gigabytes is refused."""
    inflater = zlib.decompressobj()
    try:
        blob = inflater.decompress(z, max_bytes)
    except zlib.error as exc:
        raise ProtocolError(f"{_WHAT}: packages_z is not a zlib stream ({exc})") from exc
    if inflater.unconsumed_tail:
        raise ProtocolError(
            f"{_WHAT}: package list over {max_bytes} bytes once decompressed", limit=max_bytes
        )
    if not inflater.eof:
        raise ProtocolError(f"{_WHAT}: packages_z is truncated")
    return blob


def _row(r: Any, i: int) -> PackageRow:
    """A row of at least three strings; fields a sender does not have are empty, fields a
    newer sender adds are ignored."""
    if type(r) is not list or len(r) < 3:
        raise ProtocolError(f"{_WHAT}: package row {i} must be a list of at least 3 strings", row=i)
    values = r[: len(ROW_FIELDS)]
    if set(map(type, values)) != {str}:  # in C: a thousand rows per inventory
        raise ProtocolError(f"{_WHAT}: package row {i} has a field that is not a string", row=i)
    return PackageRow(*values)


def _rows(rows: list[Any]) -> tuple[PackageRow, ...]:
    """Every row checked and built in C-level passes (a host sends a thousand or more); the
    first bad one is named by `_row`."""
    cut = len(ROW_FIELDS)
    if all(type(r) is list and len(r) >= 3 for r in rows):
        values = [r[:cut] for r in rows]
        if not values or set(map(type, itertools.chain.from_iterable(values))) == {str}:
            return tuple(itertools.starmap(PackageRow, values))
    return tuple(_row(r, i) for i, r in enumerate(rows))


def decode_packages_state(data: bytes, max_bytes: int) -> PackagesState:
    """A record's payload (after the frame header); ProtocolError naming what is wrong."""
    m = unpack(data, _WHAT)
    if not isinstance(m, dict):
        raise ProtocolError(f"{_WHAT}: expected a map")
    count = get_field(m, "count", int, _WHAT)
    if count < 0:
        raise ProtocolError(f"{_WHAT}: negative count", field="count")
    sources = get_field(m, "sources", dict, _WHAT)
    if not all(isinstance(v, str | None) for v in sources.values()):
        raise ProtocolError(f"{_WHAT}: sources must map ecosystems to states", field="sources")
    rows = unpack(_inflate(get_field(m, "packages_z", bytes, _WHAT), max_bytes), _WHAT)
    if not isinstance(rows, list):
        raise ProtocolError(f"{_WHAT}: the package list is not a list", field="packages_z")
    return PackagesState(
        os_id=get_field(m, "os_id", str, _WHAT),
        os_version=get_field(m, "os_version", str, _WHAT),
        count=count,
        digest=get_field(m, "digest", str, _WHAT),
        reason=get_field(m, "reason", str, _WHAT),
        packages=_rows(rows),
        sources=sources,
    )
