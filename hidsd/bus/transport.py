"""NATS transport: a server list, failover, reconnect with backoff and jitter, re-subscription.

nats-py re-sends every SUB after a reconnect; we add jittered server selection (so a fleet
does not reconnect in lockstep after a server restart), a reconnect hook the agent uses to
resync from etcd, and counters for what the client drops (slow consumers) so nothing is lost
silently.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import structlog
from nats.aio.client import Client, Server
from nats.aio.msg import Msg

from hidsd.base.aio import wait_timeout
from hidsd.base.errors import BusUnavailable, NoResponse, NotPublishable

Handler = Callable[[Msg], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BusOptions:
    servers: tuple[str, ...]
    name: str
    user: str | None = None
    password: str | None = None
    token: str | None = None
    reconnect_base_s: float = 0.2
    reconnect_max_s: float = 10.0
    connect_timeout_s: float = 2.0
    ping_interval_s: int = 20
    max_outstanding_pings: int = 2


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream as the controllers create them: on file, bounded, the oldest
    discarded first, with a de-duplication window (a batch resent after a lost ack is stored
    once)."""

    name: str
    subjects: tuple[str, ...]
    max_bytes: int
    max_age_s: float | None = None
    #: -1: no limit per subject (1: only the latest message of each subject is kept)
    max_msgs_per_subject: int = -1
    duplicate_window_s: float = 120.0


@dataclass(slots=True)
class PullConsumer:
    """A durable pull consumer: batches of stream messages, each acked by the caller once it
    has handled it (`await msg.ack()`)."""

    _sub: Any

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to `batch` messages; [] when none arrived within `timeout`."""
        try:
            msgs: list[Msg] = await self._sub.fetch(batch, timeout=timeout)
        except nats.errors.TimeoutError:
            return []
        return msgs


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with 'equal jitter': half fixed, half random, never above cap."""
    ceiling = min(cap, base * (2 ** min(attempt, 20)))
    return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


