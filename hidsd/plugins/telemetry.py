"""The telemetry path of one plugin: bounded queue, token bucket, batcher, publisher.

Frames stay opaque: the agent checks headers and moves bytes. Every loss is counted, never
silent: frames dropped by a full queue (policy `drop`), by the rate limit (policy `drop`), or
because the on-disk spool was full while NATS was unreachable. With policy `block` a full
queue or an empty bucket stops the reader, so the plugin blocks on its pipe (backpressure).

Order and exactly-once per plugin: one publisher per plugin sends one batch at a time and
waits for JetStream's ack. A batch that cannot be published goes to the spool, and newer
batches queue behind the spool (`hidsd.plugins.spool`) until it has drained, oldest first.
Each batch carries a `Nats-Msg-Id` of host.plugin.first_seq, so a batch resent after a lost
ack is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hidsd.base.aio import wait_timeout
from hidsd.base.errors import NotPublishable
from hidsd.plugins.spool import Batch, Spool
from hidsd.wire import frames
from hidsd.wire.heartbeat import OutputReport
from hidsd.wire.limits import PipelineLimits

#: Spool and PipelineLimits are re-exported: the supervisor builds pipelines from them
__all__ = ["PIPELINE_COUNTERS", "Batch", "LatestPublisher", "Pipeline", "PipelineLimits",
           "Publish", "Spool", "TokenBucket"]  # fmt: skip

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]
#: always reported, zero or not
PIPELINE_COUNTERS = ("frames_in", "batches", "records_out", "batches_out", "publish_failures",
                     "spooled_records", "dropped_queue_full", "dropped_rate_limit",
                     "dropped_spool_full", "dropped_not_publishable")  # fmt: skip


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, n: float = 1.0) -> bool:
        self._refill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def wait_s(self, n: float = 1.0) -> float:
        """Seconds until `n` tokens are there."""
        self._refill()
        return max(0.0, (n - self.tokens) / self.rate)


@dataclass
class Pipeline:
    """One plugin's frames from its pipe to the bus."""

    host: str
    plugin: str
    subject: str
    publish: Publish
    spool: Spool
    limits: PipelineLimits = field(default_factory=PipelineLimits)
    next_seq: int = 1
    counters: Counter[str] = field(default_factory=Counter)
    #: sequences restart at 1 with each pipeline; the epoch keeps message ids unique
    epoch: int = field(default_factory=time.time_ns)
    max_ready_batches: int = 64
    #: the circuit breaker's throttle (1.0 = the configured rate)
    rate_factor: float = 1.0

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(self.limits.queue_max_records)
        self._bucket = TokenBucket(self.limits.rate_per_s * self.rate_factor, self.limits.burst)
        self._wake = asyncio.Event()
        self._ready: deque[Batch] = deque()
        #: frames whose `offer` was cancelled while waiting for queue space (counted, not queued)
        self._stranded: list[bytes] = []
        self._space = asyncio.Event()
        self._carry: bytes | None = None
        self._parts: list[bytes] = []
        self.last_error = ""
        self.stop_report: dict[str, int] = {}
        if len(self.spool):
            self._wake.set()  # batches left by an earlier run (or a stop) go out first

    def set_limits(self, limits: PipelineLimits) -> None:
        """Hot reload of rate, burst, batch sizes and policy (the queue bound stays)."""
        self.limits = limits
        self._bucket.rate = limits.rate_per_s * self.rate_factor
        self._bucket.burst = limits.burst

    def set_rate_factor(self, factor: float) -> None:
        """The circuit breaker's throttle: a fraction of the configured rate (1.0 = all)."""
        self.rate_factor = factor
        self._bucket.rate = self.limits.rate_per_s * factor
        self._bucket.tokens = min(self._bucket.tokens, self._bucket.burst * factor)

    async def offer(self, frame: bytes) -> None:
        """From the pipe reader. With `block`, waits when the queue is full (backpressure)."""
        self.counters["frames_in"] += 1
        if self.limits.policy == "drop":
            try:
                self._queue.put_nowait(frame)
            except asyncio.QueueFull:
                self.counters["dropped_queue_full"] += 1
            return
        try:
            await self._queue.put(frame)
        except asyncio.CancelledError:
            # counted in frames_in: a stop must not lose it (save_unsent spools it)
            self._stranded.append(frame)
            raise

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._batcher())
            tg.create_task(self._publisher())

    async def _batcher(self) -> None:
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            else:
                first = await self._queue.get()
            parts: list[bytes] = []
            self._parts = parts  # visible to save_unsent if we are cancelled mid-batch
            size = 0
            deadline = time.monotonic() + self.limits.batch_max_ms / 1000
            frame: bytes | None = first
            carry: bytes | None = None
            while frame is not None:
                if parts and size + len(frame) > self.limits.batch_max_bytes:
                    carry = frame  # starts the next batch
                    break
                self._carry = frame  # kept for save_unsent while the rate limit holds it
                admitted = await self._admit()
                self._carry = None
                if admitted:
                    parts.append(frame)
                    size += len(frame)
                if len(parts) >= self.limits.batch_max_records:
                    break
                try:
                    frame = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        frame = await wait_timeout(self._queue.get(), left)
                    except TimeoutError:
                        break
            if carry is not None:
                self._carry = carry  # before any wait: a stop while we wait must see it
            while len(self._ready) >= self.max_ready_batches:
                # the bus is slower than the plugin: stop taking frames (backpressure)
                self._space.clear()
                await self._space.wait()
            self._parts = []
            if parts:
                batch = Batch(self.epoch, self.next_seq, len(parts), b"".join(parts))
                self.next_seq += len(parts)
                self._ready.append(batch)
                self._wake.set()
                self.counters["batches"] += 1

    async def _admit(self) -> bool:
        """Rate limit one frame: wait for a token (`block`) or drop and count (`drop`)."""
        while not self._bucket.take():
            if self.limits.policy == "drop":
                self.counters["dropped_rate_limit"] += 1
                return False
            # Loop until a token is really there: uvloop's timers run on a cached clock and
            # can fire before the bucket has refilled (taking anyway let 10x the rate through).
            await asyncio.sleep(max(self._bucket.wait_s(), 0.001))
        return True

    async def _publisher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                batch = self.spool.peek() if len(self.spool) else None
                from_spool = batch is not None
                if batch is None and len(self.spool):
                    await asyncio.sleep(0.5)  # out of descriptors: the spool goes first
                    continue
                if batch is None:
                    if not self._ready:
                        break
                    batch = self._ready[0]
                if not await self._send(batch):
                    self._to_spool_all()
                    await asyncio.sleep(0.5)  # retry; a reconnect also wakes us
                    continue
                if from_spool:
                    self.spool.pop()
                else:
                    self._ready.popleft()
                    self._space.set()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # the publish swallowed our cancellation (wait_for on 3.11): honour it,
                    # now that the stored batch has left `_ready` (save_unsent must not spool
                    # it again, or it would be counted twice)
                    raise asyncio.CancelledError

    async def _send(self, batch: Batch) -> bool:
        headers = frames.batch_headers(
            self.host, self.plugin, batch.epoch, batch.first_seq, batch.count
        )
        try:
            await self.publish(self.subject, batch.body, headers)
        except asyncio.CancelledError:
            raise
        except NotPublishable as exc:
            # retrying cannot help: drop it, count it, and let the rest flow
            self.counters["dropped_not_publishable"] += batch.count
            self.last_error = exc.message
            return True
        except Exception as exc:  # NATS down, no stream, timeout: spool and retry
            self.counters["publish_failures"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.counters["records_out"] += batch.count
        self.counters["batches_out"] += 1
        return True

    def _to_spool_all(self) -> None:
        """Move in-memory batches behind the spool so order is kept while NATS is away."""
        while self._ready:
            batch = self._ready.popleft()
            if self.spool.put(batch):
                self.counters["spooled_records"] += batch.count
            else:
                self.counters["dropped_spool_full"] += batch.count
        self._space.set()

    def save_unsent(self) -> None:
        """On stop: queued frames and ready batches go to the spool (sent when the plugin runs
        again), so stopping a plugin loses nothing silently; beyond the bound it is counted."""
        parts = list(self._parts) + ([self._carry] if self._carry is not None else [])
        parts += self._stranded
        self._parts, self._carry, self._stranded = [], None, []
        while True:
            try:
                parts.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        saved = dropped = 0
        batches = list(self._ready)
        self._ready.clear()
        chunk: list[bytes] = []
        size = 0
        for frame in parts:
            if chunk and (size + len(frame) > self.limits.batch_max_bytes
                          or len(chunk) >= self.limits.batch_max_records):  # fmt: skip
                batches.append(Batch(self.epoch, self.next_seq, len(chunk), b"".join(chunk)))
                self.next_seq += len(chunk)
                chunk, size = [], 0
            chunk.append(frame)
            size += len(frame)
        if chunk:
            batches.append(Batch(self.epoch, self.next_seq, len(chunk), b"".join(chunk)))
            self.next_seq += len(chunk)
        for batch in batches:
            if self.spool.put(batch):
                saved += batch.count
            else:
                dropped += batch.count
        self.counters["spooled_records"] += saved
        self.counters["dropped_spool_full"] += dropped
        self.stop_report = {"saved_to_spool": saved, "dropped_spool_full": dropped}

    def kick(self) -> None:
        """Try publishing now (on NATS reconnect)."""
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        return {
            **{k: self.counters.get(k, 0) for k in PIPELINE_COUNTERS},
            **dict(self.counters),
            "queued": self._queue.qsize(),
            "ready_batches": len(self._ready),
            "spool_batches": len(self.spool),
            "spool_bytes": self.spool.bytes,
            "dropped_spool_unreadable": self.spool.unreadable_records,
            "spool_undeletable": self.spool.undeletable,
            "next_seq": self.next_seq,
        }


class LatestPublisher:
    """Frames where only the newest matters (a host's package set): one pending slot per
    subject, published until JetStream acks, a newer frame replacing an unsent older one
    (counted as superseded: nothing is lost that a newer frame does not cover)."""

    def __init__(self, host: str, publish: Publish, retry_s: float = 5.0) -> None:
        self.host = host
        self.publish = publish
        self.retry_s = retry_s
        self.pending: dict[str, tuple[bytes, str]] = {}  # subject -> (frame, plugin)
        self.counters: Counter[str] = Counter()
        self.last_error = ""
        self._wake = asyncio.Event()

    def offer(self, subject: str, plugin: str, frame: bytes) -> None:
        if subject in self.pending:
            self.counters["superseded"] += 1
        self.pending[subject] = (frame, plugin)
        self.counters["offered"] += 1
        self._wake.set()

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        import hashlib

        while True:
            await self._wake.wait()
            self._wake.clear()
            for subject, (frame, plugin) in list(self.pending.items()):
                digest = hashlib.sha256(frame[frames.HEADER_SIZE :]).hexdigest()[:16]
                headers = {frames.H_HOST: self.host, frames.H_PLUGIN: plugin,
                           frames.H_MSG_ID: f"{self.host}.{plugin}.{digest}"}  # fmt: skip
                try:
                    await self.publish(subject, frame, headers)
                except asyncio.CancelledError:
                    raise
                except NotPublishable as exc:
                    self.counters["dropped_not_publishable"] += 1
                    self.last_error = exc.message
                except Exception as exc:  # NATS down or no stream yet: retry
                    self.counters["publish_failures"] += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    continue
                else:
                    self.counters["published"] += 1
                if self.pending.get(subject, (b"", ""))[0] is frame:
                    del self.pending[subject]
            if self.pending:
                with contextlib.suppress(TimeoutError):
                    await wait_timeout(self._wake.wait(), self.retry_s)
                self._wake.set()

    def stats(self) -> dict[str, Any]:
        return {**dict(self.counters), "pending": len(self.pending), "last_error": self.last_error}

    def report(self) -> OutputReport:
        return OutputReport(dict(self.counters), len(self.pending), self.last_error)
