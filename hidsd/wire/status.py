"""The replies about the controllers themselves: `ping`, `controllers` (and the `stats` share
each peer answers for it), `endpoints`, `telemetry.stats` and `inventory.stats`.

Pure: no I/O, no state. `to_wire` is the map the controller sends; `from_wire` checks a decoded
reply and raises `ProtocolError` naming the field that is wrong."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hidsd.wire.fields import (
    Plain,
    as_flag,
    as_int,
    as_map,
    as_number,
    as_text,
    get,
    int_map,
    list_of,
    map_of,
    number_map,
)


@dataclass(frozen=True, slots=True)
class MemberRow:
    """A live controller as one member sees the cluster."""

    id: str
    name: str
    #: the member that answered
    is_self: bool
    last_seen_ago_s: float
    uptime_s: float

    def to_wire(self) -> dict[str, Plain]:
        return {"id": self.id, "name": self.name, "self": self.is_self,
                "last_seen_ago_s": self.last_seen_ago_s, "uptime_s": self.uptime_s}  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str) -> MemberRow:
        m = as_map(obj, what)
        return cls(get(m, "id", as_text, what), get(m, "name", as_text, what),
                   get(m, "self", as_flag, what), get(m, "last_seen_ago_s", as_number, what),
                   get(m, "uptime_s", as_number, what))  # fmt: skip


@dataclass(frozen=True, slots=True)
class IndexStats:
    """The inventory index's sizes (`approx_bytes`: its own structures)."""

    hosts: int
    triples: int
    packages: int
    os_groups: int
    approx_bytes: int

    def to_wire(self) -> dict[str, Plain]:
        return {"hosts": self.hosts, "triples": self.triples, "packages": self.packages,
                "os_groups": self.os_groups, "approx_bytes": self.approx_bytes}  # fmt: skip

    @classmethod
    def from_wire(cls, m: Mapping[str, object], what: str) -> IndexStats:
        return cls(get(m, "hosts", as_int, what), get(m, "triples", as_int, what),
                   get(m, "packages", as_int, what), get(m, "os_groups", as_int, what),
                   get(m, "approx_bytes", as_int, what))  # fmt: skip


@dataclass(frozen=True, slots=True)
class InventoryHealth:
    """Whether this controller follows the inventory stream, and its index's sizes."""

    ok: bool
    index: IndexStats

    def to_wire(self) -> dict[str, Plain]:
        return {"ok": self.ok, **self.index.to_wire()}

    @classmethod
    def from_wire(cls, obj: object, what: str) -> InventoryHealth:
        m = as_map(obj, what)
        return cls(get(m, "ok", as_flag, what), IndexStats.from_wire(m, what))


@dataclass(frozen=True, slots=True)
class Ping:
    """`ping`: the answering controller, its counters and the cluster as it sees it."""

    name: str
    version: str
    uptime_s: float
    counters: Mapping[str, int]
    #: the controller gets NATS's connect/disconnect advisories (else heartbeat timeouts only)
    presence_events: bool
    id: str
    members: tuple[MemberRow, ...]
    cluster: Mapping[str, int]
    inventory: InventoryHealth

    def to_wire(self) -> dict[str, Plain]:
        return {
            "name": self.name, "version": self.version, "uptime_s": self.uptime_s,
            "counters": self.counters, "presence_events": self.presence_events, "id": self.id,
            "members": [m.to_wire() for m in self.members], "cluster": self.cluster,
            "inventory": self.inventory.to_wire(),
        }  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str = "ping reply") -> Ping:
        m = as_map(obj, what)
        return cls(
            name=get(m, "name", as_text, what),
            version=get(m, "version", as_text, what),
            uptime_s=get(m, "uptime_s", as_number, what),
            counters=get(m, "counters", int_map, what),
            presence_events=get(m, "presence_events", as_flag, what),
            id=get(m, "id", as_text, what),
            members=get(m, "members", list_of(MemberRow.from_wire), what),
            cluster=get(m, "cluster", int_map, what),
            inventory=get(m, "inventory", InventoryHealth.from_wire, what),
        )


@dataclass(frozen=True, slots=True)
class StatsShare:
    """The `stats` share one controller answers (`ctlpeer.<id>.stats`): its own counters."""

    name: str
    uptime_s: float
    counters: Mapping[str, int]
    cluster: Mapping[str, int]
    agents: int
    inventory_hosts: int

    def to_wire(self) -> dict[str, Plain]:
        return {"name": self.name, "uptime_s": self.uptime_s, "counters": self.counters,
                "cluster": self.cluster, "agents": self.agents,
                "inventory_hosts": self.inventory_hosts}  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str = "stats reply") -> StatsShare:
        m = as_map(obj, what)
        return cls(get(m, "name", as_text, what), get(m, "uptime_s", as_number, what),
                   get(m, "counters", int_map, what), get(m, "cluster", int_map, what),
                   get(m, "agents", as_int, what),
                   get(m, "inventory_hosts", as_int, what))  # fmt: skip


#: what a controller row says when that controller's share had to be redone elsewhere
NO_ANSWER = "did not answer"


@dataclass(frozen=True, slots=True)
class ControllerRow:
    """One live controller in `controllers`: its own counters, or None if it did not answer."""

    id: str
    name: str
    stats: StatsShare | None

    def to_wire(self) -> dict[str, Plain]:
        if self.stats is None:
            return {"id": self.id, "name": self.name, "error": NO_ANSWER}
        return {"id": self.id, **self.stats.to_wire()}

    @classmethod
    def from_wire(cls, obj: object, what: str) -> ControllerRow:
        m = as_map(obj, what)
        if "error" in m:
            return cls(get(m, "id", as_text, what), get(m, "name", as_text, what), None)
        stats = StatsShare.from_wire(m, what)
        return cls(get(m, "id", as_text, what), stats.name, stats)


