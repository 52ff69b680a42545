"""Pure helpers of the controller's read views."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hidsd.controller.presence import CLOCK_SKEW_WARN_S
from hidsd.wire.names import KeyLayout


def host_desired_revision(
    keys: KeyLayout, revisions: dict[str, int], host: str, groups: tuple[str, ...]
) -> int:
    """The newest desired-state revision that governs one host (0 if none is written)."""
    return max((revisions.get(k, 0) for k in keys.applicable(host, groups)), default=0)


def fleet_summary(agents: list[dict[str, Any]], revisions: dict[str, int] | None) -> dict[str, Any]:
    """`fleet status`: counts by liveness, run mode, breaker and storage state, and the hosts an
    operator must look at (held, not converged, breaker not normal, storage not ok, skewed)."""
    online = [a for a in agents if a["liveness"] == "online"]
    by_mode = Counter(a.get("mode", "unknown") for a in online)
    by_breaker = Counter(a.get("breaker", {}).get("state", "unknown") for a in online)
    breaker_not_normal = {
        a["host"]: {
            "state": a["breaker"].get("state"),
            "reason": a["breaker"].get("reason"),
            "denylist": sorted(a["breaker"].get("denylist", {})),
        }
        for a in online
        if a.get("breaker", {}).get("state", "normal") != "normal"
    }
    lagging = sorted(a["host"] for a in agents if a["converged"] is False)
    storage_not_ok = {
        a["host"]: {k: a["storage"][k] for k in ("status", "path", "error")}
        for a in online
        if (a.get("storage") or {}).get("status", "ok") != "ok"
    }
    clock_skewed = {
        a["host"]: a["clock_skew_s"]
        for a in online
        if a.get("clock_skew_s") is not None and abs(a["clock_skew_s"]) > CLOCK_SKEW_WARN_S
    }
    return {
        "agents": len(agents),
        "online": len(online),
        "offline": len(agents) - len(online),
        "offline_hosts": sorted(a["host"] for a in agents if a["liveness"] == "offline"),
        "by_mode": dict(by_mode),
        "by_breaker": dict(by_breaker),
        "breaker_not_normal": breaker_not_normal,
        "by_storage": dict(
            Counter((a.get("storage") or {}).get("status", "unknown") for a in online)
        ),
        "storage_not_ok": storage_not_ok,
        "clock_skewed": clock_skewed,
        "held": sorted(a["host"] for a in agents if a.get("held")),
        "not_converged": lagging,
        "store_ok": revisions is not None,
        "desired": revisions or {},
    }