@dataclass(slots=True)
class Bus:
    """One NATS connection with hooks; the only place that knows nats-py's connect options."""

    options: BusOptions
    on_reconnect: Hook | None = None
    on_disconnect: Hook | None = None
    counters: Counter[str] = field(default_factory=Counter)
    _nc: Client | None = None
    _rng: random.Random = field(default_factory=random.Random)
    _js: Any = None
    _js_for: Any = None
    _log: Any = field(default_factory=lambda: structlog.get_logger("hidsd.bus"))

    @property
    def client(self) -> Client:
        if self._nc is None:
            raise BusUnavailable("not connected to NATS")
        return self._nc

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def _pick_server(self, servers: list[Server], _info: dict[str, Any]) -> tuple[Server, float]:
        """Reconnect policy: least-tried server first, after a jittered backoff."""
        fewest = min(s.reconnects for s in servers)
        choices = [s for s in servers if s.reconnects == fewest]
        server = self._rng.choice(choices)
        delay = backoff_delay(
            server.reconnects, self.options.reconnect_base_s, self.options.reconnect_max_s,
            self._rng,
        )  # fmt: skip
        return server, delay

    async def _error_cb(self, exc: Exception) -> None:
        kind = type(exc).__name__
        self.counters[f"error.{kind}"] += 1
        if isinstance(exc, nats.errors.SlowConsumerError):
            # nats-py dropped a message because a subscription's pending queue was full.
            self.counters["dropped_slow_consumer"] += 1
            self._log.warning("nats_slow_consumer_drop", subject=exc.subject)
            return
        self._log.debug("nats_error", error=str(exc) or kind)

    async def _disconnected_cb(self) -> None:
        if self._nc is None:
            return  # our own close()
        self.counters["disconnects"] += 1
        self._log.info("nats_disconnected")
        if self.on_disconnect is not None:
            await self.on_disconnect()

    async def _reconnected_cb(self) -> None:
        self.counters["reconnects"] += 1
        url = self._nc.connected_url.netloc if self._nc and self._nc.connected_url else "?"
        self._log.info("nats_reconnected", server=url)
        if self.on_reconnect is not None:
            await self.on_reconnect()

    async def connect(self, stop: asyncio.Event | None = None, attempts: int = 0) -> None:
        """Connect to any server in the list; retry with jittered backoff.

        attempts=0 retries until `stop` is set; otherwise raises BusUnavailable after that many
        rounds over the server list.
        """
        o = self.options
        attempt = 0
        while True:
            try:
                nc = await nats.connect(
                    servers=list(o.servers),
                    name=o.name,
                    user=o.user,
                    password=o.password,
                    token=o.token,
                    connect_timeout=max(1, round(o.connect_timeout_s)),
                    allow_reconnect=True,
                    # nats-py loops forever inside connect() when this is -1 and no server is
                    # up; try each server once here and let our loop do the backoff.
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    ping_interval=o.ping_interval_s,
                    max_outstanding_pings=o.max_outstanding_pings,
                    reconnect_to_server_handler=self._pick_server,
                    error_cb=self._error_cb,
                    disconnected_cb=self._disconnected_cb,
                    reconnected_cb=self._reconnected_cb,
                )
                # Once connected, never give up reconnecting (the handler paces it).
                nc.options["max_reconnect_attempts"] = -1
                self._nc = nc
                return
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                attempt += 1
                if attempts and attempt >= attempts:
                    raise BusUnavailable(
                        f"no NATS server reachable ({', '.join(o.servers)}): {exc or type(exc)}",
                        servers=list(o.servers),
                    ) from exc
                delay = backoff_delay(attempt, o.reconnect_base_s, o.reconnect_max_s, self._rng)
                self._log.warning("nats_connect_failed", error=str(exc), retry_in_s=round(delay, 2))
                if stop is None:
                    await asyncio.sleep(delay)
                    continue
                try:
                    await wait_timeout(stop.wait(), delay)
                except TimeoutError:
                    continue
                raise BusUnavailable("stopped before NATS was reachable") from exc

    async def subscribe(
        self, subject: str, handler: Handler, queue: str = "", pending_msgs: int = 65536
    ) -> Any:
        """Subscribe and make sure the server has the SUB before returning.

        nats-py can return from flush() before the server processed a SUB issued just before
        (docs/ARCHITECTURE.md, "Facts"): yield once so the SUB is written first.
        """
        sub = await self.client.subscribe(
            subject, queue=queue, cb=handler, pending_msgs_limit=pending_msgs
        )
        await asyncio.sleep(0)
        await self.client.flush()
        return sub

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        await self.client.publish(subject, data, reply=reply)

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes:
        """Request/reply; NoResponse when nobody answers in time."""
        try:
            msg = await self.client.request(subject, data, timeout=timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError) as exc:
            raise NoResponse(f"no reply on {subject} within {timeout}s", subject=subject) from exc
        payload: bytes = msg.data
        return payload

    async def js_publish(
        self, subject: str, data: bytes, headers: dict[str, str], timeout: float = 2.0
    ) -> None:
        """Publish into a JetStream stream and wait for its ack (raises if not stored)."""
        if self._js is None or self._js_for is not self._nc:
            self._js = self.client.jetstream(timeout=timeout)
            self._js_for = self._nc
        try:
            await self._js.publish(subject, data, timeout=timeout, headers=headers)
        except nats.errors.MaxPayloadError as exc:
            raise NotPublishable(f"{len(data)} bytes exceed the server's max_payload") from exc

    async def js_ensure_stream(self, spec: StreamSpec, timeout: float = 5.0) -> None:
        """Create the stream, or update it when it exists with other settings."""
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig

        cfg = StreamConfig(
            name=spec.name, subjects=list(spec.subjects), max_bytes=spec.max_bytes,
            max_age=spec.max_age_s, max_msgs_per_subject=spec.max_msgs_per_subject,
            discard=DiscardPolicy.OLD, storage=StorageType.FILE,
            duplicate_window=spec.duplicate_window_s,
        )  # fmt: skip
        js = self.client.jetstream(timeout=timeout)
        try:
            await js.add_stream(cfg)
        except Exception as exc:  # already exists with other settings: update it
            if "already in use" not in str(exc):
                raise
            await js.update_stream(cfg)

    async def js_pull_subscribe(
        self, subject: str, durable: str, stream: str, timeout: float = 5.0
    ) -> PullConsumer:
        """A durable pull consumer shared by every client that names the same `durable`: each
        message goes to one of them."""
        js = self.client.jetstream(timeout=timeout)
        return PullConsumer(await js.pull_subscribe(subject, durable=durable, stream=stream))

    async def flush(self, timeout: float = 2.0) -> None:
        await self.client.flush(timeout=timeout)  # type: ignore[arg-type]  # float works

    async def close(self, timeout: float = 2.0) -> None:
        """Flush what is buffered, then close; bounded by `timeout`."""
        nc, self._nc = self._nc, None
        if nc is None or nc.is_closed:
            return
        try:
            if nc.is_connected:
                await wait_timeout(nc.flush(), timeout)
        except (TimeoutError, nats.errors.Error, OSError, RuntimeError):
            self._log.warning("nats_flush_on_close_failed")
        try:
            await nc.close()
        except (OSError, RuntimeError, nats.errors.Error) as exc:
            # The server vanished with data buffered: uvloop raises RuntimeError on the
            # closed transport, asyncio ConnectionResetError. Closing must not fail shutdown.
            self._log.warning("nats_close_failed", error=str(exc) or type(exc).__name__)
