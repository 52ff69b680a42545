"""Pure parts of the controller cluster: who owns a host, and forwarded heartbeats."""

from __future__ import annotations

from collections import Counter

from hidsd.controller.cluster import owner
from hidsd.controller.presence import Liveness, Presence
from hidsd.wire.commands import RunMode
from hidsd.wire.heartbeat import Heartbeat, encode_heartbeat
from hidsd.wire.names import Scope
from hidsd.wire.sync import HeartbeatMeta


def hb(host: str, seq: int, sent_at: float, bye: bool = False) -> Heartbeat:
    return Heartbeat(host=host, version="t", groups=("web",), mode=RunMode.RUNNING,
                     applied_rev=seq, held=False, interval_s=1.0, seq=seq, sent_at=sent_at,
                     uptime_s=1.0, cpu_pct=0.0, rss_bytes=1, bye=bye)  # fmt: skip


def test_owner_is_deterministic_balanced_and_stable() -> None:
    hosts = [f"host-{i}" for i in range(3000)]
    three = ["a", "b", "c"]
    assign = {h: owner(h, three) for h in hosts}
    assert assign == {h: owner(h, list(reversed(three))) for h in hosts}  # order-free
    counts = Counter(assign.values())
    assert all(800 < n < 1200 for n in counts.values()), counts
    # a member leaves: only its hosts move, spread over the others
    two = ["a", "c"]
    moved = [h for h in hosts if owner(h, two) != assign[h]]
    assert moved and all(assign[h] == "b" for h in moved)


def test_forwarded_heartbeat_updates_presence_and_decodes_lazily() -> None:
    p = Presence()
    first = hb("h1", 1, 100.0)
    p.on_forwarded(HeartbeatMeta.of(first), encode_heartbeat(first), now=1.0)
    rec = p.agents["h1"]
    assert rec.liveness is Liveness.ONLINE and rec.raw is not None and rec.decoded is None
    assert p.expected(Scope.GROUP, "web")["online"] == ["h1"]  # from the meta, no decode
    assert rec.heartbeat is not None and rec.heartbeat.applied_rev == 1 and rec.raw is None
    # an older one forwarded late changes nothing; a newer local one wins
    old = hb("h1", 0, 99.0)
    p.on_forwarded(HeartbeatMeta.of(old), encode_heartbeat(old), now=2.0)
    assert rec.heartbeat.applied_rev == 1 and rec.last_seen == 1.0
    p.on_heartbeat(hb("h1", 2, 101.0), now=3.0)
    assert rec.heartbeat is not None and rec.heartbeat.applied_rev == 2
    bye = hb("h1", 3, 102.0, bye=True)
    p.on_forwarded(HeartbeatMeta.of(bye), encode_heartbeat(bye), now=4.0)
    assert rec.liveness is Liveness.OFFLINE and rec.reason == "shut down"
    # a forwarded liveness-only update (nothing shown changed) keeps the body we hold
    again = hb("h1", 4, 103.0)
    p.on_forwarded(HeartbeatMeta.of(again), None, now=4.5)
    assert rec.liveness is Liveness.ONLINE and rec.meta is not None and rec.meta.seq == 4
    assert rec.heartbeat is not None and rec.heartbeat.seq == 3
    # the heartbeat timeout works from forwarded ones too
    p.on_forwarded(HeartbeatMeta.of(hb("h2", 1, 100.0)), encode_heartbeat(hb("h2", 1, 100.0)), 5.0)
    assert p.sweep(now=5.5) == [] and p.sweep(now=9.0) == ["h1", "h2"]
