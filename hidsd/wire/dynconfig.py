"""Dynamic agent configuration: the schema, validation and the fleet < group < host merge.

Pure. The same code validates in `hidsctl config set` (before anything is written) and in the
agent (before anything is applied), so an operator sees the error the agent would report.
A config file is TOML with only what it overrides:

    log_level = "debug"
    heartbeat_s = 5.0

    [telemetry]
    rate_per_s = 2000

    [plugins.procmon]
    enabled = false
    params = { scan_interval_s = 2 }
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

from hidsd.base.errors import ConfigError
from hidsd.wire.limits import BreakerConfig, CgroupLimits, PipelineLimits

LOG_LEVELS = ("debug", "info", "warning", "error")
_PLUGIN_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

Check = Callable[[str, Any], Any]


def _num(lo: float, hi: float) -> Check:
    def check(name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{name}: expected a number, got {v!r}", field=name)
        try:
            finite = math.isfinite(v)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise ConfigError(f"{name}: expected a finite number, got {v!r}", field=name)
        if not lo <= v <= hi:
            raise ConfigError(f"{name}: expected {lo} to {hi}, got {v}", field=name)
        return float(v)

    return check


def _int(lo: int, hi: int) -> Check:
    def check(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name}: expected an integer, got {v!r}", field=name)
        if not lo <= v <= hi:
            raise ConfigError(f"{name}: expected {lo} to {hi}, got {v}", field=name)
        return v

    return check


def _level(name: str, v: Any) -> str:
    if not isinstance(v, str) or v.lower() not in LOG_LEVELS:
        raise ConfigError(f"{name}: expected one of {', '.join(LOG_LEVELS)}, got {v!r}", field=name)
    return v.lower()


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name}: expected true or false, got {v!r}", field=name)
    return v


def _table(name: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(f"{name}: expected a table, got {v!r}", field=name)
    return v


TOP: dict[str, Check] = {
    "log_level": _level,
    "heartbeat_s": _num(0.2, 3600),
    "resync_s": _num(1, 86400),
}
TELEMETRY: dict[str, Check] = {
    "rate_per_s": _int(1, 10_000_000),
    "burst": _int(1, 10_000_000),
    "batch_max_records": _int(1, 100_000),
    "batch_max_ms": _int(1, 60_000),
    "spool_max_bytes": _int(0, 1 << 40),
}


def _policy(name: str, v: Any) -> str:
    if v not in ("block", "drop"):
        raise ConfigError(f"{name}: expected 'block' (backpressure) or 'drop', got {v!r}",
                          field=name)  # fmt: skip
    return str(v)


PLUGIN: dict[str, Check] = {
    "enabled": _bool,
    "params": _table,
    "priority": _int(0, 100),
    "rate_per_s": _num(0.1, 10_000_000),
    "burst": _num(1, 10_000_000),
    "policy": _policy,
}


def _on_trip(name: str, v: Any) -> str:
    if v not in ("stop_plugins", "exit"):
        raise ConfigError(f"{name}: expected 'stop_plugins' (keep the control channel) or "
                          f"'exit' (a distinct exit code), got {v!r}", field=name)  # fmt: skip
    return str(v)


BREAKER: dict[str, Check] = {
    "enabled": _bool,
    "interval_s": _num(0.1, 3600),
    "window_s": _num(0.1, 86400),
    "grace_s": _num(0, 86400),
    "cpu_throttle_pct": _num(0.1, 100_000),
    "cpu_shed_pct": _num(0.1, 100_000),
    "cpu_trip_pct": _num(0.1, 100_000),
    "mem_throttle_mb": _num(1, 1 << 30),
    "mem_shed_mb": _num(1, 1 << 30),
    "mem_trip_mb": _num(1, 1 << 30),
    "flood_records_per_s": _num(1, 1e9),
    "host_cpu_pressure_pct": _num(0, 100),
    "host_mem_available_min_pct": _num(0, 100),
    "throttle_rate_factor": _num(0.001, 1),
    "throttle_nice": _int(0, 19),
    "cooldown_s": _num(0, 86400),
    "cooldown_max_s": _num(0, 7 * 86400),
    "denylist_s": _num(0, 30 * 86400),
    "on_trip": _on_trip,
    "cpu_quota_pct": _num(0, 100_000),
    "memory_max_mb": _int(0, 1 << 30),
    "memory_high_mb": _int(0, 1 << 30),
    "plugin_memory_max_mb": _int(0, 1 << 30),
}
_LADDERS = (("cpu_throttle_pct", "cpu_shed_pct", "cpu_trip_pct"),
            ("mem_throttle_mb", "mem_shed_mb", "mem_trip_mb"))  # fmt: skip


def _defaults(keys: Sequence[str], *sources: object) -> dict[str, Any]:
    """The defaults of a table's keys, read off the dataclasses that own them (in order)."""
    out: dict[str, Any] = {}
    for key in keys:
        owner = next((s for s in sources if hasattr(s, key)), None)
        if owner is None:
            raise TypeError(f"no limits dataclass holds a default for {key!r}")
        value = getattr(owner, key)
        out[key] = value.value if isinstance(value, Enum) else value
    return out


