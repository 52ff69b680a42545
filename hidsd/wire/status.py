"""The replies about the controllers themselves: `ping`, `controllers` (and the `stats` share
each peer answers for it), `endpoints`, `telemetry.stats` and `inventory.stats`.

Pure: no I/O, no state. `to_wire` is the map the controller sends; `from_wire` checks a decoded
reply and raises `ProtocolError` naming the field that is wrong; both are derived from the
fields (`wire.record`) except where a reply flattens one record into another."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from hidsd.wire.fields import (
    Plain,
    as_flag,
    as_map,
    as_text,
    get,
    number_map,
)
from hidsd.wire.record import WireRecord


@dataclass(frozen=True, slots=True)
class MemberRow(WireRecord):
    """A live controller as one member sees the cluster."""

    id: str
    name: str
    #: the member that answered
    is_self: bool
    last_seen_ago_s: float
    uptime_s: float

    wire_keys: ClassVar[Mapping[str, str]] = {"is_self": "self"}


@dataclass(frozen=True, slots=True)
class IndexStats(WireRecord):
    """The inventory index's sizes (`approx_bytes`: its own structures)."""

    hosts: int
    triples: int
    packages: int
    os_groups: int
    approx_bytes: int


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
class Ping(WireRecord):
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

    wire_what = "ping reply"


@dataclass(frozen=True, slots=True)
class StatsShare(WireRecord):
    """The `stats` share one controller answers (`ctlpeer.<id>.stats`): its own counters."""

    name: str
    uptime_s: float
    counters: Mapping[str, int]
    cluster: Mapping[str, int]
    agents: int
    inventory_hosts: int

    wire_what = "stats reply"


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
class Controllers(WireRecord):
    """`controllers`: every live controller, by name."""

    controllers: tuple[ControllerRow, ...]

    wire_what = "controllers reply"


@dataclass(frozen=True, slots=True)
class EndpointCounters(WireRecord):
    """One verb's counters."""

    requests: int
    #: answered with an operator-facing error (bad request, not found, ...)
    errors: int
    #: a bug: answered with "internal error", logged with its traceback
    internal_errors: int
    too_large: int
    average_ms: float
    last_error: str


@dataclass(frozen=True, slots=True)
class EndpointTable(WireRecord):
    """One table's verbs with their counters, and requests for verbs it does not have."""

    endpoints: Mapping[str, EndpointCounters]
    unknown: int


@dataclass(frozen=True, slots=True)
class EndpointsReply(WireRecord):
    """`endpoints`: the answering controller's verbs (hidsctl's, and its peers')."""

    controller: EndpointTable
    peer: EndpointTable

    wire_what = "endpoints reply"


@dataclass(frozen=True, slots=True)
class StreamStats(WireRecord):
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


@dataclass(frozen=True, slots=True)
class TelemetryStats(WireRecord):
    """`telemetry.stats`: every host and plugin this controller consumed, by host."""

    streams: tuple[StreamStats, ...]

    wire_what = "telemetry.stats reply"


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