@dataclass(frozen=True, slots=True)
class Controllers:
    """`controllers`: every live controller, by name."""

    controllers: tuple[ControllerRow, ...]

    def to_wire(self) -> dict[str, Plain]:
        return {"controllers": [c.to_wire() for c in self.controllers]}

    @classmethod
    def from_wire(cls, obj: object, what: str = "controllers reply") -> Controllers:
        m = as_map(obj, what)
        return cls(get(m, "controllers", list_of(ControllerRow.from_wire), what))


@dataclass(frozen=True, slots=True)
class EndpointCounters:
    """One verb's counters."""

    requests: int
    #: answered with an operator-facing error (bad request, not found, ...)
    errors: int
    #: a bug: answered with "internal error", logged with its traceback
    internal_errors: int
    too_large: int
    average_ms: float
    last_error: str

    def to_wire(self) -> dict[str, Plain]:
        return {"requests": self.requests, "errors": self.errors,
                "internal_errors": self.internal_errors, "too_large": self.too_large,
                "average_ms": self.average_ms, "last_error": self.last_error}  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str) -> EndpointCounters:
        m = as_map(obj, what)
        return cls(get(m, "requests", as_int, what), get(m, "errors", as_int, what),
                   get(m, "internal_errors", as_int, what), get(m, "too_large", as_int, what),
                   get(m, "average_ms", as_number, what),
                   get(m, "last_error", as_text, what))  # fmt: skip


@dataclass(frozen=True, slots=True)
class EndpointTable:
    """One table's verbs with their counters, and requests for verbs it does not have."""

    endpoints: Mapping[str, EndpointCounters]
    unknown: int

    def to_wire(self) -> dict[str, Plain]:
        return {"endpoints": {n: c.to_wire() for n, c in self.endpoints.items()},
                "unknown": self.unknown}  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str) -> EndpointTable:
        m = as_map(obj, what)
        return cls(get(m, "endpoints", map_of(EndpointCounters.from_wire), what),
                   get(m, "unknown", as_int, what))  # fmt: skip


@dataclass(frozen=True, slots=True)
class EndpointsReply:
    """`endpoints`: the answering controller's verbs (hidsctl's, and its peers')."""

    controller: EndpointTable
    peer: EndpointTable

    def to_wire(self) -> dict[str, Plain]:
        return {"controller": self.controller.to_wire(), "peer": self.peer.to_wire()}

    @classmethod
    def from_wire(cls, obj: object, what: str = "endpoints reply") -> EndpointsReply:
        m = as_map(obj, what)
        return cls(get(m, "controller", EndpointTable.from_wire, what),
                   get(m, "peer", EndpointTable.from_wire, what))  # fmt: skip


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One host's plugin in the telemetry stream, as this controller's consumer counted it."""

    host: str
    plugin: str
    records: int
    batches: int
    bytes: int
    #: batches that skipped sequence numbers, and how many records they skipped
    gaps: int
    missing_records: int
    #: batches at or below a sequence already seen (a resend)
    repeats: int
    epoch: int
    next_seq: int
    last_at: float

    def to_wire(self) -> dict[str, Plain]:
        return {"host": self.host, "plugin": self.plugin, "records": self.records,
                "batches": self.batches, "bytes": self.bytes, "gaps": self.gaps,
                "missing_records": self.missing_records, "repeats": self.repeats,
                "epoch": self.epoch, "next_seq": self.next_seq,
                "last_at": self.last_at}  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str) -> StreamStats:
        m = as_map(obj, what)
        n = {k: get(m, k, as_int, what) for k in ("records", "batches", "bytes", "gaps",
                                                  "missing_records", "repeats", "epoch",
                                                  "next_seq")}  # fmt: skip
        return cls(get(m, "host", as_text, what), get(m, "plugin", as_text, what),
                   n["records"], n["batches"], n["bytes"], n["gaps"], n["missing_records"],
                   n["repeats"], n["epoch"], n["next_seq"],
                   get(m, "last_at", as_number, what))  # fmt: skip


@dataclass(frozen=True, slots=True)
class TelemetryStats:
    """`telemetry.stats`: every host and plugin this controller consumed, by host."""

    streams: tuple[StreamStats, ...]

    def to_wire(self) -> dict[str, Plain]:
        return {"streams": [s.to_wire() for s in self.streams]}

    @classmethod
    def from_wire(cls, obj: object, what: str = "telemetry.stats reply") -> TelemetryStats:
        m = as_map(obj, what)
        return cls(get(m, "streams", list_of(StreamStats.from_wire), what))


@dataclass(frozen=True, slots=True)
class InventoryStats:
    """`inventory.stats`: the index's sizes and each indexed host's inventory age."""

    ok: bool
    index: IndexStats
    age_s: Mapping[str, float]

    def to_wire(self) -> dict[str, Plain]:
        return {"ok": self.ok, **self.index.to_wire(), "age_s": self.age_s}

    @classmethod
    def from_wire(cls, obj: object, what: str = "inventory.stats reply") -> InventoryStats:
        m = as_map(obj, what)
        return cls(get(m, "ok", as_flag, what), IndexStats.from_wire(m, what),
                   get(m, "age_s", number_map, what))  # fmt: skip
