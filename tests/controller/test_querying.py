"""hidsd.controller.querying: a query split by host over the members and merged; each share
evaluates only the hosts its member owns. (A one-member cluster here: the split over NATS is
tests/controller/test_cluster_nats.py and test_scaleout_e2e.py.)"""

from __future__ import annotations

import time

import pytest

from hidsd.base.errors import ProtocolError
from hidsd.bus.transport import Bus, BusOptions
from hidsd.controller.cluster import Cluster, owner
from hidsd.controller.inventory import InventoryIndex
from hidsd.controller.presence import Presence
from hidsd.controller.querying import FleetQuery
from hidsd.wire.commands import RunMode
from hidsd.wire.fleetquery import QueryRequest, range_to_wire
from hidsd.wire.heartbeat import Heartbeat
from hidsd.wire.names import Subjects
from hidsd.wire.ranges import parse_vers
from hidsd.wire.replies import Liveness

RANGE = parse_vers("vers:deb/<1.1.1n-0+deb11u5", "openssl")


def fleet_query(now: float) -> FleetQuery:
    index = InventoryIndex()
    index.update("h1", [("deb", "openssl", "1.1.1n-0+deb11u4")], now - 10)
    index.update("h2", [("deb", "openssl", "1.1.1n-0+deb11u5")], now - 10)
    index.update("h3", [("deb", "openssl", "1.1.1n-0+deb11u4")], now - 99_999)  # stale
    presence = Presence()
    for host in ("h1", "h2", "h3", "h4"):
        presence.on_heartbeat(Heartbeat(host=host, version="t", groups=(), mode=RunMode.RUNNING,
                                        applied_rev=0, held=False, interval_s=10.0, seq=1,
                                        sent_at=now, uptime_s=1.0, cpu_pct=0.0, rss_bytes=1),
                              now)  # fmt: skip
    # never connected: a cluster of one does its only share itself
    bus = Bus(BusOptions(servers=("nats://127.0.0.1:1",), name="t"))
    cluster = Cluster("c1", Subjects("t"), bus, lambda *a: None, lambda raw: None)
    return FleetQuery("c1", index, presence, cluster)


async def test_query_accounts_for_every_host() -> None:
    fq = fleet_query(time.time())
    res = await fq.query(QueryRequest((RANGE,), 600.0).to_params())
    assert [(r.host, r.packages[0].version if r.packages else None) for r in res.matched] == [
        ("h1", "1.1.1n-0+deb11u4")
    ]
    assert [r.host for r in res.clean] == ["h2"]
    why = {r.host: r.reason for r in res.no_answer}
    assert "over max age" in why["h3"] and why["h4"] == "no inventory reported"
    assert all(r.liveness is Liveness.ONLINE for r in res.no_answer)
    assert [(s.controller, s.hosts, s.how) for s in res.shards] == [("c1", 3, "local")]
    default = await fq.query({"ranges": [range_to_wire(RANGE)]})  # the controller's max age
    assert [r.host for r in default.matched] == ["h1"] and "h3" in {
        r.host for r in default.no_answer
    }


async def test_a_share_evaluates_only_the_hosts_its_member_owns() -> None:
    fq = fleet_query(time.time())
    members = ["m1", "m2"]
    shares = [await fq.share({"ranges": [range_to_wire(RANGE)], "members": members,
                              "shard": m}) for m in members]  # fmt: skip
    assert sorted(h for s in shares for h in s.evaluated) == ["h1", "h2", "h3"]
    for m, s in zip(members, shares, strict=True):
        assert all(owner(h, members) == m for h in s.evaluated) and s.controller == "c1"


async def test_a_bad_query_is_refused_before_any_peer_sees_it() -> None:
    fq = fleet_query(0.0)
    with pytest.raises(ProtocolError, match="query: range 'openssl' must start with 'vers:'"):
        await fq.query({"ranges": [{"spec": "openssl", "package": "openssl"}]})
    with pytest.raises(ProtocolError, match="query share: missing field 'shard'"):
        await fq.share({"ranges": [], "members": ["m1"]})
