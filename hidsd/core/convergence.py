"""Convergence with etcd, the source of truth: read on start, on every NATS reconnect, on a
jittered period, and watch the agent's desired-state keys in between.

This is what makes "no agent escapes control" true: a broadcast missed while disconnected is
picked up from etcd within one reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog

from hidsd.bus.protocol import KeyLayout
from hidsd.bus.store import KV, WatchEvent
from hidsd.bus.transport import backoff_delay
from hidsd.core.control import ControlPolicy, Decision, DesiredRecord
from hidsd.core.errors import CommandRejected, HidsError


class DesiredStore(Protocol):
    """What convergence needs from etcd (the Store adapter implements it)."""

    async def get_many(self, keys: Sequence[str]) -> tuple[list[KV], int]: ...

    def watch_prefix(
        self, prefix: str, start_revision: int = 0
    ) -> AsyncIterator[list[WatchEvent]]: ...


DecisionHandler = Callable[[Decision], Awaitable[None]]


class ConvergenceService:
    """Keeps the agent's control state at the newest desired state in etcd."""

    def __init__(
        self,
        store: DesiredStore,
        policy: ControlPolicy,
        keys: KeyLayout,
        resync_s: float,
        on_decision: DecisionHandler,
        rng: random.Random | None = None,
        watch: bool = True,
    ) -> None:
        self.watch = watch
        self.store = store
        self.policy = policy
        self.keys = keys
        self.resync_s = resync_s
        self.on_decision = on_decision
        self.applicable = keys.applicable(policy.host, policy.groups)
        self.records: dict[str, DesiredRecord] = {}
        self.last_revision = 0
        self.store_ok = False
        self.resyncs = 0
        self._trigger = asyncio.Event()
        self._synced = asyncio.Event()
        self._rng = rng or random.Random()
        self._log: Any = structlog.get_logger("hidsd.convergence").bind(host=policy.host)

    def request_resync(self) -> None:
        """Ask for a resync soon (called on NATS reconnect)."""
        self._trigger.set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def _record(self, key: str, value: bytes, mod_revision: int) -> DesiredRecord | None:
        try:
            cmd = self.policy.verify_record(value)
        except CommandRejected as exc:
            self._log.error("desired_state_rejected", key=key, reason=exc.reason,
                            detail=exc.message)  # fmt: skip
            return None
        return DesiredRecord(cmd, mod_revision)

    async def resync(self, why: str) -> Decision | None:
        """Read all applicable keys at one revision and converge. Raises HidsError."""
        kvs, revision = await self.store.get_many(self.applicable)
        records: dict[str, DesiredRecord] = {}
        for kv in kvs:
            rec = self._record(kv.key, kv.value, kv.mod_revision)
            if rec is not None:
                records[kv.key] = rec
        self.records = records
        self.last_revision = max(self.last_revision, revision)
        self.resyncs += 1
        self._log.debug("resynced", why=why, revision=revision, records=len(records))
        return await self._converge()

    async def _converge(self) -> Decision | None:
        decision = self.policy.apply_desired(list(self.records.values()))
        if decision is not None:
            await self.on_decision(decision)
        return decision

    async def on_events(self, events: list[WatchEvent]) -> Decision | None:
        touched = False
        for ev in events:
            if ev.key not in self.applicable:
                continue
            touched = True
            self.last_revision = max(self.last_revision, ev.mod_revision)
            if ev.deleted:
                self.records.pop(ev.key, None)
                continue
            rec = self._record(ev.key, ev.value, ev.mod_revision)
            if rec is not None:
                self.records[ev.key] = rec
        return await self._converge() if touched else None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._resync_loop())
            if self.watch:
                tg.create_task(self._watch_loop())

    async def _resync_loop(self) -> None:
        failures = 0
        while True:
            why = (
                "start" if self.resyncs == 0 else "trigger" if self._trigger.is_set() else "period"
            )
            self._trigger.clear()
            try:
                await self.resync(why)
                failures = 0
                if not self.store_ok:
                    self._log.info("store_reachable")
                self.store_ok = True
                self._synced.set()
                wait = self.resync_s * self._rng.uniform(0.8, 1.2)
            except HidsError as exc:
                failures += 1
                if self.store_ok or failures == 1:
                    self._log.warning("store_unreachable", error=exc.message)
                self.store_ok = False
                wait = backoff_delay(failures, 0.5, min(self.resync_s, 15.0), self._rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trigger.wait(), wait)

    async def _watch_loop(self) -> None:
        """One watch over the desired-state prefix, filtered to this agent's keys.

        It starts after the first successful read, from the revision read, so no change
        between the read and the watch is missed.
        """
        failures = 0
        while True:
            await self._synced.wait()
            try:
                async for events in self.store.watch_prefix(
                    self.keys.desired_prefix, start_revision=self.last_revision + 1
                ):
                    failures = 0
                    await self.on_events(events)
            except HidsError as exc:
                failures += 1
                self._log.warning("watch_failed", error=exc.message)
                await asyncio.sleep(backoff_delay(failures, 0.5, 10.0, self._rng))