#: the effective config when no layer sets anything; the top-level values are the agent's
#: bootstrap defaults (`hidsd.agent.settings.AgentSettings`), which this layer cannot import
DEFAULTS: dict[str, Any] = {
    "log_level": "info",
    "heartbeat_s": 10.0,
    "resync_s": 60.0,
    "telemetry": _defaults(list(TELEMETRY), PipelineLimits()),
    "plugins": {},
    "breaker": _defaults(list(BREAKER), BreakerConfig(), CgroupLimits()),
}


def check_effective(effective: dict[str, Any]) -> None:
    """Rules across fields, checked on the merged config (a layer alone may set one side)."""
    check_breaker(effective["breaker"])


def check_breaker(merged: dict[str, Any], where: str = "breaker") -> None:
    """Throttle <= shed <= trip, cool-downs ordered, memory.high under memory.max."""
    for ladder in _LADDERS:
        values = [merged[k] for k in ladder]
        if values != sorted(values):
            raise ConfigError(
                f"{where}: thresholds must rise: "
                + " <= ".join(f"{k} ({merged[k]:g})" for k in ladder),
                field=f"{where}.{ladder[1]}",
            )
    if merged["cooldown_s"] > merged["cooldown_max_s"]:
        raise ConfigError(f"{where}.cooldown_s: larger than cooldown_max_s",
                          field=f"{where}.cooldown_s")  # fmt: skip
    high, mx = merged["memory_high_mb"], merged["memory_max_mb"]
    if high and mx and high > mx:
        raise ConfigError(f"{where}.memory_high_mb: larger than memory_max_mb ({mx})",
                          field=f"{where}.memory_high_mb")  # fmt: skip


def _unknown(where: str, got: dict[str, Any], known: dict[str, Check] | set[str]) -> None:
    extra = sorted(set(got) - set(known))
    if extra:
        name = f"{where}.{extra[0]}" if where else extra[0]
        raise ConfigError(
            f"{name}: unknown setting; known here: {', '.join(sorted(known))}", field=name
        )


def validate(data: dict[str, Any]) -> dict[str, Any]:
    """Check a parsed config against the schema; returns a normalized copy."""
    _unknown("", data, {*TOP, "telemetry", "plugins", "breaker"})
    out: dict[str, Any] = {}
    for key, check in TOP.items():
        if key in data:
            out[key] = check(key, data[key])
    if "telemetry" in data:
        tel = _table("telemetry", data["telemetry"])
        _unknown("telemetry", tel, TELEMETRY)
        out["telemetry"] = {k: TELEMETRY[k](f"telemetry.{k}", v) for k, v in tel.items()}
    if "breaker" in data:
        br = _table("breaker", data["breaker"])
        _unknown("breaker", br, BREAKER)
        out["breaker"] = {k: BREAKER[k](f"breaker.{k}", v) for k, v in br.items()}
    if "plugins" in data:
        plugins = _table("plugins", data["plugins"])
        out["plugins"] = {}
        for pname, raw in plugins.items():
            where = f"plugins.{pname}"
            if not _PLUGIN_RE.fullmatch(pname):
                raise ConfigError(
                    f"{where}: plugin names are lower-case letters, digits, '-' or '_'",
                    field=where,
                )
            pconf = _table(where, raw)
            _unknown(where, pconf, PLUGIN)
            out["plugins"][pname] = {k: PLUGIN[k](f"{where}.{k}", v) for k, v in pconf.items()}
    return out


def parse(text: str) -> dict[str, Any]:
    """Parse and validate TOML text; ConfigError says which line or field is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", field="toml") from exc
    return validate(data)


def digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def merge(layers: Sequence[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge validated layers over the defaults, later layers winning key by key.

    Returns the effective config and, for every leaf, the layer it came from ("default" if
    none set it). Layer order is the caller's: fleet, then groups, then host.
    """
    effective = copy.deepcopy(DEFAULTS)
    sources: dict[str, str] = {}

    def opaque(path: str) -> bool:
        """A plugin's `params` table is replaced as a whole, not merged key by key."""
        parts = path.split(".")
        return len(parts) == 3 and parts[0] == "plugins" and parts[2] == "params"

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and not opaque(prefix):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            sources[prefix] = "default"

    walk("", DEFAULTS)

    def apply(dst: dict[str, Any], src: dict[str, Any], label: str, path: str) -> None:
        for k, v in src.items():
            p = f"{path}.{k}" if path else k
            if isinstance(v, dict) and not opaque(p) and isinstance(dst.get(k), dict):
                apply(dst[k], v, label, p)
            elif isinstance(v, dict) and not opaque(p):
                dst[k] = {}
                apply(dst[k], v, label, p)
            else:
                dst[k] = copy.deepcopy(v)
                sources[p] = label

    for label, layer in layers:
        apply(effective, layer, label, "")
    return effective, sources


def fingerprint(effective: dict[str, Any]) -> str:
    """A short stable hash of an effective config (what the agent reports it runs)."""
    blob = json.dumps(effective, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
