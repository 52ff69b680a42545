"""The heartbeat and its typed reports (config, breaker, outputs, storage, clock).

Pure: no I/O, no state; every decoder takes untrusted bytes and returns a validated value
or raises `ProtocolError` naming the field. Each report's map is derived from its fields
(`wire.record`) except the breaker's, a plugin's and an output's, whose shapes are written by
hand (a nested map, flat counters)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from hidsd.base.errors import ProtocolError
from hidsd.base.storage import StorageReport
from hidsd.wire.codec import pack, unpack
from hidsd.wire.commands import RunMode
from hidsd.wire.fields import (
    Plain,
    Reader,
    as_int,
    as_map,
    as_text,
    get,
    get_or,
    text_list,
)
from hidsd.wire.names import PROTOCOL_VERSION, check_name
from hidsd.wire.record import WireRecord, Writer, decode, decode_map

_CFG = "heartbeat.config"
_BRK = "heartbeat.breaker"
_OUT = "heartbeat.outputs"


@dataclass(frozen=True, slots=True)
class ConfigRejection(WireRecord):
    """The config version an agent refused, and why (the last good one stays in force)."""

    scope: str
    version: int | None
    error: str


@dataclass(frozen=True, slots=True)
class ConfigReport(WireRecord):
    """Which config versions an agent runs and whether the newest was applied."""

    #: scope label (fleet, group:G, host:H) -> version in force
    versions: Mapping[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    #: bootstrap | last_good | ok | rejected
    status: str = "unknown"
    error: str = ""
    rejected: ConfigRejection | None = None

    wire_optional = frozenset({"fingerprint", "error", "rejected"})
    wire_what = _CFG

    @classmethod
    def from_wire(cls, obj: object, what: str = _CFG) -> Self:
        # {}: an agent that has not reported one yet
        return cls() if as_map(obj, what) == {} else decode(cls, obj, what)


@dataclass(frozen=True, slots=True)
class DenylistEntry(WireRecord):
    until: float
    in_s: int
    reason: str


@dataclass(frozen=True, slots=True)
class AccountingReport(WireRecord):
    """How the breaker measures its plugins: psutil, cgroup-v1 or cgroup-v2, and why."""

    mode: str = ""
    detail: str = ""

    wire_optional = frozenset({"mode", "detail"})


@dataclass(frozen=True, slots=True)
class BreakerReport(WireRecord):
    """The circuit breaker as the heartbeat carries it ({} on the wire for none)."""

    state: str
    since_s: float
    reason: str = ""
    level: int = 0
    resource: str | None = None
    held: tuple[str, ...] = ()
    hold_all: bool = False
    denylist: Mapping[str, DenylistEntry] = field(default_factory=dict)
    strikes: int = 0
    transitions: int = 0
    enabled: bool = True
    accounting: AccountingReport = AccountingReport()
    #: why the cgroup limits could not be set (left out on the wire while there is none)
    limits_error: str = ""

    wire_optional = frozenset({"resource", "accounting"})
    wire_omit = frozenset({"limits_error"})
    wire_what = _BRK

    @classmethod
    def from_wire(cls, obj: object, what: str = _BRK) -> Self | None:  # type: ignore[override]
        """None for {} (an agent without a breaker)."""
        return None if as_map(obj, what) == {} else decode(cls, obj, what)


_PLG = "heartbeat.plugins"
#: a plugin's facts; every other key of its map is a counter (`tel.` ones the pipeline's)


def _counters(m: Mapping[str, object], skip: Collection[str], what: str) -> dict[str, int]:
    """The keys of a flat map that are not in `skip`: each a counter (a whole number)."""
    counters = {k: v for k, v in m.items() if k not in skip}
    if counters and set(map(type, counters.values())) != {int}:  # in C: the hot path
        for k, v in counters.items():
            as_int(v, f"{what}.{k}")
    return typing.cast(dict[str, int], counters)


@dataclass(frozen=True, slots=True)
class ProcessFacts(WireRecord):
    """A plugin's process as its report says it (every other key of the map is a counter)."""

    state: str
    pid: int | None = None
    cpu_pct: float = 0.0
    rss_bytes: int = 0
    fds: int = 0
    last_exit: str = ""
    nice: int = 0
    rate_factor: float = 1.0

    wire_optional = frozenset({"pid", "fds", "last_exit", "nice", "rate_factor"})


