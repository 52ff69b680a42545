"""The controller's pure read helpers: the fleet summary and the merge of query shares."""

from __future__ import annotations

from typing import Any

from hidsd.controller.queries import merge_query
from hidsd.controller.views import fleet_summary


def agent(host: str, **kw: Any) -> dict[str, Any]:
    return {"host": host, "liveness": "online", "mode": "running", "converged": True,
            "breaker": {"state": "normal"}, "storage": {"status": "ok", "path": "/d", "error": ""},
            "clock_skew_s": 0.01, **kw}  # fmt: skip


def test_fleet_summary_names_what_an_operator_must_look_at() -> None:
    agents = [
        agent("a"),
        agent("b", mode="stopped", held=True, converged=False),
        agent("c", breaker={"state": "tripped", "reason": "memory", "denylist": {"drill": {}}}),
        agent("d", storage={"status": "full", "path": "/var/lib/hidsd", "error": "ENOSPC"}),
        agent("e", clock_skew_s=-600.2),
        agent("f", liveness="offline", storage={"status": "full", "path": "/x", "error": ""}),
    ]
    s = fleet_summary(agents, {"/k": 3})
    assert (s["agents"], s["online"], s["offline"], s["offline_hosts"]) == (6, 5, 1, ["f"])
    assert s["by_mode"] == {"running": 4, "stopped": 1} and s["held"] == ["b"]
    assert s["not_converged"] == ["b"]
    assert s["breaker_not_normal"] == {"c": {"state": "tripped", "reason": "memory",
                                             "denylist": ["drill"]}}  # fmt: skip
    assert s["storage_not_ok"] == {"d": {"status": "full", "path": "/var/lib/hidsd",
                                         "error": "ENOSPC"}}  # offline f not counted  # fmt: skip
    assert s["by_storage"] == {"ok": 4, "full": 1}
    assert s["clock_skewed"] == {"e": -600.2}
    assert s["store_ok"] and s["desired"] == {"/k": 3}
    assert fleet_summary([], None)["store_ok"] is False


def test_merge_query_accounts_for_every_host() -> None:
    share_a = {"evaluated": {"h1": 990.0, "h2": 100.0}, "controller": "c1",
               "matches": {"h1": [{"package": "openssl"}]}, "counters": {"ranges": 1}}  # fmt: skip
    share_b = {"evaluated": {"h3": 995.0, "h4": 995.0}, "controller": "c2", "matches": {},
               "uncomparable": {"h4": [["openssl", "1.x"]]}}  # fmt: skip
    liveness = {"h1": "online", "h2": "online", "h3": "offline", "h4": "online", "h5": "online"}
    res = merge_query({"m1": share_a, "m2": share_b}, {"m1": "self", "m2": "peer"}, liveness,
                      max_age=600.0, started=0.0, now=1000.0)  # fmt: skip
    assert [r["host"] for r in res["matched"]] == ["h1"]
    assert [r["host"] for r in res["clean"]] == ["h3"]  # offline: answered from its inventory
    why = {r["host"]: r["reason"] for r in res["no_answer"]}
    assert "over max age" in why["h2"] and "cannot compare" in why["h4"]
    assert why["h5"] == "no inventory reported"
    assert res["counts"] == {"hosts": 5, "answered": 2, "matched": 1, "clean": 1,
                             "offline_answered": 1, "no_answer": 3}  # fmt: skip
    assert not res["complete"] and res["counters"] == {"ranges": 1}
    assert {s["controller"] for s in res["shards"]} == {"c1", "c2"}
