"""The replies to hidsctl's reads about agents: the agent rows (`agents.list`), one agent in
full (`agents.show`), the fleet summary (`fleet.status`), config versions (`config.status`),
who should ack a command (`expected`) and the acks it got (`acks`).

Pure: no I/O, no state. `to_wire` is the map the controller sends; `from_wire` checks a decoded
reply and raises `ProtocolError` naming the field that is wrong. An agent row carries the
heartbeat's own typed reports (`wire.heartbeat`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from hidsd.base.storage import StorageReport, StorageStatus
from hidsd.wire.commands import AckStatus, RunMode
from hidsd.wire.fields import (
    Plain,
    Reader,
    as_map,
    as_number,
    as_text,
    enum_of,
    get,
    list_of,
    map_of,
    opt_flag,
    opt_int,
    opt_number,
)
from hidsd.wire.heartbeat import (
    BreakerReport,
    ClockReport,
    ConfigRejection,
    ConfigReport,
    Heartbeat,
    HostFacts,
    PluginReport,
    breaker_to_wire,
)
from hidsd.wire.record import WireRecord, Writer
from hidsd.wire.rpc import Event


class Liveness(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    #: presence never saw the host (a fleet query knows it from its inventory only)
    UNKNOWN = "unknown"


read_liveness = enum_of(Liveness)


@dataclass(frozen=True, slots=True)
class AgentReport(WireRecord):
    """What an agent's newest heartbeat says, as its row shows it."""

    mode: RunMode
    groups: tuple[str, ...]
    version: str
    applied_rev: int
    held: bool
    interval_s: float
    uptime_s: float
    cpu_pct: float
    rss_bytes: int
    facts: HostFacts
    rejections: Mapping[str, int]
    seq: int
    plugins: Mapping[str, PluginReport]
    config: ConfigReport
    #: None: the agent reports no breaker ({} on the wire)
    breaker: BreakerReport | None
    storage: StorageReport | None
    clock: ClockReport

    @classmethod
    def of(cls, hb: Heartbeat) -> AgentReport:
        return cls(hb.mode, hb.groups, hb.version, hb.applied_rev, hb.held, hb.interval_s,
                   hb.uptime_s, hb.cpu_pct, hb.rss_bytes, hb.facts, hb.rejections, hb.seq,
                   hb.plugins, hb.config, hb.breaker, hb.storage, hb.clock)  # fmt: skip

    wire_missing: ClassVar[Mapping[str, Any]] = {"storage": None}
    wire_readers: ClassVar[Mapping[str, Reader[Any]]] = {"breaker": BreakerReport.from_wire}
    wire_writers: ClassVar[Mapping[str, Writer]] = {"breaker": breaker_to_wire}


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One agent in `agents.list`: presence, the newest heartbeat (None before the first one
    arrived), and whether it runs the desired state (None: etcd unreachable or no heartbeat)."""

    host: str
    liveness: Liveness
    reason: str
    last_seen: float
    last_seen_ago_s: float | None
    since: float
    clock_skew_s: float | None
    report: AgentReport | None
    desired_rev: int | None
    converged: bool | None

    def to_wire(self) -> dict[str, Plain]:
        out: dict[str, Plain] = {
            "host": self.host, "liveness": self.liveness.value, "reason": self.reason,
            "last_seen": self.last_seen, "last_seen_ago_s": self.last_seen_ago_s,
            "since": self.since, "clock_skew_s": self.clock_skew_s,
        }  # fmt: skip
        if self.report is not None:
            out.update(self.report.to_wire())
        out["desired_rev"] = self.desired_rev
        out["converged"] = self.converged
        return out

    @classmethod
    def from_wire(cls, obj: object, what: str) -> AgentRow:
        m = as_map(obj, what)
        return cls(
            host=get(m, "host", as_text, what),
            liveness=get(m, "liveness", read_liveness, what),
            reason=get(m, "reason", as_text, what),
            last_seen=get(m, "last_seen", as_number, what),
            last_seen_ago_s=get(m, "last_seen_ago_s", opt_number, what),
            since=get(m, "since", as_number, what),
            clock_skew_s=get(m, "clock_skew_s", opt_number, what),
            report=AgentReport.from_wire(m, what) if "mode" in m else None,
            desired_rev=get(m, "desired_rev", opt_int, what),
            converged=get(m, "converged", opt_flag, what),
        )


@dataclass(frozen=True, slots=True)
class AgentsList(WireRecord):
    """`agents.list`: every agent the controllers know, by host."""

    agents: tuple[AgentRow, ...]
    #: False: etcd was unreachable, so convergence is unknown
    store_ok: bool

    wire_what = "agents.list reply"


@dataclass(frozen=True, slots=True)
class AgentDetail:
    """`agents.show`: one agent's row and its latest events (oldest first)."""

    agent: AgentRow
    events: tuple[Event, ...]

    def to_wire(self) -> dict[str, Plain]:
        return {**self.agent.to_wire(), "events": [e.to_wire() for e in self.events]}

    @classmethod
    def from_wire(cls, obj: object, what: str = "agents.show reply") -> AgentDetail:
        m = as_map(obj, what)
        return cls(AgentRow.from_wire(m, what), get(m, "events", list_of(Event.from_wire), what))