#: a plugin's facts; every other key of its map is a counter (`tel.` ones the pipeline's)
_PLUGIN_FACTS = frozenset(f.name for f in dataclasses.fields(ProcessFacts))


@dataclass(frozen=True, slots=True)
class PluginReport:
    """One plugin as the heartbeat carries it: its process and every counter.

    On the wire (and in the controller's views) it is one flat map, the pipeline's counters
    prefixed `tel.`, so every count is a key an operator can grep for (written by hand for
    that)."""

    state: str
    pid: int | None = None
    cpu_pct: float = 0.0
    rss_bytes: int = 0
    fds: int = 0
    last_exit: str = ""
    nice: int = 0
    rate_factor: float = 1.0
    #: the runner's counters: starts, records, bad_frames, parked, start_failed, log_bytes, ...
    counters: Mapping[str, int] = field(default_factory=dict)
    #: the telemetry pipeline's counters and gauges: frames_in, records_out, dropped_*, queued,
    #: spool_batches, ...
    telemetry: Mapping[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """Every record the pipeline dropped, whatever the reason (each reason is counted)."""
        return sum(v for k, v in self.telemetry.items() if k.startswith("dropped_"))

    def to_wire(self) -> dict[str, Plain]:
        return {"state": self.state, "pid": self.pid, "cpu_pct": self.cpu_pct,
                "rss_bytes": self.rss_bytes, "fds": self.fds, "last_exit": self.last_exit,
                "nice": self.nice, "rate_factor": self.rate_factor, **self.counters,
                **{f"tel.{k}": v for k, v in self.telemetry.items()}}  # fmt: skip

    @classmethod
    def from_wire(cls, obj: object, what: str = _PLG) -> PluginReport:
        m = as_map(obj, what)
        p = decode_map(ProcessFacts, m, what)
        counters: dict[str, int] = {}
        telemetry: dict[str, int] = {}
        for k, v in m.items():
            if k in _PLUGIN_FACTS:
                continue
            n = v if type(v) is int else as_int(v, f"{what}.{k}")
            if k.startswith("tel."):
                telemetry[k[4:]] = n
            else:
                counters[k] = n
        return cls(p.state, p.pid, p.cpu_pct, p.rss_bytes, p.fds, p.last_exit, p.nice,
                   p.rate_factor, counters, telemetry)  # fmt: skip


_OUTPUT_FACTS = ("pending", "last_error")


@dataclass(frozen=True, slots=True)
class OutputReport:
    """An output other than telemetry (the inventory stream): its counters and backlog (one
    flat map on the wire, like a plugin's)."""

    counters: Mapping[str, int] = field(default_factory=dict)
    pending: int = 0
    last_error: str = ""

    def to_wire(self) -> dict[str, Plain]:
        return {**self.counters, "pending": self.pending, "last_error": self.last_error}

    @classmethod
    def from_wire(cls, obj: object, what: str = _OUT) -> OutputReport:
        m = as_map(obj, what)
        return cls(_counters(m, _OUTPUT_FACTS, what), get(m, "pending", as_int, what),
                   get_or(m, "last_error", as_text, what, ""))  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClockReport(WireRecord):
    """The agent's clock as its signed commands show it: an operator's `issued_at` is the
    only trusted time an agent receives, so skew is measured against it (the controller
    measures it against the heartbeat's `sent_at` too)."""

    #: agent clock minus the issuer's, at the newest verified command (None: none seen yet)
    command_skew_s: float | None = None
    #: commands refused because the agent's clock says they are expired / not yet valid
    refused_expired: int = 0
    refused_not_yet_valid: int = 0
    last_refusal: str = ""

    wire_what = "heartbeat.clock"


@dataclass(frozen=True, slots=True)
class HostFacts(WireRecord):
    """What rarely changes about a host (collected at start) and whether etcd answers.

    Decoding ignores keys it does not know (a newer agent may say more), takes a missing one as
    its default, but refuses a known key of the wrong type."""

    hostname: str = ""
    os: str = ""
    os_id: str = ""
    kernel: str = ""
    arch: str = ""
    ips: tuple[str, ...] = ()
    boot_time: float = 0.0
    cpus: int = 0
    python: str = ""
    #: the agent's last etcd read or watch succeeded (None: not reported)
    store_ok: bool | None = None

    wire_optional = frozenset(
        {"hostname", "os", "os_id", "kernel", "arch", "ips", "boot_time", "cpus", "python"}
    )
    wire_omit = frozenset({"store_ok"})
    wire_what = "heartbeat.facts"


def _host(value: object, where: str) -> str:
    return check_name(as_text(value, where), "host id")


def _groups(value: object, where: str) -> tuple[str, ...]:
    return tuple(check_name(g, "group") for g in text_list(value, where))


def _revision(value: object, where: str) -> int:
    rev = as_int(value, where)
    if rev < 0:
        raise ProtocolError(f"{where}: negative revision", field="applied_rev")
    return rev


def breaker_to_wire(value: BreakerReport | None) -> Plain:
    """A breaker report's map; {} for none (what decoding reads back as None)."""
    return {} if value is None else value.to_wire()


@dataclass(frozen=True, slots=True)
class Heartbeat(WireRecord):
    """What an agent tells the fleet about itself (E1, E4). `bye` marks a clean exit."""

    host: str
    version: str
    groups: tuple[str, ...]
    mode: RunMode
    applied_rev: int
    held: bool
    interval_s: float
    seq: int
    sent_at: float
    uptime_s: float
    cpu_pct: float
    rss_bytes: int
    facts: HostFacts = field(default_factory=HostFacts)
    rejections: Mapping[str, int] = field(default_factory=dict)
    bye: bool = False
    config: ConfigReport = field(default_factory=ConfigReport)
    #: per plugin: its process and every counter (drops included: nothing is lost silently)
    plugins: Mapping[str, PluginReport] = field(default_factory=dict)
    #: the circuit breaker (None: not reported; {} on the wire)
    breaker: BreakerReport | None = None
    #: outputs other than telemetry, e.g. {"inventory": ...}
    outputs: Mapping[str, OutputReport] = field(default_factory=dict)
    #: the data dir and descriptors: ok / full / read-only / error, with the path (None:
    #: an agent from before this field; left out on the wire)
    storage: StorageReport | None = None
    clock: ClockReport = field(default_factory=ClockReport)

    wire_optional = frozenset({"config", "plugins", "breaker", "outputs", "clock"})
    wire_omit = frozenset({"storage"})
    wire_readers: ClassVar[Mapping[str, Reader[Any]]] = {
        "host": _host, "groups": _groups, "applied_rev": _revision,
        "breaker": BreakerReport.from_wire,
    }  # fmt: skip
    wire_writers: ClassVar[Mapping[str, Writer]] = {"breaker": breaker_to_wire}
    wire_what = "heartbeat"


def encode_heartbeat(hb: Heartbeat) -> bytes:
    return pack({"v": PROTOCOL_VERSION, **hb.to_wire()})


def decode_heartbeat(data: bytes) -> Heartbeat:
    return Heartbeat.from_wire(unpack(data, "heartbeat", 64 * 1024), "heartbeat")


def plugin_map(hb: Heartbeat | None, name: str) -> dict[str, Plain]:
    """One plugin of a heartbeat as its flat map, as the views show it ({} if not running)."""
    if hb is None or name not in hb.plugins:
        return {}
    return hb.plugins[name].to_wire()
