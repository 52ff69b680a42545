"""The heartbeat and its typed reports (config, breaker, outputs, storage, clock).

Pure: no I/O, no state; every decoder takes untrusted bytes and returns a validated value
or raises `ProtocolError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hidsd.base.errors import ProtocolError
from hidsd.base.storage import StorageReport, StorageStatus
from hidsd.wire.codec import finite, get_field, optional_int, optional_map, pack, unpack
from hidsd.wire.commands import RunMode
from hidsd.wire.names import PROTOCOL_VERSION, check_name

_CFG = "heartbeat.config"
_BRK = "heartbeat.breaker"
_OUT = "heartbeat.outputs"


def _int_map(m: dict[str, Any], name: str, what: str) -> dict[str, int]:
    value = get_field(m, name, dict, what)
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, int) or isinstance(v, bool):
            raise ProtocolError(f"{what}: {name} must map names to numbers", field=name)
    return dict(value)


@dataclass(frozen=True, slots=True)
class ConfigRejection:
    """The config version an agent refused, and why (the last good one stays in force)."""

    scope: str
    version: int | None
    error: str


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """Which config versions an agent runs and whether the newest was applied."""

    #: scope label (fleet, group:G, host:H) -> version in force
    versions: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    #: bootstrap | last_good | ok | rejected
    status: str = "unknown"
    error: str = ""
    rejected: ConfigRejection | None = None

    def to_map(self) -> dict[str, Any]:
        r = self.rejected
        return {"versions": dict(self.versions), "fingerprint": self.fingerprint,
                "status": self.status, "error": self.error,
                "rejected": None if r is None else {"scope": r.scope, "version": r.version,
                                                    "error": r.error}}  # fmt: skip

    @classmethod
    def from_map(cls, m: Any) -> ConfigReport:
        if not isinstance(m, dict):
            raise ProtocolError(f"{_CFG}: expected a map", field="config")
        if not m:
            return cls()  # an agent that has not reported one yet
        rej = m.get("rejected")
        rejected = None
        if rej is not None:
            if not isinstance(rej, dict):
                raise ProtocolError(f"{_CFG}: rejected must be a map", field="config")
            rejected = ConfigRejection(
                scope=get_field(rej, "scope", str, _CFG),
                version=optional_int(rej, "version", _CFG),
                error=get_field(rej, "error", str, _CFG),
            )
        error = m.get("error") or ""
        if not isinstance(error, str):
            raise ProtocolError(f"{_CFG}: error must be text", field="config")
        return cls(
            versions=_int_map(m, "versions", _CFG),
            fingerprint=str(m.get("fingerprint") or ""),
            status=get_field(m, "status", str, _CFG),
            error=error,
            rejected=rejected,
        )


@dataclass(frozen=True, slots=True)
class DenylistEntry:
    until: float
    in_s: int
    reason: str


@dataclass(frozen=True, slots=True)
class BreakerReport:
    """The circuit breaker as the heartbeat carries it."""

    state: str
    since_s: float
    reason: str = ""
    level: int = 0
    resource: str | None = None
    held: tuple[str, ...] = ()
    hold_all: bool = False
    denylist: dict[str, DenylistEntry] = field(default_factory=dict)
    strikes: int = 0
    transitions: int = 0
    enabled: bool = True
    #: psutil, cgroup-v1 or cgroup-v2, and why
    accounting_mode: str = ""
    accounting_detail: str = ""
    limits_error: str = ""

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state, "since_s": self.since_s, "reason": self.reason,
            "level": self.level, "resource": self.resource, "held": list(self.held),
            "hold_all": self.hold_all,
            "denylist": {n: {"until": d.until, "in_s": d.in_s, "reason": d.reason}
                         for n, d in self.denylist.items()},
            "strikes": self.strikes, "transitions": self.transitions, "enabled": self.enabled,
            "accounting": {"mode": self.accounting_mode, "detail": self.accounting_detail},
        }  # fmt: skip
        if self.limits_error:
            out["limits_error"] = self.limits_error
        return out

    @classmethod
    def from_map(cls, m: Any) -> BreakerReport | None:
        if not isinstance(m, dict):
            raise ProtocolError(f"{_BRK}: expected a map", field="breaker")
        if not m:
            return None
        held = get_field(m, "held", list, _BRK)
        if not all(isinstance(h, str) for h in held):
            raise ProtocolError(f"{_BRK}: held must be names", field="breaker")
        deny: dict[str, DenylistEntry] = {}
        for name, d in get_field(m, "denylist", dict, _BRK).items():
            if not isinstance(name, str) or not isinstance(d, dict):
                raise ProtocolError(f"{_BRK}: denylist maps names to entries", field="breaker")
            in_s = int(get_field(d, "in_s", int, _BRK))
            deny[name] = DenylistEntry(
                finite(d, "until", _BRK), in_s, get_field(d, "reason", str, _BRK)
            )
        acc = m.get("accounting") or {}
        if not isinstance(acc, dict):
            raise ProtocolError(f"{_BRK}: accounting must be a map", field="breaker")
        resource = m.get("resource")
        if resource is not None and not isinstance(resource, str):
            raise ProtocolError(f"{_BRK}: resource must be text", field="breaker")
        return cls(
            state=get_field(m, "state", str, _BRK),
            since_s=finite(m, "since_s", _BRK),
            reason=get_field(m, "reason", str, _BRK),
            level=get_field(m, "level", int, _BRK),
            resource=resource,
            held=tuple(held),
            hold_all=get_field(m, "hold_all", bool, _BRK),
            denylist=deny,
            strikes=get_field(m, "strikes", int, _BRK),
            transitions=get_field(m, "transitions", int, _BRK),
            enabled=get_field(m, "enabled", bool, _BRK),
            accounting_mode=str(acc.get("mode", "")),
            accounting_detail=str(acc.get("detail", "")),
            limits_error=str(m.get("limits_error") or ""),
        )


_PLG = "heartbeat.plugins"
#: a plugin's facts; every other key of its map is a counter (`tel.` ones the pipeline's)
_PLUGIN_FACTS = ("state", "pid", "cpu_pct", "rss_bytes", "fds", "last_exit", "nice",
                 "rate_factor")  # fmt: skip


@dataclass(frozen=True, slots=True)
class PluginReport:
    """One plugin as the heartbeat carries it: its process and every counter.

    On the wire (and in the controller's views) it is one flat map, the pipeline's counters
    prefixed `tel.`, so every count is a key an operator can grep for."""

    state: str
    pid: int | None = None
    cpu_pct: float = 0.0
    rss_bytes: int = 0
    fds: int = 0
    last_exit: str = ""
    nice: int = 0
    rate_factor: float = 1.0
    #: the runner's counters: starts, records, bad_frames, parked, start_failed, log_bytes, ...
    counters: dict[str, int] = field(default_factory=dict)
    #: the telemetry pipeline's counters and gauges: frames_in, records_out, dropped_*, queued,
    #: spool_batches, ...
    telemetry: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """Every record the pipeline dropped, whatever the reason (each reason is counted)."""
        return sum(v for k, v in self.telemetry.items() if k.startswith("dropped_"))

    def to_map(self) -> dict[str, Any]:
        return {"state": self.state, "pid": self.pid, "cpu_pct": self.cpu_pct,
                "rss_bytes": self.rss_bytes, "fds": self.fds, "last_exit": self.last_exit,
                "nice": self.nice, "rate_factor": self.rate_factor, **self.counters,
                **{f"tel.{k}": v for k, v in self.telemetry.items()}}  # fmt: skip

    @classmethod
    def from_map(cls, m: Any) -> PluginReport:
        if not isinstance(m, dict):
            raise ProtocolError(f"{_PLG}: expected a map per plugin", field="plugins")
        counters: dict[str, int] = {}
        telemetry: dict[str, int] = {}
        for k, v in m.items():
            if k in _PLUGIN_FACTS:
                continue
            if not isinstance(k, str) or not isinstance(v, int) or isinstance(v, bool):
                raise ProtocolError(f"{_PLG}: counter {k!r} must be a number", field="plugins")
            if k.startswith("tel."):
                telemetry[k[4:]] = v
            else:
                counters[k] = v
        pid = m.get("pid")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
            raise ProtocolError(f"{_PLG}: pid must be a number", field="plugins")
        return cls(
            state=get_field(m, "state", str, _PLG),
            pid=pid,
            cpu_pct=finite(m, "cpu_pct", _PLG),
            rss_bytes=get_field(m, "rss_bytes", int, _PLG),
            fds=int(m.get("fds", 0) or 0),
            last_exit=str(m.get("last_exit") or ""),
            nice=int(m.get("nice", 0) or 0),
            rate_factor=float(m.get("rate_factor", 1.0) or 0.0),
            counters=counters,
            telemetry=telemetry,
        )


@dataclass(frozen=True, slots=True)
class OutputReport:
    """An output other than telemetry (the inventory stream): its counters and backlog."""

    counters: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    last_error: str = ""

    def to_map(self) -> dict[str, Any]:
        return {**self.counters, "pending": self.pending, "last_error": self.last_error}

    @classmethod
    def from_map(cls, m: Any) -> OutputReport:
        if not isinstance(m, dict):
            raise ProtocolError(f"{_OUT}: expected a map", field="outputs")
        counters = {k: v for k, v in m.items() if k not in ("pending", "last_error")}
        if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                   for k, v in counters.items()):  # fmt: skip
            raise ProtocolError(f"{_OUT}: counters must be numbers", field="outputs")
        return cls(counters, int(get_field(m, "pending", int, _OUT)),
                   str(m.get("last_error") or ""))  # fmt: skip


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
class HostFacts:
    """What rarely changes about a host (collected at start) and whether etcd answers.

    Decoding ignores keys it does not know (a newer agent may say more) but refuses a known
    key of the wrong type."""

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

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"hostname": self.hostname, "os": self.os, "os_id": self.os_id,
                             "kernel": self.kernel, "arch": self.arch, "ips": list(self.ips),
                             "boot_time": self.boot_time, "cpus": self.cpus,
                             "python": self.python}  # fmt: skip
        if self.store_ok is not None:
            m["store_ok"] = self.store_ok
        return m

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> HostFacts:
        what = "heartbeat.facts"

        def opt(key: str, typ: type | tuple[type, ...], default: Any) -> Any:
            return get_field(m, key, typ, what) if key in m else default

        ips = opt("ips", list, [])
        if not all(isinstance(ip, str) for ip in ips):
            raise ProtocolError(f"{what}: ips must be strings", field="facts.ips")
        store_ok = opt("store_ok", bool, None)
        return cls(
            hostname=opt("hostname", str, ""),
            os=opt("os", str, ""),
            os_id=opt("os_id", str, ""),
            kernel=opt("kernel", str, ""),
            arch=opt("arch", str, ""),
            ips=tuple(ips),
            boot_time=finite(m, "boot_time", what) if "boot_time" in m else 0.0,
            cpus=opt("cpus", int, 0),
            python=opt("python", str, ""),
            store_ok=store_ok,
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
    facts: HostFacts = field(default_factory=HostFacts)
    rejections: dict[str, int] = field(default_factory=dict)
    bye: bool = False
    config: ConfigReport = field(default_factory=ConfigReport)
    #: per plugin: its process and every counter (drops included: nothing is lost silently)
    plugins: dict[str, PluginReport] = field(default_factory=dict)
    #: the circuit breaker (None: not reported)
    breaker: BreakerReport | None = None
    #: outputs other than telemetry, e.g. {"inventory": ...}
    outputs: dict[str, OutputReport] = field(default_factory=dict)
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
            "facts": hb.facts.to_map(),
            "rejections": hb.rejections,
            "bye": hb.bye,
            "config": hb.config.to_map(),
            "plugins": {name: p.to_map() for name, p in hb.plugins.items()},
            "breaker": hb.breaker.to_map() if hb.breaker is not None else {},
            "outputs": {name: o.to_map() for name, o in hb.outputs.items()},
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
        facts=HostFacts.from_map(values["facts"]),
        rejections=rejections,
        bye=values["bye"],
        config=ConfigReport.from_map(optional_map(m, "config")),
        plugins={str(k): PluginReport.from_map(v) for k, v in optional_map(m, "plugins").items()},
        breaker=BreakerReport.from_map(optional_map(m, "breaker")),
        outputs={str(k): OutputReport.from_map(v) for k, v in optional_map(m, "outputs").items()},
        storage=storage_from_map(m["storage"]) if "storage" in m else None,
        clock=ClockReport.from_map(m["clock"]) if "clock" in m else ClockReport(),
    )


def plugin_map(hb: Heartbeat | None, name: str) -> dict[str, Any]:
    """One plugin of a heartbeat as its flat map, as the views show it ({} if not running)."""
    if hb is None or name not in hb.plugins:
        return {}
    return hb.plugins[name].to_map()
