"""The fleet's installed packages, indexed for "which hosts run NAME in an affected version".

Pure and in memory: the inventory stream rebuilds it at start, so nothing here is persisted.
A fleet runs few distinct (ecosystem, name, version) triples but each on many hosts, so
triples are interned to ids and each triple keeps one bit per host slot. A query then parses
and compares each distinct version once (univers is slow next to a bit test), and the hosts
come out of the triples' bitmaps as big-int ANDs with the shard and the distro scope.

At 10,000 hosts x 1,000 packages (27,500 distinct triples; tests/controller/test_inventory.py
prints its figures): ~67 MB (bitmaps 33, per-host arrays 20), a full rebuild 4-6 s (0.4-0.6
ms per host), one range 2-7 ms, a 20-range advisory matching 7,000 hosts ~25 ms, most of it
building the Match objects.
"""

from __future__ import annotations

import heapq
import sys
from array import array
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from hidsd.wire.ranges import AffectedRange

Triple = tuple[str, str, str]  # (ecosystem, name, version)
OsKey = tuple[str, str]  # (os-release ID, VERSION_ID)

#: bit positions set in each byte value, to walk a bitmap a byte at a time
_BITS: tuple[tuple[int, ...], ...] = tuple(
    tuple(j for j in range(8) if b >> j & 1) for b in range(256)
)


@dataclass(frozen=True, slots=True)
class Match:
    """One installed package version of one host inside one affected range."""

    host: str
    ecosystem: str
    package: str
    version: str
    range_spec: str
    source: str


def _set_bit(bits: bytearray, slot: int) -> None:
    i = slot >> 3
    if i >= len(bits):
        bits.extend(bytes(i + 1 - len(bits)))
    bits[i] |= 1 << (slot & 7)


def _clear_bit(bits: bytearray, slot: int) -> None:
    i = slot >> 3
    if i < len(bits):
        bits[i] &= ~(1 << (slot & 7)) & 0xFF


def _slots(mask: int) -> Iterator[int]:
    """Set bit positions of a non-negative int, in increasing order."""
    buf = mask.to_bytes((mask.bit_length() + 7) >> 3, "little")
    for i, b in enumerate(buf):
        if b:
            base = i << 3
            for j in _BITS[b]:
                yield base + j


