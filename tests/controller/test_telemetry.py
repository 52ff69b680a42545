"""hidsd.controller.telemetry: per host and plugin sequence accounting, and the consumer against
a real JetStream."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

from support import wait_for

from hidsd.bus.transport import Bus, BusOptions
from hidsd.controller.telemetry import StreamAccount, TelemetryConsumer
from hidsd.dev.devstack import NatsServer
from hidsd.wire import frames
from hidsd.wire.names import Subjects


def test_gaps_repeats_and_a_new_epoch_are_counted() -> None:
    st = StreamAccount("h1", "procmon", epoch=1, next_seq=1)
    st.add(1, 1, 10, 100, 5.0)  # 1..10
    st.add(1, 16, 5, 50, 6.0)  # 11..15 never came
    st.add(1, 12, 2, 20, 7.0)  # a resend
    st.add(2, 1, 3, 30, 8.0)  # the agent's pipeline restarted
    snap = st.snapshot()
    assert (snap.records, snap.batches, snap.bytes) == (20, 4, 200)
    assert (snap.gaps, snap.missing_records, snap.repeats) == (1, 5, 1)
    assert (snap.epoch, snap.next_seq, snap.last_at) == (2, 4, 8.0)


def consumer(bus: Bus, subjects: Subjects) -> TelemetryConsumer:
    return TelemetryConsumer(bus, subjects, Counter(), max_bytes=1 << 20, max_age_s=3600.0)


async def test_bad_headers_are_counted_and_stats_sorted() -> None:
    tel = consumer(Bus(BusOptions(servers=("nats://127.0.0.1:1",), name="t")), Subjects("t"))
    for host in ("h2", "h1"):
        tel.account({frames.H_HOST: host, frames.H_PLUGIN: "p", frames.H_EPOCH: "1",
                     frames.H_SEQ: "1", frames.H_COUNT: "2"}, 10)  # fmt: skip
    tel.account({frames.H_SEQ: "one"}, 10)
    stats = await tel.h_stats({})
    assert [(s.host, s.records) for s in stats.streams] == [("h1", 2), ("h2", 2)]
    assert tel.counters["bad_telemetry"] == 1


async def test_consumes_the_stream_it_creates(tmp_path: Path) -> None:
    n = NatsServer(tmp_path).start()
    bus = Bus(BusOptions(servers=(n.url,), name="t"))
    subjects = Subjects("tel")
    tel = consumer(bus, subjects)
    try:
        await bus.connect(attempts=1)
        task = asyncio.create_task(tel.run())
        await wait_for(lambda: tel.ok, 10, "stream created")
        for seq in (1, 4):
            headers = frames.batch_headers("h1", "procmon", 7, seq, 3)
            await bus.js_publish(subjects.telemetry("h1", "procmon"), b"x" * 10, headers)
        # stored on its own subject, but claiming to be h1's: not counted for h1 (or anyone)
        forged = frames.batch_headers("h1", "procmon", 7, 7, 100)
        await bus.js_publish(subjects.telemetry("evil", "procmon"), b"x" * 10, forged)
        await wait_for(lambda: tel.counters["telemetry_batches"] == 3, 10, "three batches")
        st = tel.accounts["h1/procmon"].snapshot()
        assert (st.records, st.batches, st.gaps, st.next_seq) == (6, 2, 0, 7)
        assert tel.counters["telemetry_subject_mismatch"] == 1
        assert set(tel.accounts) == {"h1/procmon"}
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await bus.close()
        n.stop()
