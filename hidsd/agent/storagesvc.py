"""Storage recovery: watch the data dir and retry the saves that failed, so the agent recovers
by itself once space, write access or descriptors are back (the heartbeat says what failed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hidsd.base.storage import FdReserve, StorageHealth, StorageStatus


class StorageService:
    def __init__(
        self,
        health: StorageHealth,
        fd_reserve: FdReserve,
        retries: tuple[Callable[[], object], ...],
        on_status: Callable[[], None],
        log: Any,
        period_s: float = 2.0,
    ) -> None:
        self.health = health
        self.fd_reserve = fd_reserve
        #: the saves owed (state, last-good config, denylist): each retries only if it failed
        self.retries = retries
        self.on_status = on_status
        self.log = log
        self.period_s = period_s
        self._reported = StorageStatus.OK

    def tick(self) -> None:
        before = self._reported
        self.health.probe()
        self.fd_reserve.take()
        for retry in self.retries:
            retry()
        after = self._reported = self.health.status
        if after is not before:
            r = self.health.report()
            log = self.log.info if after is StorageStatus.OK else self.log.error
            log("storage_status", old=before.value, status=after.value, path=r.path,
                error=r.error)  # fmt: skip
            self.on_status()

    async def run(self) -> None:
        while True:
            try:
                self.tick()
            except OSError as exc:  # nothing here may end the agent
                self.log.warning("storage_check_failed", error=str(exc))
            await asyncio.sleep(self.period_s)
