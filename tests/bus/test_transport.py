"""The NATS transport against a real nats-server: connect failure, failover pacing, close."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from hidsd.base.errors import BusUnavailable, NoResponse
from hidsd.bus.transport import Bus, BusOptions, StreamSpec, backoff_delay
from hidsd.dev.devstack import NatsServer


def test_backoff_is_jittered_and_capped() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(a, 0.2, 5.0, rng) for a in range(12)]
    assert all(0 < d <= 5.0 for d in delays)
    assert delays[0] <= 0.4 and delays[-1] >= 2.5  # grows to the cap, never past it
    assert len({round(backoff_delay(3, 0.2, 5.0, rng), 6) for _ in range(20)}) > 10


async def test_connect_gives_up_after_bounded_attempts() -> None:
    bus = Bus(BusOptions(servers=("nats://127.0.0.1:1", "nats://127.0.0.1:2"), name="t",
                         reconnect_base_s=0.01, reconnect_max_s=0.05))  # fmt: skip
    with pytest.raises(BusUnavailable, match="no NATS server reachable"):
        await bus.connect(attempts=2)


async def test_request_without_responders_is_no_response(tmp_path: Path) -> None:
    n = NatsServer(tmp_path).start()
    bus = Bus(BusOptions(servers=(n.url,), name="t"))
    try:
        await bus.connect(attempts=1)
        with pytest.raises(NoResponse):
            await bus.request("nobody.home", b"", 0.5)
    finally:
        await bus.close()
        n.stop()


async def test_close_after_server_vanished_does_not_raise(tmp_path: Path) -> None:
    n = NatsServer(tmp_path).start()
    bus = Bus(BusOptions(servers=(n.url,), name="t"))
    await bus.connect(attempts=1)
    n.stop()
    await bus.publish("x.y", b"buffered while the server is gone")
    await bus.close(timeout=0.5)
    assert not bus.connected


async def test_stream_is_created_then_updated_and_pulled(tmp_path: Path) -> None:
    n = NatsServer(tmp_path).start()
    bus = Bus(BusOptions(servers=(n.url,), name="t"))
    try:
        await bus.connect(attempts=1)
        spec = StreamSpec("S_T", ("s.>",), max_bytes=1 << 20, max_msgs_per_subject=1)
        await bus.js_ensure_stream(spec)
        await bus.js_ensure_stream(replace(spec, max_bytes=2 << 20))  # exists: updated
        info = await bus.client.jetstream().stream_info("S_T")
        assert info.config.max_bytes == 2 << 20 and info.config.max_msgs_per_subject == 1
        consumer = await bus.js_pull_subscribe("s.>", "d1", "S_T")
        assert await consumer.fetch(10, 0.2) == []  # nothing yet: an empty batch, no error
        for i in range(3):
            await bus.js_publish("s.a", f"{i}".encode(), {})
        await bus.js_publish("s.b", b"b", {})
        msgs = await consumer.fetch(10, 2.0)
        assert sorted(m.data for m in msgs) == [b"2", b"b"]  # one kept per subject
        for m in msgs:
            await m.ack()
    finally:
        await bus.close()
        n.stop()
