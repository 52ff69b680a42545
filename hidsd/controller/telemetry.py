"""The telemetry stream on the controller side: the stream's limits, and the durable pull
consumer all controllers share, which accounts each batch's sequence per host and plugin (so
a gap or a resend is counted, never silent). JetStream is reached through `bus.transport`."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from hidsd.bus.transport import Bus, StreamSpec
from hidsd.controller.endpoints import Params
from hidsd.wire import frames
from hidsd.wire.names import Subjects
from hidsd.wire.status import StreamStats, TelemetryStats

#: the durable consumer every controller pulls from: each batch goes to one of them
DURABLE = "hidsd-controllers"
#: batches per fetch, and how long a fetch waits for the first one
FETCH_BATCH = 256
FETCH_TIMEOUT_S = 1.0


@dataclass(slots=True)
class StreamAccount:
    """One host's plugin: what its batches added up to, and where its sequence should go on."""

    host: str
    plugin: str
    epoch: int
    next_seq: int
    records: int = 0
    batches: int = 0
    bytes: int = 0
    gaps: int = 0
    missing_records: int = 0
    repeats: int = 0
    last_at: float = 0.0

    def add(self, epoch: int, seq: int, count: int, body_len: int, now: float) -> None:
        """A batch of `count` records from `seq` on; a new epoch (the agent restarted its
        pipeline) starts the sequence again at 1."""
        if epoch != self.epoch:
            self.epoch, self.next_seq = epoch, 1
        if seq > self.next_seq:
            self.gaps += 1
            self.missing_records += seq - self.next_seq
        elif seq < self.next_seq:
            self.repeats += 1
        self.next_seq = max(self.next_seq, seq + count)
        self.records += count
        self.batches += 1
        self.bytes += body_len
        self.last_at = now

    def snapshot(self) -> StreamStats:
        return StreamStats(self.host, self.plugin, self.records, self.batches, self.bytes,
                           self.gaps, self.missing_records, self.repeats, self.epoch,
                           self.next_seq, self.last_at)  # fmt: skip


class TelemetryConsumer:
    """Creates the telemetry stream and consumes it; `counters` are the controller's own."""

    def __init__(
        self, bus: Bus, subjects: Subjects, counters: Counter[str], max_bytes: int,
        max_age_s: float,
    ) -> None:  # fmt: skip
        self.bus = bus
        self.subjects = subjects
        self.counters = counters
        self.spec = StreamSpec(subjects.telemetry_stream(), (subjects.telemetry_all(),),
                               max_bytes=max_bytes, max_age_s=max_age_s)  # fmt: skip
        self.accounts: dict[str, StreamAccount] = {}
        #: the stream exists and the consumer runs (False: JetStream unavailable, retried)
        self.ok = False

    def account(self, headers: dict[str, str], body_len: int, subject: str | None = None) -> None:
        """Per host+plugin: records, batches, and gaps or repeats in the sequence. A batch whose
        headers name another host or plugin than its subject is not counted for either (a
        client storing batches "as" another host would skew that host's accounting)."""
        host = headers.get(frames.H_HOST, "?")
        plugin = headers.get(frames.H_PLUGIN, "?")
        if subject is not None and subject != self.subjects.telemetry(host, plugin):
            self.counters["telemetry_subject_mismatch"] += 1
            return
        try:
            epoch = int(headers.get(frames.H_EPOCH, "0"))
            seq = int(headers.get(frames.H_SEQ, "0"))
            count = int(headers.get(frames.H_COUNT, "0"))
        except ValueError:
            self.counters["bad_telemetry"] += 1
            return
        key = f"{host}/{plugin}"
        st = self.accounts.get(key)
        if st is None:
            st = self.accounts[key] = StreamAccount(host, plugin, epoch, seq)
        st.add(epoch, seq, count, body_len, time.time())

    async def run(self) -> None:
        """Create or update the stream, then consume it for good (errors end the run: the
        caller retries with backoff)."""
        await self.bus.js_ensure_stream(self.spec)
        self.ok = True
        consumer = await self.bus.js_pull_subscribe(
            self.subjects.telemetry_all(), DURABLE, self.subjects.telemetry_stream()
        )
        while True:
            msgs = await consumer.fetch(FETCH_BATCH, FETCH_TIMEOUT_S)
            for msg in msgs:
                self.account(dict(msg.headers or {}), len(msg.data), msg.subject)
                await msg.ack()
            self.counters["telemetry_batches"] += len(msgs)

    def set_ok(self, ok: bool) -> None:
        self.ok = ok

    async def h_stats(self, params: Params) -> TelemetryStats:
        """`telemetry.stats`: every host and plugin consumed here, by host and plugin."""
        return TelemetryStats(tuple(sorted((a.snapshot() for a in self.accounts.values()),
                                           key=lambda s: (s.host, s.plugin))))  # fmt: skip