class InventoryIndex:
    """Latest package set per host, and which hosts hold each (ecosystem, name, version).

    Host slots (bit positions) and triple ids are reused once freed, so churn neither grows the
    bitmaps nor leaks versions that no host runs any more. Not thread-safe: the controller
    uses it from its event loop only.
    """

    def __init__(self) -> None:
        # triples: id -> triple, bitmap of host slots
        self._triple_ids: dict[Triple, int] = {}
        self._triples: list[Triple | None] = []
        self._bits: list[bytearray] = []
        self._free_ids: list[int] = []
        # (ecosystem, name) -> {version: triple id}: a query's entry point
        self._by_package: dict[tuple[str, str], dict[str, int]] = {}
        # hosts: name <-> slot, per slot its triple ids, inventory time and OS
        self._slot_of: dict[str, int] = {}
        self._hosts: list[str | None] = []
        self._packages: list[array[int]] = []
        self._at = array("d")
        self._os: list[OsKey] = []
        self._os_bits: dict[OsKey, bytearray] = {}
        self._os_count: dict[OsKey, int] = {}
        self._free_slots: list[int] = []  # a heap: the lowest slot first keeps bitmaps short

    # ------------------------------------------------------------------ updates

    def update(
        self,
        host: str,
        packages: Iterable[tuple[str, str, str]],
        at: float,
        os_id: str = "",
        os_version: str = "",
    ) -> bool:
        """Replace the host's whole package set with `packages` as of `at` (epoch seconds).

        An inventory older than the stored one is ignored (False): the stream may replay or
        reorder; an equal or newer one is applied (True). Duplicate triples (one version for
        two architectures) count once; two versions of one package (kernels) are both kept.
        """
        slot = self._slot_of.get(host)
        if slot is not None and at < self._at[slot]:
            return False
        pkgs = packages if isinstance(packages, list | tuple) else list(packages)
        found = list(map(self._triple_ids.get, pkgs))  # a rebuild's hot loop, kept in C
        if None in found:
            found = [self._intern(t) if i is None else i for t, i in zip(pkgs, found, strict=True)]
        new_ids = cast(set[int], set(found))
        if slot is None:
            slot = self._new_slot(host)
            old_ids: set[int] = set()
        else:
            old_ids = set(self._packages[slot])
        i, bit = slot >> 3, 1 << (slot & 7)
        bits = self._bits
        for tid in new_ids - old_ids:
            b = bits[tid]
            if i >= len(b):  # grow by 64-byte steps: 512 hosts between reallocations
                b.extend(bytes((((i >> 6) + 1) << 6) - len(b)))
            b[i] |= bit
        for tid in old_ids - new_ids:
            self._release(tid, slot)
        # 2 bytes per package while the fleet has under 65,536 distinct triples (typical)
        code = "H" if not new_ids or max(new_ids) < 1 << 16 else "I"
        self._packages[slot] = array(code, sorted(new_ids))
        self._at[slot] = at
        self._set_os(slot, (sys.intern(os_id), sys.intern(os_version)))
        return True

    def remove(self, host: str) -> None:
        """Forget a host (decommissioned); unknown hosts are ignored."""
        slot = self._slot_of.pop(host, None)
        if slot is None:
            return
        for tid in self._packages[slot]:
            self._release(tid, slot)
        self._set_os(slot, None)
        self._packages[slot] = array("I")
        self._hosts[slot] = None
        self._at[slot] = 0.0
        heapq.heappush(self._free_slots, slot)

    def _intern(self, triple: tuple[str, str, str]) -> int:
        eco, name, version = key = triple
        tid = self._triple_ids.get(key)
        if tid is not None:
            return tid
        if self._free_ids:
            tid = self._free_ids.pop()
            self._triples[tid] = key
        else:
            tid = len(self._triples)
            self._triples.append(key)
            self._bits.append(bytearray())
        self._triple_ids[key] = tid
        self._by_package.setdefault((eco, name), {})[version] = tid
        return tid

    def _release(self, tid: int, slot: int) -> None:
        b = self._bits[tid]
        _clear_bit(b, slot)
        if b.count(0) == len(b):  # no host left: a C-speed scan, no refcount to keep
            self._free_triple(tid)

    def _free_triple(self, tid: int) -> None:
        key = self._triples[tid]
        assert key is not None
        eco, name, version = key
        del self._triple_ids[key]
        versions = self._by_package[(eco, name)]
        del versions[version]
        if not versions:
            del self._by_package[(eco, name)]
        self._triples[tid] = None
        self._bits[tid] = bytearray()
        self._free_ids.append(tid)

    def _new_slot(self, host: str) -> int:
        if self._free_slots:
            slot = heapq.heappop(self._free_slots)
            self._hosts[slot] = host
        else:
            slot = len(self._hosts)
            self._hosts.append(host)
            self._packages.append(array("I"))
            self._at.append(0.0)
            self._os.append(("", ""))
        self._slot_of[host] = slot
        self._os[slot] = ("", "")
        self._os_count[("", "")] = self._os_count.get(("", ""), 0) + 1
        _set_bit(self._os_bits.setdefault(("", ""), bytearray()), slot)
        return slot

    def _set_os(self, slot: int, os: OsKey | None) -> None:
        old = self._os[slot]
        if old == os:
            return
        _clear_bit(self._os_bits[old], slot)
        self._os_count[old] -= 1
        if not self._os_count[old]:
            del self._os_count[old], self._os_bits[old]
        if os is not None:
            self._os[slot] = os
            self._os_count[os] = self._os_count.get(os, 0) + 1
            _set_bit(self._os_bits.setdefault(os, bytearray()), slot)

    # ------------------------------------------------------------------ reads

    def inventory_time(self, host: str) -> float | None:
        slot = self._slot_of.get(host)
        return None if slot is None else self._at[slot]

    def hosts(self) -> list[str]:
        return list(self._slot_of)

    def __len__(self) -> int:
        return len(self._slot_of)

    def packages(self, host: str) -> list[Triple]:
        """One host's (ecosystem, name, version) triples, sorted; [] for an unknown host."""
        slot = self._slot_of.get(host)
        if slot is None:
            return []
        return sorted(t for t in (self._triples[i] for i in self._packages[slot]) if t)

    def _mask(self, slots: Iterable[int]) -> int:
        bits = bytearray((len(self._hosts) + 7) >> 3)
        for slot in slots:
            bits[slot >> 3] |= 1 << (slot & 7)
        return int.from_bytes(bits, "little")

    def evaluate(
        self,
        ranges: Sequence[AffectedRange],
        hosts: Collection[str] | None = None,
        uncomparable: dict[str, list[tuple[str, str]]] | None = None,
    ) -> tuple[dict[str, list[Match]], dict[str, int]]:
        """Which hosts run a version inside any of `ranges`, and counters.

        `hosts` restricts the answer to the caller's shard (unknown names are ignored). A range
        with a distro/release applies only to hosts with that os-release ID and VERSION_ID
        ("11" covers "11" and "11.x"); hosts whose OS is unknown ("" os_id) are evaluated
        anyway: a false match is checked in a minute, a missed one is a breach. A host version
        univers cannot parse is not a match: it is counted (uncomparable_*) so that the
        operator does not take those hosts for clean. A host/package/version inside several
        ranges is one Match, for the first such range. `uncomparable`, if given, gets
        host -> [(package, version)] for those hosts.
        """
        scope = None if hosts is None else self._mask(
            s for s in (self._slot_of.get(h) for h in hosts) if s is not None
        )  # fmt: skip
        checked: dict[tuple[AffectedRange, str], bool | None] = {}
        applies: dict[tuple[str | None, str | None, OsKey], bool] = {}
        seen: set[tuple[int, int]] = set()
        matches: dict[str, list[Match]] = {}
        uncomparable_versions: set[tuple[str, str, str]] = set()
        uncomparable_hosts: set[int] = set()
        for rng in ranges:
            versions = self._by_package.get((rng.ecosystem, rng.package))
            if not versions:
                continue
            allowed = scope
            if rng.distro is not None:
                os_mask = 0
                for os, bits in self._os_bits.items():
                    key = (rng.distro, rng.release, os)
                    ok = applies.get(key)
                    if ok is None:
                        ok = applies[key] = rng.applies_to(*os)
                    if ok:
                        os_mask |= int.from_bytes(bits, "little")
                allowed = os_mask if allowed is None else allowed & os_mask
                if not allowed:
                    continue
            for version, tid in versions.items():
                ck = (rng, version)
                hit = checked[ck] if ck in checked else checked.setdefault(ck, rng.check(version))
                if hit is False:
                    continue
                mask = int.from_bytes(self._bits[tid], "little")
                if allowed is not None:
                    mask &= allowed
                if not mask:
                    continue
                if hit is None:
                    uncomparable_versions.add((rng.ecosystem, rng.package, version))
                    uncomparable_hosts.update(_slots(mask))
                    if uncomparable is not None:
                        for slot in _slots(mask):
                            host = self._hosts[slot]
                            assert host is not None
                            uncomparable.setdefault(host, []).append((rng.package, version))
                    continue
                for slot in _slots(mask):
                    if (slot, tid) in seen:
                        continue
                    seen.add((slot, tid))
                    host = self._hosts[slot]
                    assert host is not None
                    matches.setdefault(host, []).append(
                        Match(host, rng.ecosystem, rng.package, version, rng.spec, rng.source)
                    )
        counters = {
            "ranges": len(ranges),
            "hosts_evaluated": len(self._slot_of) if scope is None else scope.bit_count(),
            "versions_checked": len(checked),
            "matched_hosts": len(matches),
            "matches": len(seen),
            "uncomparable_versions": len(uncomparable_versions),
            "uncomparable_hosts": len(uncomparable_hosts),
        }
        return matches, counters

    def stats(self) -> dict[str, int]:
        """Sizes for status pages; `approx_bytes` counts the index's own structures (arrays,
        bitmaps, dicts, triple tuples and strings), not the interpreter around them."""
        g = sys.getsizeof
        triples = [t for t in self._triples if t is not None]
        approx = (
            sum(g(a) for a in self._packages)
            + sum(g(b) for b in self._bits)
            + sum(g(b) for b in self._os_bits.values())
            + g(self._triple_ids)
            + g(self._triples)
            + g(self._bits)
            + g(self._by_package)
            + sum(g(v) + g(k) for k, v in self._by_package.items())
            + sum(g(t) + g(t[2]) for t in triples)  # names: once per package, roughly
            + sum(g(k[1]) for k in self._by_package)
            + g(self._slot_of)
            + g(self._hosts)
            + g(self._packages)
            + g(self._at)
            + g(self._os)
            + sum(g(h) for h in self._slot_of)
        )
        return {
            "hosts": len(self._slot_of),
            "triples": len(self._triple_ids),
            "packages": sum(len(a) for a in self._packages),
            "os_groups": len(self._os_bits),
            "approx_bytes": approx,
        }
