"""A fleet query on the wire: the request hidsctl sends (`query`), the share each controller
evaluates (`ctlpeer.<id>.query`) and answers, and the merged answer.

Pure: no I/O, no state. Ranges are re-parsed from every request (never trusted as already
valid); `from_wire` checks a decoded reply and raises `ProtocolError` naming the field that is
wrong."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from hidsd.base.errors import ProtocolError
from hidsd.wire.fields import (
    Plain,
    as_flag,
    as_int,
    as_map,
    as_number,
    as_text,
    get,
    get_or,
    int_map,
    list_of,
    map_of,
    opt_number,
    opt_text,
    text_list,
)
from hidsd.wire.ranges import AffectedRange, QueryError, parse_vers
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
class PackageMatch:
    """One installed package version inside one affected range."""

    ecosystem: str
    package: str
    version: str
    range_spec: str
    #: the advisory the range is from ("cli": typed by the operator)
    source: str

    def to_wire(self) -> dict[str, Plain]:
        return {"ecosystem": self.ecosystem, "package": self.package, "version": self.version,
                "range": self.range_spec, "source": self.source}  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str) -> PackageMatch:
        m = as_map(obj, what)
        return cls(get(m, "ecosystem", as_text, what), get(m, "package", as_text, what),
                   get(m, "version", as_text, what), get(m, "range", as_text, what),
                   get(m, "source", as_text, what))  # fmt: skip


def _pair(obj: object, what: str) -> tuple[str, str]:
    pair = text_list(obj, what)
    if len(pair) != 2:
        raise ProtocolError(f"{what}: expected [package, version]", field=what)
    return pair[0], pair[1]


@dataclass(frozen=True, slots=True)
class QueryShare:
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

    def to_wire(self) -> dict[str, Plain]:
        return {
            "uncomparable": {h: [list(pv) for pv in v] for h, v in self.uncomparable.items()},
            "controller": self.controller, "evaluated": self.evaluated,
            "matches": {h: [p.to_wire() for p in ps] for h, ps in self.matches.items()},
            "counters": self.counters,
        }  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str = "query share reply") -> QueryShare:
        m = as_map(obj, what)
        return cls(
            uncomparable=get_or(m, "uncomparable", map_of(list_of(_pair)), what, {}),
            controller=get_or(m, "controller", opt_text, what, None),
            evaluated=get(m, "evaluated", map_of(opt_number), what),
            matches=get(m, "matches", map_of(list_of(PackageMatch.from_wire)), what),
            counters=get_or(m, "counters", int_map, what, {}),
        )


@dataclass(frozen=True, slots=True)
class HostAnswer:
    """A host that answered: matched (with what it runs) or clean (`packages` None)."""

    host: str
    liveness: Liveness
    inventory_age_s: float
    packages: tuple[PackageMatch, ...] | None = None

    def to_wire(self) -> dict[str, Plain]:
        out: dict[str, Plain] = {"host": self.host, "liveness": self.liveness.value,
                                 "inventory_age_s": self.inventory_age_s}  # fmt: skip
        if self.packages is not None:
            out["packages"] = [p.to_wire() for p in self.packages]
        return out

    @classmethod
    def from_wire(cls, obj: object, what: str) -> HostAnswer:
        m = as_map(obj, what)
        packages = None
        if "packages" in m:
            packages = get(m, "packages", list_of(PackageMatch.from_wire), what)
        return cls(get(m, "host", as_text, what), get(m, "liveness", read_liveness, what),
                   get(m, "inventory_age_s", as_number, what), packages)  # fmt: skip


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
class QueryCounts:
    hosts: int
    answered: int
    matched: int
    clean: int
    #: answered from the last known inventory of a host that is offline
    offline_answered: int
    no_answer: int

    def to_wire(self) -> dict[str, Plain]:
        return {"hosts": self.hosts, "answered": self.answered, "matched": self.matched,
                "clean": self.clean, "offline_answered": self.offline_answered,
                "no_answer": self.no_answer}  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str) -> QueryCounts:
        m = as_map(obj, what)
        return cls(get(m, "hosts", as_int, what), get(m, "answered", as_int, what),
                   get(m, "matched", as_int, what), get(m, "clean", as_int, what),
                   get(m, "offline_answered", as_int, what),
                   get(m, "no_answer", as_int, what))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Shard:
    """How one member's share was done: "local", "answered" or "redone here: <why>"."""

    member: str
    controller: str | None
    hosts: int
    how: str

    def to_wire(self) -> dict[str, Plain]:
        return {"member": self.member, "controller": self.controller, "hosts": self.hosts,
                "how": self.how}  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str) -> Shard:
        m = as_map(obj, what)
        return cls(get(m, "member", as_text, what), get(m, "controller", opt_text, what),
                   get(m, "hosts", as_int, what), get(m, "how", as_text, what))  # fmt: skip


@dataclass(frozen=True, slots=True)
class QueryResult:
    """`query`: every known host accounted for (matched, clean, or no answer and why)."""

    matched: tuple[HostAnswer, ...]
    clean: tuple[HostAnswer, ...]
    no_answer: tuple[NoAnswer, ...]
    counts: QueryCounts
    shards: tuple[Shard, ...]
    counters: Mapping[str, int]
    complete: bool
    elapsed_ms: float

    def to_wire(self) -> dict[str, Plain]:
        return {
            "matched": [r.to_wire() for r in self.matched],
            "clean": [r.to_wire() for r in self.clean],
            "no_answer": [r.to_wire() for r in self.no_answer],
            "counts": self.counts.to_wire(), "shards": [s.to_wire() for s in self.shards],
            "counters": self.counters, "complete": self.complete, "elapsed_ms": self.elapsed_ms,
        }  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str = "query reply") -> QueryResult:
        m = as_map(obj, what)
        return cls(
            matched=get(m, "matched", list_of(HostAnswer.from_wire), what),
            clean=get(m, "clean", list_of(HostAnswer.from_wire), what),
            no_answer=get(m, "no_answer", list_of(NoAnswer.from_wire), what),
            counts=get(m, "counts", QueryCounts.from_wire, what),
            shards=get(m, "shards", list_of(Shard.from_wire), what),
            counters=get(m, "counters", int_map, what),
            complete=get(m, "complete", as_flag, what),
            elapsed_ms=get(m, "elapsed_ms", as_number, what),
        )