# --------------------------------------------------------------------------- fleet.status


@dataclass(frozen=True, slots=True)
class BreakerSummary(WireRecord):
    """A host whose breaker is not normal, as `fleet status` names it."""

    state: str
    reason: str
    denylist: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StorageSummary(WireRecord):
    """A host whose storage is not ok, as `fleet status` names it."""

    status: StorageStatus
    path: str
    error: str


@dataclass(frozen=True, slots=True)
class FleetStatus(WireRecord):
    """`fleet.status`: counts by liveness, run mode, breaker and storage state, and the hosts an
    operator must look at."""

    agents: int
    online: int
    offline: int
    offline_hosts: tuple[str, ...]
    by_mode: Mapping[str, int]
    by_breaker: Mapping[str, int]
    breaker_not_normal: Mapping[str, BreakerSummary]
    by_storage: Mapping[str, int]
    storage_not_ok: Mapping[str, StorageSummary]
    clock_skewed: Mapping[str, float]
    held: tuple[str, ...]
    not_converged: tuple[str, ...]
    store_ok: bool
    #: desired-state key -> its etcd revision
    desired: Mapping[str, int]

    wire_what = "fleet.status reply"


@dataclass(frozen=True, slots=True)
class ConfigAgentRow(WireRecord):
    """One agent in `config.status`: the versions it runs against those it should run."""

    host: str
    liveness: Liveness
    #: scope label (fleet, group:G, host:H) -> version
    running: Mapping[str, int]
    #: None: etcd was unreachable
    desired: Mapping[str, int] | None
    converged: bool | None
    status: str
    rejected: ConfigRejection | None
    fingerprint: str | None


@dataclass(frozen=True, slots=True)
class ConfigStatus(WireRecord):
    """`config.status`: each scope's current version, and every agent that reported one."""

    store_ok: bool
    current: Mapping[str, int]
    agents: tuple[ConfigAgentRow, ...]

    wire_what = "config.status reply"


@dataclass(frozen=True, slots=True)
class Expected(WireRecord):
    """`expected`: the hosts a command for a scope should reach, online and offline."""

    online: tuple[str, ...]
    offline: tuple[str, ...]

    wire_what = "expected reply"


@dataclass(frozen=True, slots=True)
class AckSummary(WireRecord):
    """One host's ack of a command, as the ledger keeps it."""

    status: AckStatus
    rev: int
    detail: str


@dataclass(frozen=True, slots=True)
class Acks:
    """`acks`: host -> its ack of one command."""

    acks: Mapping[str, AckSummary]

    def to_wire(self) -> dict[str, Plain]:
        return {h: a.to_wire() for h, a in self.acks.items()}

    @classmethod
    def from_wire(cls, obj: object, what: str = "acks reply") -> Acks:
        return cls(map_of(AckSummary.from_wire)(obj, what))
