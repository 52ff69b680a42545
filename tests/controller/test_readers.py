"""hidsd.controller.readers: presence and the ack ledger joined with etcd's desired state and
config pointers (a real etcd); etcd unreachable degrades an answer, never fails it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support import Stack

from hidsd.base.errors import ProtocolError
from hidsd.bus.store import Store
from hidsd.controller.acks import AckLedger
from hidsd.controller.presence import Presence
from hidsd.controller.readers import AgentReaders
from hidsd.wire.commands import Ack, AckStatus, RunMode
from hidsd.wire.configstore import encode_config_pointer
from hidsd.wire.heartbeat import ConfigReport, Heartbeat
from hidsd.wire.names import FLEET_TARGET, Scope
from hidsd.wire.replies import AckSummary, Liveness
from hidsd.wire.rpc import Event

BEAT = Heartbeat(host="h1", version="t", groups=("web",), mode=RunMode.RUNNING, applied_rev=0,
                 held=False, interval_s=10.0, seq=1, sent_at=1.0, uptime_s=1.0, cpu_pct=0.0,
                 rss_bytes=1, config=ConfigReport({"fleet": 2}, "abc", "ok"))  # fmt: skip


def readers(stack: Stack, store: Store) -> AgentReaders:
    p = Presence()
    p.on_heartbeat(BEAT, 1.0)
    p.on_heartbeat(replace(BEAT, host="h2", applied_rev=10**9, groups=()), 1.0)
    ledger = AckLedger()
    ledger.record(Ack("c1", "h1", AckStatus.APPLIED, 5, "ok"))
    events = {"h1": [Event("h1", "breaker", 1.0, {"state": "tripped"})]}
    return AgentReaders(stack.keys, store, p, ledger, events)


async def test_reads_join_presence_with_etcd(stack: Stack) -> None:
    store = await stack.root_store()
    try:
        rev = await store.put(stack.keys.desired(Scope.FLEET, FLEET_TARGET), b"signed")
        await store.put(stack.keys.config_current(Scope.FLEET, FLEET_TARGET),
                        encode_config_pointer(3, "d"))  # fmt: skip
        r = readers(stack, store)
        listed = await r.agents_list({})
        assert listed.store_ok and [a.host for a in listed.agents] == ["h1", "h2"]
        h1, h2 = listed.agents
        assert (h1.desired_rev, h1.converged, h2.converged) == (rev, False, True)
        shown = await r.agents_show({"host": "h1"})
        assert replace(shown.agent, last_seen_ago_s=None) == replace(h1, last_seen_ago_s=None)
        assert shown.events[0].detail == {"state": "tripped"}
        with pytest.raises(ProtocolError, match="unknown agent 'nope'"):
            await r.agents_show({"host": "nope"})
        fleet = await r.fleet_status({})
        assert fleet.not_converged == ("h1",) and fleet.by_mode == {"running": 2}
        cfg = await r.config_status({})
        assert cfg.current == {"fleet": 3}
        assert cfg.agents[0].desired == {"fleet": 3} and cfg.agents[0].converged is False
        expected = await r.expected({"scope": "group", "target": "web"})
        assert (expected.online, expected.offline) == (("h1",), ())
        acks = await r.acks({"cmd_id": "c1"})
        assert acks.acks == {"h1": AckSummary(AckStatus.APPLIED, 5, "ok")}
        with pytest.raises(ProtocolError, match="no acks recorded"):
            await r.acks({"cmd_id": "c2"})
    finally:
        await store.close()


async def test_etcd_unreachable_degrades_the_answers(stack: Stack) -> None:
    store = Store(("127.0.0.1:1",), timeout_s=0.3)
    r = readers(stack, store)
    listed = await r.agents_list({})
    assert not listed.store_ok and listed.agents[0].converged is None
    assert listed.agents[0].liveness is Liveness.ONLINE
    cfg = await r.config_status({})
    assert not cfg.store_ok and cfg.agents[0].desired is None and cfg.agents[0].converged is None
    assert (await r.fleet_status({})).store_ok is False
