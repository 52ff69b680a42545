"""A fleet query on the wire: the request hidsctl sends (`query`), the share each controller
evaluates (`ctlpeer.<id>.query`) and answers, and the merged answer.

Pure: no I/O, no state. Ranges are re-parsed from every request (never trusted as already
valid); `from_wire` checks a decoded reply and raises `ProtocolError` naming the field that is
wrong."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from hidsd.base.errors import ProtocolError
from hidsd.wire.fields import (
    Plain,
    Reader,
    as_map,
    as_number,
    as_text,
    get,
    get_or,
    list_of,
    map_of,
    opt_number,
    opt_text,
    text_list,
)
from hidsd.wire.ranges import AffectedRange, QueryError, parse_vers
from hidsd.wire.record import WireRecord
from hidsd.wire.replies import Liveness, read_liveness


def range_to_wire(r: AffectedRange) -> dict[str, Plain]:
    return {"ecosystem": r.ecosystem, "package": r.package, "spec": r.spec, "distro": r.distro,
            "release": r.release, "source": r.source}  # fmt: skip


def range_from_wire(obj: object, what: str) -> AffectedRange:
    """A range as hidsctl sends it, parsed again (its ecosystem comes from the spec)."""
    m = as_map(obj, what)
    rng = parse_vers(get(m, "spec", as_text, what), get(m, "package", as_text, what))
    return replace(rng, distro=get_or(m, "distro", opt_text, what, None),
                   release=get_or(m, "release", opt_text, what, None),
                   source=get_or(m, "source", as_text, what, ""))  # fmt: skip


def _ranges(params: Mapping[str, object], what: str) -> tuple[AffectedRange, ...]:
    try:
        return get(params, "ranges", list_of(range_from_wire), what)
    except QueryError as exc:
        raise ProtocolError(f"{what}: {exc.message}", **exc.fields) from exc


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """`query`: which hosts run a version inside any of `ranges`."""

    ranges: tuple[AffectedRange, ...]
    #: online hosts whose inventory is older count as not answering (None: the controller's)
    max_age_s: float | None = None

    def to_params(self) -> dict[str, Plain]:
        out: dict[str, Plain] = {"ranges": [range_to_wire(r) for r in self.ranges]}
        if self.max_age_s is not None:
            out["max_age_s"] = self.max_age_s
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> QueryRequest:
        return cls(_ranges(params, "query"), get_or(params, "max_age_s", opt_number, "query", None))


@dataclass(frozen=True, slots=True)
class QueryShareRequest:
    """One controller's share of a query: the hosts `shard` owns among `members`."""

    ranges: tuple[AffectedRange, ...]
    members: tuple[str, ...]
    shard: str

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> QueryShareRequest:
        what = "query share"
        return cls(_ranges(params, what), get(params, "members", text_list, what),
                   get(params, "shard", as_text, what))  # fmt: skip


@dataclass(frozen=True, slots=True)
class PackageMatch(WireRecord):
    """One installed package version inside one affected range."""

    ecosystem: str
    package: str
    version: str
    range_spec: str
    #: the advisory the range is from ("cli": typed by the operator)
    source: str

    wire_keys: ClassVar[Mapping[str, str]] = {"range_spec": "range"}


def _pair(obj: object, what: str) -> tuple[str, str]:
    pair = text_list(obj, what)
    if len(pair) != 2:
        raise ProtocolError(f"{what}: expected [package, version]", field=what)
    return pair[0], pair[1]


@dataclass(frozen=True, slots=True)
class QueryShare(WireRecord):
    """What one controller answers for its share: the hosts it evaluated (with their inventory
    time), those that match, and those whose installed version cannot be compared."""

    #: host -> (package, version) pairs that cannot be compared with the range
    uncomparable: Mapping[str, tuple[tuple[str, str], ...]]
    #: None: a controller from before the field
    controller: str | None
    #: host -> inventory time (None: no inventory)
    evaluated: Mapping[str, float | None]
    matches: Mapping[str, tuple[PackageMatch, ...]]
    counters: Mapping[str, int]

    wire_what = "query share reply"
    wire_missing: ClassVar[Mapping[str, Any]] = {
        "uncomparable": {},
        "controller": None,
        "counters": {},
    }
    wire_readers: ClassVar[Mapping[str, Reader[Any]]] = {"uncomparable": map_of(list_of(_pair))}


@dataclass(frozen=True, slots=True)
class HostAnswer(WireRecord):
    """A host that answered: matched (with what it runs) or clean (`packages` None)."""

    host: str
    liveness: Liveness
    inventory_age_s: float
    packages: tuple[PackageMatch, ...] | None = None

    wire_omit = frozenset({"packages"})


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """A host the query could not answer for, and why."""

    host: str
    liveness: Liveness
    reason: str
    #: None: no inventory reported
    inventory_age_s: float | None = None

    def to_wire(self) -> dict[str, Plain]:
        out: dict[str, Plain] = {"host": self.host, "liveness": self.liveness.value}
        if self.inventory_age_s is not None:
            out["inventory_age_s"] = self.inventory_age_s
        out["reason"] = self.reason
        return out

    @classmethod
    def from_wire(cls, obj: object, what: str) -> NoAnswer:
        m = as_map(obj, what)
        return cls(get(m, "host", as_text, what), get(m, "liveness", read_liveness, what),
                   get(m, "reason", as_text, what),
                   get_or(m, "inventory_age_s", as_number, what, None))  # fmt: skip


@dataclass(frozen=True, slots=True)
class QueryCounts(WireRecord):
    hosts: int
    answered: int
    matched: int
    clean: int
    #: answered from the last known inventory of a host that is offline
    offline_answered: int
    no_answer: int


@dataclass(frozen=True, slots=True)
class Shard(WireRecord):
    """How one member's share was done: "local", "answered" or "redone here: <why>"."""

    member: str
    controller: str | None
    hosts: int
    how: str


@dataclass(frozen=True, slots=True)
class QueryResult(WireRecord):
    """`query`: every known host accounted for (matched, clean, or no answer and why)."""

    matched: tuple[HostAnswer, ...]
    clean: tuple[HostAnswer, ...]
    no_answer: tuple[NoAnswer, ...]
    counts: QueryCounts
    shards: tuple[Shard, ...]
    counters: Mapping[str, int]
    complete: bool
    elapsed_ms: float

    wire_what = "query reply"
