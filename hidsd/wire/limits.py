"""The typed limits behind the dynamic config's `[telemetry]` and `[breaker]` tables. Pure.

These dataclasses are the one source of their defaults: `dynconfig.DEFAULTS` is derived from
them, and the runtime (the telemetry pipeline, the circuit breaker, the cgroups) builds its
limits from them. Values are checked by the schema in `dynconfig`, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


class OnTrip(StrEnum):
    STOP_PLUGINS = "stop_plugins"
    EXIT = "exit"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The circuit breaker's thresholds (the `[breaker]` table but the kernel limits)."""

    enabled: bool = True
    interval_s: float = 2.0
    window_s: float = 12.0
    grace_s: float = 60.0
    #: the agent plus its plugins, in percent of one core
    cpu_throttle_pct: float = 5.0
    cpu_shed_pct: float = 9.0
    cpu_trip_pct: float = 50.0
    mem_throttle_mb: float = 300.0
    mem_shed_mb: float = 400.0
    mem_trip_mb: float = 500.0
    #: records per second one plugin writes to the agent
    flood_records_per_s: float = 20_000.0
    host_cpu_pressure_pct: float = 60.0
    host_mem_available_min_pct: float = 5.0
    throttle_rate_factor: float = 0.25
    throttle_nice: int = 10
    cooldown_s: float = 30.0
    cooldown_max_s: float = 600.0
    denylist_s: float = 3600.0
    on_trip: OnTrip = OnTrip.STOP_PLUGINS

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BreakerConfig:
        """From a validated `[breaker]` table; keys that are not thresholds are ignored."""
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in names}
        if "on_trip" in kw:
            kw["on_trip"] = OnTrip(kw["on_trip"])
        if "throttle_nice" in kw:
            kw["throttle_nice"] = int(kw["throttle_nice"])
        return cls(**kw)


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """Kernel-enforced caps (the rest of the `[breaker]` table); 0 means none."""

    #: hard cap for all plugins together (<root>/plugins), percent of one core
    cpu_quota_pct: float = 10.0
    #: hard cap for agent + plugins (<root>); swap included, so it really caps
    memory_max_mb: int = 640
    #: v2 memory.high on <root> (reclaim and slow down above it); v1 memory.soft_limit_in_bytes
    memory_high_mb: int = 512
    #: per-plugin hard cap (<root>/plugins/<name>): the kernel OOM-kills the plugin, not the agent
    plugin_memory_max_mb: int = 256

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CgroupLimits:
        """From a validated (merged) `[breaker]` table, which holds every limit."""
        return cls(
            cpu_quota_pct=float(d["cpu_quota_pct"]),
            memory_max_mb=int(d["memory_max_mb"]),
            memory_high_mb=int(d["memory_high_mb"]),
            plugin_memory_max_mb=int(d["plugin_memory_max_mb"]),
        )


@dataclass
class PipelineLimits:
    """One plugin's telemetry limits; the `[telemetry]` table sets the fleet-wide ones."""

    #: whole numbers: the schema types the fleet-wide rate and burst as integers, and the
    #: config fingerprint hashes the defaults as they are written here
    rate_per_s: float = 1000
    burst: float = 2000
    batch_max_records: int = 500
    batch_max_ms: int = 200
    #: below NATS's max_payload (1 MiB by default) with room for headers
    batch_max_bytes: int = 768 << 10
    queue_max_records: int = 10_000
    policy: str = "block"  # or "drop"
    spool_max_bytes: int = 64 << 20
