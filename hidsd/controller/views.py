"""Pure helpers of the controller's read views."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hidsd.base.storage import StorageStatus
from hidsd.controller.presence import CLOCK_SKEW_WARN_S
from hidsd.wire.names import KeyLayout
from hidsd.wire.replies import AgentRow, BreakerSummary, FleetStatus, Liveness, StorageSummary


def host_desired_revision(
    keys: KeyLayout, revisions: dict[str, int], host: str, groups: tuple[str, ...]
) -> int:
    """The newest desired-state revision that governs one host (0 if none is written)."""
    return max((revisions.get(k, 0) for k in keys.applicable(host, groups)), default=0)


def fleet_summary(agents: Sequence[AgentRow], revisions: dict[str, int] | None) -> FleetStatus:
    """`fleet status`: counts by liveness, run mode, breaker and storage state, and the hosts an
    operator must look at (held, not converged, breaker not normal, storage not ok, skewed)."""
    online = [a for a in agents if a.liveness is Liveness.ONLINE]
    breakers = [(a.host, a.report.breaker) for a in online
                if a.report is not None and a.report.breaker is not None]  # fmt: skip
    storages = [(a.host, a.report.storage) for a in online
                if a.report is not None and a.report.storage is not None]  # fmt: skip
    by_mode = Counter(a.report.mode.value if a.report else "unknown" for a in online)
    by_breaker = Counter(a.report.breaker.state if a.report and a.report.breaker else "unknown"
                         for a in online)  # fmt: skip
    by_storage = Counter(
        a.report.storage.status.value if a.report and a.report.storage else "unknown"
        for a in online
    )
    return FleetStatus(
        agents=len(agents),
        online=len(online),
        offline=len(agents) - len(online),
        offline_hosts=tuple(sorted(a.host for a in agents if a.liveness is Liveness.OFFLINE)),
        by_mode=dict(by_mode),
        by_breaker=dict(by_breaker),
        breaker_not_normal={
            h: BreakerSummary(b.state, b.reason, tuple(sorted(b.denylist)))
            for h, b in breakers
            if b.state != "normal"
        },
        by_storage=dict(by_storage),
        storage_not_ok={
            h: StorageSummary(st.status, st.path, st.error)
            for h, st in storages
            if st.status is not StorageStatus.OK
        },
        clock_skewed={
            a.host: a.clock_skew_s
            for a in online
            if a.clock_skew_s is not None and abs(a.clock_skew_s) > CLOCK_SKEW_WARN_S
        },
        held=tuple(sorted(a.host for a in agents if a.report is not None and a.report.held)),
        not_converged=tuple(sorted(a.host for a in agents if a.converged is False)),
        store_ok=revisions is not None,
        desired=revisions or {},
    )
