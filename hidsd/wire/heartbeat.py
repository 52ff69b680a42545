"""The heartbeat and its typed reports (storage, clock).

Pure: no I/O, no state; every decoder takes untrusted bytes and returns a validated value
or raises `ProtocolError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hidsd.base.errors import ProtocolError
from hidsd.base.storage import StorageReport, StorageStatus
from hidsd.wire.codec import finite, get_field, optional_int, optional_map, pack, unpack
from hidsd.wire.commands import (
    RunMode,
)
from hidsd.wire.names import (
    PROTOCOL_VERSION,
    check_name,
)


def storage_to_map(r: StorageReport) -> dict[str, Any]:
    return {"status": r.status.value, "path": r.path, "error": r.error,
            "free_bytes": r.free_bytes, "failing": r.failing,
            "errors_total": r.errors_total, "recoveries": r.recoveries,
            "fds_open": r.fds_open, "fds_limit": r.fds_limit}  # fmt: skip


def storage_from_map(m: Any) -> StorageReport:
    what = "heartbeat.storage"
    if not isinstance(m, dict):
        raise ProtocolError(f"{what}: expected a map", field="storage")
    try:
        status = StorageStatus(get_field(m, "status", str, what))
    except ValueError as exc:
        raise ProtocolError(f"{what}: {exc}", field="storage") from exc
    failing = get_field(m, "failing", dict, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in failing.items()):
        raise ProtocolError(f"{what}: failing must map writer to text", field="storage")
    return StorageReport(
        status=status,
        path=get_field(m, "path", str, what),
        error=get_field(m, "error", str, what),
        free_bytes=optional_int(m, "free_bytes", what),
        failing=failing,
        errors_total=get_field(m, "errors_total", int, what),
        recoveries=get_field(m, "recoveries", int, what),
        fds_open=optional_int(m, "fds_open", what),
        fds_limit=optional_int(m, "fds_limit", what),
    )


@dataclass(frozen=True, slots=True)
class ClockReport:
    """The agent's clock as its signed commands show it: an operator's `issued_at` is the
    only trusted time an agent receives, so skew is measured against it (the controller
    measures it against the heartbeat's `sent_at` too)."""

    #: agent clock minus the issuer's, at the newest verified command (None: none seen yet)
    command_skew_s: float | None = None
    #: commands refused because the agent's clock says they are expired / not yet valid
    refused_expired: int = 0
    refused_not_yet_valid: int = 0
    last_refusal: str = ""

    def to_map(self) -> dict[str, Any]:
        return {"command_skew_s": self.command_skew_s, "refused_expired": self.refused_expired,
                "refused_not_yet_valid": self.refused_not_yet_valid,
                "last_refusal": self.last_refusal}  # fmt: skip

    @classmethod
    def from_map(cls, m: Any) -> ClockReport:
        what = "heartbeat.clock"
        if not isinstance(m, dict):
            raise ProtocolError(f"{what}: expected a map", field="clock")
        skew = m.get("command_skew_s")
        if skew is not None:
            skew = finite(m, "command_skew_s", what)
        return cls(
            command_skew_s=skew,
            refused_expired=get_field(m, "refused_expired", int, what),
            refused_not_yet_valid=get_field(m, "refused_not_yet_valid", int, what),
            last_refusal=get_field(m, "last_refusal", str, what),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
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
    facts: dict[str, Any] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    bye: bool = False
    #: {"versions": {scope label: version}, "fingerprint", "status": ok|rejected, "error"}
    config: dict[str, Any] = field(default_factory=dict)
    #: per plugin: state, pid, cpu, rss, records, drops (every drop counted), spool
    plugins: dict[str, Any] = field(default_factory=dict)
    #: the circuit breaker: state, reason, held plugins, denylist, accounting mode (psutil or
    #: cgroup-v1/v2, and why)
    breaker: dict[str, Any] = field(default_factory=dict)
    #: outputs other than telemetry, e.g. {"inventory": {published, pending, failures, ...}}
    outputs: dict[str, Any] = field(default_factory=dict)
    #: the data dir and descriptors: ok / full / read-only / error, with the path (None:
    #: an agent from before this field)
    storage: StorageReport | None = None
    clock: ClockReport = field(default_factory=ClockReport)


_HB_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("host", str),
    ("version", str),
    ("groups", list),
    ("mode", str),
    ("applied_rev", int),
    ("held", bool),
    ("interval_s", (int, float)),
    ("seq", int),
    ("sent_at", (int, float)),
    ("uptime_s", (int, float)),
    ("cpu_pct", (int, float)),
    ("rss_bytes", int),
    ("facts", dict),
    ("rejections", dict),
    ("bye", bool),
)


def encode_heartbeat(hb: Heartbeat) -> bytes:
    return pack(
        {
            "v": PROTOCOL_VERSION,
            "host": hb.host,
            "version": hb.version,
            "groups": list(hb.groups),
            "mode": hb.mode.value,
            "applied_rev": hb.applied_rev,
            "held": hb.held,
            "interval_s": hb.interval_s,
            "seq": hb.seq,
            "sent_at": hb.sent_at,
            "uptime_s": hb.uptime_s,
            "cpu_pct": hb.cpu_pct,
            "rss_bytes": hb.rss_bytes,
            "facts": hb.facts,
            "rejections": hb.rejections,
            "bye": hb.bye,
            "config": hb.config,
            "plugins": hb.plugins,
            "breaker": hb.breaker,
            "outputs": hb.outputs,
            **({"storage": storage_to_map(hb.storage)} if hb.storage is not None else {}),
            "clock": hb.clock.to_map(),
        }
    )


def decode_heartbeat(data: bytes) -> Heartbeat:
    m = unpack(data, "heartbeat", 64 * 1024)
    if not isinstance(m, dict):
        raise ProtocolError("heartbeat: expected a map")
    values = {name: get_field(m, name, typ, "heartbeat") for name, typ in _HB_FIELDS}
    try:
        mode = RunMode(values["mode"])
    except ValueError as exc:
        raise ProtocolError(f"heartbeat: {exc}") from exc
    if values["applied_rev"] < 0:
        raise ProtocolError("heartbeat: negative applied_rev", field="applied_rev")
    groups = values["groups"]
    if not all(isinstance(g, str) for g in groups):
        raise ProtocolError("heartbeat: groups must be strings", field="groups")
    for g in groups:
        check_name(g, "group")
    rejections = values["rejections"]
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in rejections.items()):
        raise ProtocolError("heartbeat: rejections must map reason to count")
    return Heartbeat(
        host=check_name(values["host"], "host id"),
        version=values["version"],
        groups=tuple(groups),
        mode=mode,
        applied_rev=values["applied_rev"],
        held=values["held"],
        interval_s=float(values["interval_s"]),
        seq=values["seq"],
        sent_at=float(values["sent_at"]),
        uptime_s=float(values["uptime_s"]),
        cpu_pct=float(values["cpu_pct"]),
        rss_bytes=values["rss_bytes"],
        facts=values["facts"],
        rejections=rejections,
        bye=values["bye"],
        config=optional_map(m, "config"),
        plugins=optional_map(m, "plugins"),
        breaker=optional_map(m, "breaker"),
        outputs=optional_map(m, "outputs"),
        storage=storage_from_map(m["storage"]) if "storage" in m else None,
        clock=ClockReport.from_map(m["clock"]) if "clock" in m else ClockReport(),
    )
