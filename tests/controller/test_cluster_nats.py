"""The controller cluster on a real NATS: forwarding, membership, and a split request whose
member dies mid-share (its share redone by the coordinator). In-process, deterministic."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import msgpack
from nats.aio.msg import Msg
from support import Stack, wait_for

from hidsd.bus.transport import Bus, BusOptions
from hidsd.controller.cluster import Cluster
from hidsd.wire.commands import Ack, AckStatus, RunMode, encode_ack
from hidsd.wire.heartbeat import Heartbeat, HostFacts, encode_heartbeat
from hidsd.wire.names import Subjects
from hidsd.wire.sync import HeartbeatMeta


async def member(stack: Stack, subjects: Subjects, name: str, delay: float = 0.0) -> Any:
    bus = Bus(BusOptions(servers=(stack.nats.url,), name=f"test-{name}"))
    await bus.connect()
    got: dict[str, list[Any]] = {"hb": [], "acks": [], "skew": []}

    def on_hb(m: HeartbeatMeta, raw: bytes | None, skew: float | None) -> None:
        got["hb"].append((m, raw))
        got["skew"].append(skew)

    c = Cluster(name, subjects, bus, on_hb, got["acks"].append, flush_s=0.05, announce_s=0.2)

    async def share(params: dict[str, Any]) -> Any:
        await asyncio.sleep(delay)
        return {"by": name, "shard": params["shard"], "members": params["members"]}

    async def on_peer(msg: Msg) -> None:
        result = await share(msgpack.unpackb(msg.data, raw=False))
        await bus.publish(msg.reply, msgpack.packb({"ok": True, "result": result}))

    await bus.subscribe(subjects.ctl_sync(), c.on_sync)
    await bus.subscribe(subjects.ctl_peer(c.id, "*"), on_peer)
    return c, bus, got, share


async def test_forwarding_membership_and_a_share_redone(stack: Stack) -> None:
    subjects = Subjects(f"cl{secrets.token_hex(3)}")
    a, abus, agot, ashare = await member(stack, subjects, "a")
    b, bbus, bgot, _ = await member(stack, subjects, "b")
    c, cbus, _, _ = await member(stack, subjects, "c", delay=5.0)  # a slow share
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(x.run()) for x in (a, b, c)]
        await wait_for(lambda: len(a.alive()) == len(b.alive()) == len(c.alive()) == 3, 5)

        hb = Heartbeat(host="h1", version="t", groups=("g",), mode=RunMode.RUNNING,
                       applied_rev=1, held=False, interval_s=1.0, seq=1, sent_at=1.0,
                       uptime_s=1.0, cpu_pct=0.0, rss_bytes=1)  # fmt: skip
        raw = encode_heartbeat(hb)
        a.forward_heartbeat(hb, raw)
        ack = encode_ack(Ack("cmd-1", "h1", AckStatus.APPLIED, 5, "x"))
        a.forward_ack(ack)
        await wait_for(lambda: bgot["hb"] and bgot["acks"], 5, "forwarded to b")
        assert bgot["hb"] == [(HeartbeatMeta.of(hb), raw)] and bgot["acks"] == [ack]
        assert agot["hb"] == []  # not to itself
        # the next one changes nothing an operator sees: liveness only, no body
        from dataclasses import replace

        hb2 = replace(hb, seq=2, sent_at=2.0, cpu_pct=5.0)
        a.forward_heartbeat(hb2, encode_heartbeat(hb2), skew_s=-600.5)
        await wait_for(lambda: len(bgot["hb"]) == 2, 5)
        assert bgot["hb"][1] == (HeartbeatMeta.of(hb2), None)
        assert bgot["skew"][:2] == [None, -600.5]  # the receiver's measure of the agent clock
        hb3 = replace(hb, seq=3, sent_at=3.0, mode=RunMode.STOPPED)  # a change: body again
        a.forward_heartbeat(hb3, encode_heartbeat(hb3))
        await wait_for(lambda: len(bgot["hb"]) == 3, 5)
        assert bgot["hb"][2] == (HeartbeatMeta.of(hb3), encode_heartbeat(hb3))

        # c dies with its share in flight: a redoes c's share itself; b answers its own
        scatter = asyncio.ensure_future(a.scatter("query", {"q": 1}, ashare, timeout_s=1.0))
        await asyncio.sleep(0.3)
        await cbus.close(0.1)
        results, how = await scatter
        assert set(results) == {a.id, b.id, c.id}
        assert how[a.id] == "local" and how[b.id] == "answered"
        assert how[c.id].startswith("redone here")
        assert results[c.id] == {"by": "a", "shard": c.id, "members": sorted([a.id, b.id, c.id])}
        assert results[b.id]["by"] == "b"
        # and c drops out of the membership once its announcements stop
        a.member_timeout_s = 0.5
        await wait_for(lambda: c.id not in a.alive(), 5, "c gone")
        for t in tasks:
            t.cancel()
    await abus.close(0.1)
    await bbus.close(0.1)


async def test_a_burst_bigger_than_a_nats_message_arrives_in_several_batches(
    stack: Stack,
) -> None:
    """Handlers can add megabytes between two flushes: the flush splits them (a single batch
    over max_payload would be lost whole)."""
    subjects = Subjects(f"cl{secrets.token_hex(3)}")
    a, abus, _, _ = await member(stack, subjects, "a")
    _b, bbus, bgot, _ = await member(stack, subjects, "b")
    for i in range(2000):  # ~3 MB of bodies, all new hosts
        hb = Heartbeat(host=f"h{i}", version="t", groups=(), mode=RunMode.RUNNING,
                       applied_rev=1, held=False, interval_s=1.0, seq=1, sent_at=1.0,
                       uptime_s=1.0, cpu_pct=0.0, rss_bytes=1,
                       facts=HostFacts(hostname="x" * 1400))  # fmt: skip
        a.forward_heartbeat(hb, encode_heartbeat(hb))
    await a.flush()
    await wait_for(lambda: len(bgot["hb"]) == 2000, 10, "every forwarded heartbeat")
    assert a.counters["sync_sent"] >= 6 and a.counters.get("sync_lost_items", 0) == 0
    await abus.close(0.1)
    await bbus.close(0.1)
