"""The telemetry pipeline in-process: byte-capped batches, unpublishable batches, nothing lost
on stop, and a cancellation that a publish swallowed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hidsd.base.errors import NotPublishable
from hidsd.plugins.spool import Spool
from hidsd.plugins.telemetry import Pipeline
from hidsd.wire import frames
from hidsd.wire.limits import PipelineLimits


def _frame(n: int, size: int = 100) -> bytes:
    return frames.frame(1, n.to_bytes(4, "big") + b"x" * (size - 4), 0)


def _numbers(body: bytes) -> list[int]:
    return [int.from_bytes(p[:4], "big") for _, p in frames.iter_frames(body)]


def _pipeline(tmp: Path, publish: object, **limits: object) -> Pipeline:
    lim = PipelineLimits(rate_per_s=1e9, burst=1e9, batch_max_ms=20, **limits)  # type: ignore[arg-type]
    return Pipeline("h", "p", "s", publish, Spool(tmp / "spool", 1 << 24), lim)  # type: ignore[arg-type]


async def _run_until(p: Pipeline, cond: object, timeout: float = 5.0) -> None:
    task = asyncio.create_task(p.run())
    try:
        async with asyncio.timeout(timeout):
            while not cond():  # type: ignore[operator]
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_batches_are_capped_in_bytes(tmp_path: Path) -> None:
    sent: list[bytes] = []

    async def publish(subject: str, body: bytes, headers: dict[str, str]) -> None:
        sent.append(body)

    p = _pipeline(tmp_path, publish, batch_max_bytes=300_000, batch_max_records=1000)
    for i in range(20):
        await p.offer(_frame(i, 100_000))
    await _run_until(p, lambda: sum(len(_numbers(b)) for b in sent) == 20)
    assert all(len(b) <= 300_000 for b in sent)
    assert [n for b in sent for n in _numbers(b)] == list(range(20))


async def test_unpublishable_batch_is_counted_and_the_rest_flows(tmp_path: Path) -> None:
    sent: list[bytes] = []

    async def publish(subject: str, body: bytes, headers: dict[str, str]) -> None:
        if headers[frames.H_SEQ] == "1":
            raise NotPublishable("too large")
        sent.append(body)

    p = _pipeline(tmp_path, publish, batch_max_records=5)
    for i in range(15):
        await p.offer(_frame(i))
    await _run_until(p, lambda: p.counters["records_out"] == 10)
    assert p.counters["dropped_not_publishable"] == 5
    assert len(p.spool) == 0


async def test_stop_saves_unsent_records_and_the_next_run_sends_them_first(tmp_path: Path) -> None:
    async def down(subject: str, body: bytes, headers: dict[str, str]) -> None:
        await asyncio.sleep(3600)  # a publish that never completes

    p = _pipeline(tmp_path, down, batch_max_records=10)
    for i in range(35):
        await p.offer(_frame(i))
    await _run_until(p, lambda: p.counters["batches"] >= 1, 2.0)
    p.save_unsent()
    assert p.stop_report["saved_to_spool"] == 35 and p.stop_report["dropped_spool_full"] == 0

    sent: list[bytes] = []

    async def up(subject: str, body: bytes, headers: dict[str, str]) -> None:
        sent.append(body)

    q = _pipeline(tmp_path, up)
    await q.offer(_frame(1000))
    await _run_until(q, lambda: sum(len(_numbers(b)) for b in sent) == 36)
    assert [n for b in sent for n in _numbers(b)] == [*range(35), 1000]


async def test_cancel_swallowed_by_publish_still_stops_the_pipeline(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    acks: list[asyncio.Future[None]] = []

    async def publish(subject: str, body: bytes, headers: dict[str, str]) -> None:
        fut: asyncio.Future[None] = loop.create_future()
        acks.append(fut)
        await asyncio.wait_for(fut, 2.0)  # what nats-py's request does

    p = _pipeline(tmp_path, publish)
    task = asyncio.create_task(p.run())
    await p.offer(_frame(1))
    async with asyncio.timeout(2):
        while not acks:
            await asyncio.sleep(0.01)
    acks[0].set_result(None)  # the ack arrives in the same iteration as the cancel
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=3)
    assert done, "pipeline kept running after cancel"
    # the batch was stored: counted out once, and not spooled again by the stop
    p.save_unsent()
    assert p.counters["records_out"] == 1
    assert p.stop_report["saved_to_spool"] == 0 and len(p.spool) == 0


async def test_stop_while_waiting_for_the_bus_keeps_the_frame_that_starts_the_next_batch(
    tmp_path: Path,
) -> None:
    """The batcher closed a batch on its byte cap and holds the frame that did not fit while it
    waits for the publisher (ready batches at their bound): a stop then spools that frame too."""

    async def down(subject: str, body: bytes, headers: dict[str, str]) -> None:
        await asyncio.sleep(3600)

    p = _pipeline(tmp_path, down, batch_max_bytes=250, batch_max_records=100)
    p.max_ready_batches = 1
    for i in range(7):
        await p.offer(_frame(i))
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.3)  # one batch out (its publish hangs), the next one waiting
    task.cancel()
    await asyncio.wait([task])
    assert p.counters["batches"] == 1
    p.save_unsent()
    assert p.counters["frames_in"] == 7
    assert p.stop_report["saved_to_spool"] == 7


async def test_offer_cancelled_while_the_queue_is_full_loses_nothing(tmp_path: Path) -> None:
    """`block`: a reader waiting for queue space when the plugin stops; its frame was counted
    in frames_in, so the stop spools it with the rest."""
    p = _pipeline(tmp_path, None, policy="block", queue_max_records=2)
    for i in range(2):
        await p.offer(_frame(i))
    blocked = asyncio.create_task(p.offer(_frame(2)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    blocked.cancel()
    await asyncio.wait([blocked])
    p.save_unsent()
    assert p.counters["frames_in"] == 3 and p.stop_report["saved_to_spool"] == 3


async def test_latest_publisher_keeps_only_the_newest_and_retries() -> None:
    """A host's package set: publish until acked; a newer one replaces an unsent older one
    (counted as superseded), nothing else is dropped."""
    from hidsd.plugins.telemetry import LatestPublisher

    sent: list[tuple[str, bytes, dict[str, str]]] = []
    fail = [True]

    async def publish(subject: str, body: bytes, headers: dict[str, str]) -> None:
        if fail[0]:
            raise ConnectionError("nats down")
        sent.append((subject, body, headers))

    lp = LatestPublisher("h1", publish, retry_s=0.05)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(lp.run())
        old = frames.frame(120, b"old", 1)
        new = frames.frame(120, b"new", 2)
        lp.offer("p.inv.h1", "inventory", old)
        await asyncio.sleep(0.1)
        assert lp.counters["publish_failures"] >= 1 and lp.stats()["pending"] == 1
        lp.offer("p.inv.h1", "inventory", new)
        fail[0] = False
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.01)
        task.cancel()
    assert [(s, b) for s, b, _ in sent] == [("p.inv.h1", new)]
    assert sent[0][2]["Nats-Msg-Id"].startswith("h1.inventory.")
    assert lp.counters["superseded"] == 1 and lp.stats()["pending"] == 0
