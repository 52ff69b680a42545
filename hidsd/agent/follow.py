"""Following etcd keys: read on start, on demand (NATS reconnect), on a jittered period, and
watch each key in between. Shared by run-mode convergence and the config service.

Keys are watched one by one rather than by prefix: an agent's etcd role may read only its own
keys (a prefix watch needs the whole range), and per-host writes then reach only that host.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from hidsd.base.aio import wait_timeout
from hidsd.base.errors import HidsError
from hidsd.bus.store import KV, WatchEvent
from hidsd.bus.transport import backoff_delay


class FollowStore(Protocol):
    """What following needs from etcd (the Store adapter implements it)."""

    async def get_many(self, keys: Sequence[str]) -> tuple[list[KV], int]: ...

    def watch_key(self, key: str, start_revision: int = 0) -> AsyncIterator[list[WatchEvent]]: ...

    def watch_prefix(
        self, prefix: str, start_revision: int = 0
    ) -> AsyncIterator[list[WatchEvent]]: ...


class Follower:
    """Runs `resync(why) -> revision` and feeds watch events of `keys` to `on_events`."""

    def __init__(
        self,
        store: FollowStore,
        keys: Sequence[str],
        resync: Callable[[str], Awaitable[int]],
        on_events: Callable[[list[WatchEvent]], Awaitable[Any]],
        period_s: Callable[[], float],
        log: Any,
        watch: bool = True,
        rng: random.Random | None = None,
        prefixes: bool = False,
    ) -> None:
        self.prefixes = prefixes  # `keys` are prefixes: watch each whole range
        self.store = store
        self.keys = list(keys)
        self._resync = resync
        self._on_events = on_events
        self._period_s = period_s
        self.log = log
        self.watch = watch
        self.store_ok = False
        self.resyncs = 0
        self.watch_from: dict[str, int] = {}
        self._trigger = asyncio.Event()
        self.synced = asyncio.Event()
        self._rng = rng or random.Random()

    def request(self) -> None:
        self._trigger.set()

    def seen(self, revision: int) -> None:
        """Watches (re)start after `revision`: nothing read up to it is delivered twice."""
        for key in self.keys:
            self.watch_from[key] = max(self.watch_from.get(key, 0), revision + 1)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._resync_loop())
            if self.watch:
                for key in self.keys:
                    tg.create_task(self._watch_loop(key))

    async def _resync_loop(self) -> None:
        failures = 0
        while True:
            if self.resyncs == 0:
                why = "start"
            else:
                why = "trigger" if self._trigger.is_set() else "period"
            self._trigger.clear()
            try:
                revision = await self._resync(why)
                self.seen(revision)
                self.resyncs += 1
                failures = 0
                if not self.store_ok:
                    self.log.info("store_reachable", why=why)
                self.store_ok = True
                self.synced.set()
                wait = self._period_s() * self._rng.uniform(0.8, 1.2)
            except HidsError as exc:
                failures += 1
                if self.store_ok or failures == 1:
                    self.log.warning("store_unreachable", error=exc.message)
                self.store_ok = False
                wait = backoff_delay(failures, 0.5, min(self._period_s(), 15.0), self._rng)
            with contextlib.suppress(TimeoutError):
                await wait_timeout(self._trigger.wait(), wait)

    async def _watch_loop(self, key: str) -> None:
        failures = 0
        while True:
            await self.synced.wait()
            try:
                watch = self.store.watch_prefix if self.prefixes else self.store.watch_key
                async for events in watch(key, self.watch_from.get(key, 0)):
                    failures = 0
                    for ev in events:
                        self.watch_from[key] = max(self.watch_from.get(key, 0), ev.mod_revision + 1)
                    try:
                        await self._on_events(events)
                    except HidsError as exc:
                        # The watch moved past this event: hand it to the resync loop (which
                        # retries with backoff) instead of dropping it until the next period.
                        self.log.warning("watch_event_deferred", key=key, error=exc.message)
                        self.request()
            except HidsError as exc:
                failures += 1
                self.log.warning("watch_failed", key=key, error=exc.message)
                await asyncio.sleep(backoff_delay(failures, 0.5, 10.0, self._rng))
