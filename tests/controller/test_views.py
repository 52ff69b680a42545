"""The controller's pure read helpers: the fleet summary and the merge of query shares."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hidsd.base.storage import StorageReport, StorageStatus
from hidsd.controller.queries import merge_query
from hidsd.controller.views import fleet_summary
from hidsd.wire.commands import RunMode
from hidsd.wire.fleetquery import PackageMatch, QueryShare
from hidsd.wire.heartbeat import BreakerReport, DenylistEntry, Heartbeat
from hidsd.wire.replies import AgentReport, AgentRow, BreakerSummary, Liveness, StorageSummary

BEAT = Heartbeat(host="x", version="t", groups=(), mode=RunMode.RUNNING, applied_rev=1,
                 held=False, interval_s=1.0, seq=1, sent_at=1.0, uptime_s=1.0, cpu_pct=0.0,
                 rss_bytes=1, breaker=BreakerReport("normal", 1.0),
                 storage=StorageReport(StorageStatus.OK, "/d"))  # fmt: skip


def agent(
    host: str, liveness: Liveness = Liveness.ONLINE, converged: bool = True,
    skew: float = 0.01, **beat: Any,
) -> AgentRow:  # fmt: skip
    report = AgentReport.of(replace(BEAT, host=host, **beat))
    return AgentRow(host, liveness, "", 1.0, 0.5, 1.0, skew, report, 1, converged)


def test_fleet_summary_names_what_an_operator_must_look_at() -> None:
    deny = {"drill": DenylistEntry(5.0, 5, "x")}
    agents = [
        agent("a"),
        agent("b", mode=RunMode.STOPPED, held=True, converged=False),
        agent("c", breaker=BreakerReport("tripped", 1.0, reason="memory", denylist=deny)),
        agent("d", storage=StorageReport(StorageStatus.FULL, "/var/lib/hidsd", "ENOSPC")),
        agent("e", skew=-600.2),
        agent("f", Liveness.OFFLINE, storage=StorageReport(StorageStatus.FULL, "/x")),
        replace(agent("g"), report=None, converged=None, desired_rev=None),  # no heartbeat yet
    ]
    s = fleet_summary(agents, {"/k": 3})
    assert (s.agents, s.online, s.offline, s.offline_hosts) == (7, 6, 1, ("f",))
    assert s.by_mode == {"running": 4, "stopped": 1, "unknown": 1} and s.held == ("b",)
    assert s.not_converged == ("b",)
    assert s.breaker_not_normal == {"c": BreakerSummary("tripped", "memory", ("drill",))}
    assert s.storage_not_ok == {  # offline f not counted
        "d": StorageSummary(StorageStatus.FULL, "/var/lib/hidsd", "ENOSPC")
    }
    assert s.by_storage == {"ok": 4, "full": 1, "unknown": 1}
    assert s.by_breaker == {"normal": 4, "tripped": 1, "unknown": 1}
    assert s.clock_skewed == {"e": -600.2}
    assert s.store_ok and s.desired == {"/k": 3}
    assert s.to_wire()["breaker_not_normal"] == {
        "c": {"state": "tripped", "reason": "memory", "denylist": ["drill"]}
    }
    assert fleet_summary([], None).store_ok is False


def share(controller: str, evaluated: dict[str, float | None], **kw: Any) -> QueryShare:
    values: dict[str, Any] = {"uncomparable": {}, "matches": {}, "counters": {}, **kw}
    return QueryShare(controller=controller, evaluated=evaluated, **values)


def test_merge_query_accounts_for_every_host() -> None:
    hit = PackageMatch("deb", "openssl", "1.1.1n-0", "vers:deb/<1.1.1n-1", "cli")
    share_a = share("c1", {"h1": 990.0, "h2": 100.0}, matches={"h1": (hit,)},
                    counters={"ranges": 1})  # fmt: skip
    share_b = share("c2", {"h3": 995.0, "h4": 995.0}, uncomparable={"h4": (("openssl", "1.x"),)})
    on, off = Liveness.ONLINE, Liveness.OFFLINE
    liveness = {"h1": on, "h2": on, "h3": off, "h4": on, "h5": on}
    res = merge_query({"m1": share_a, "m2": share_b}, {"m1": "self", "m2": "peer"}, liveness,
                      max_age=600.0, started=0.0, now=1000.0)  # fmt: skip
    assert [r.host for r in res.matched] == ["h1"] and res.matched[0].packages == (hit,)
    assert [r.host for r in res.clean] == ["h3"]  # offline: answered from its inventory
    why = {r.host: r.reason for r in res.no_answer}
    assert "over max age" in why["h2"] and "cannot compare" in why["h4"]
    assert why["h5"] == "no inventory reported"
    assert res.counts.to_wire() == {"hosts": 5, "answered": 2, "matched": 1, "clean": 1,
                                    "offline_answered": 1, "no_answer": 3}  # fmt: skip
    assert not res.complete and res.counters == {"ranges": 1}
    assert {s.controller for s in res.shards} == {"c1", "c2"}
    wire = res.to_wire()
    assert wire["clean"] == [{"host": "h3", "liveness": "offline", "inventory_age_s": 5.0}]
    assert wire["no_answer"][2] == {"host": "h5", "liveness": "online",
                                    "reason": "no inventory reported"}  # fmt: skip
