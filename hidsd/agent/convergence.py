"""Convergence with etcd, the source of truth: read on start, on every NATS reconnect, on a
jittered period, and watch the agent's desired-state keys in between.

This is what makes "no agent escapes control" true: a broadcast missed while disconnected is
picked up from etcd within one reconnect.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from hidsd.agent.control import ControlPolicy, Decision, DesiredRecord
from hidsd.agent.follow import Follower, FollowStore
from hidsd.base.errors import CommandRejected
from hidsd.bus.store import WatchEvent
from hidsd.wire.commands import CommandKind
from hidsd.wire.names import KeyLayout

DecisionHandler = Callable[[Decision], Awaitable[None]]


class ConvergenceService:
    """Keeps the agent's control state at the newest desired state in etcd."""

    def __init__(
        self,
        store: FollowStore,
        policy: ControlPolicy,
        keys: KeyLayout,
        resync_s: float,
        on_decision: DecisionHandler,
        rng: random.Random | None = None,
        watch: bool = True,
    ) -> None:
        self.store = store
        self.policy = policy
        self.keys = keys
        self.resync_s = resync_s
        self.on_decision = on_decision
        self.applicable = keys.applicable(policy.host, policy.groups)
        self.records: dict[str, DesiredRecord] = {}
        self.last_revision = 0
        self._log: Any = structlog.get_logger("hidsd.convergence").bind(host=policy.host)
        self.follower = Follower(
            store, self.applicable, self._resync_rev, self.on_events,
            lambda: self.resync_s, self._log, watch=watch, rng=rng,
        )  # fmt: skip

    @property
    def store_ok(self) -> bool:
        return self.follower.store_ok

    @property
    def resyncs(self) -> int:
        return self.follower.resyncs

    def request_resync(self) -> None:
        """Ask for a resync soon (called on NATS reconnect)."""
        self.follower.request()

    def _record(self, key: str, value: bytes, mod_revision: int) -> DesiredRecord | None:
        try:
            cmd = self.policy.verify_record(value)
        except CommandRejected as exc:
            self._log.error("desired_state_rejected", key=key, reason=exc.reason,
                            detail=exc.message)  # fmt: skip
            return None
        if cmd.kind not in (CommandKind.STOP, CommandKind.RESUME):
            self.policy.rejections["malformed"] += 1
            self._log.error("desired_state_rejected", key=key, reason="malformed",
                            detail=f"{cmd.kind.value} is not a run-mode state")  # fmt: skip
            return None
        return DesiredRecord(cmd, mod_revision)

    async def _resync_rev(self, why: str) -> int:
        await self.resync(why)
        return self.last_revision

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
        await self.follower.run()
