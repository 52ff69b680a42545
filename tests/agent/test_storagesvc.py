from __future__ import annotations

import errno
from pathlib import Path

import structlog

from hidsd.agent.storagesvc import StorageService
from hidsd.base.storage import FdReserve, StorageHealth, StorageStatus


def test_tick_retries_every_owed_save_and_reports_each_status_change(tmp_path: Path) -> None:
    health = StorageHealth(tmp_path)
    reserve = FdReserve()
    calls: list[str] = []
    pokes: list[StorageStatus] = []

    def retry_state() -> None:
        calls.append("state")
        if calls.count("state") >= 3:  # the third retry succeeds
            health.ok("state")

    retries = (retry_state, lambda: calls.append("config"))
    log = structlog.get_logger("t")
    svc = StorageService(health, reserve, retries, lambda: pokes.append(health.status), log)
    try:
        svc.tick()
        assert pokes == [] and calls == ["state", "config"]
        health.failed("state", tmp_path / "s", OSError(errno.ENOSPC, "full"), retried=True)
        svc.tick()  # still failing: one report of the change to full
        assert pokes == [StorageStatus.FULL]
        svc.tick()  # the retry succeeded: back to ok, reported once
        assert pokes == [StorageStatus.FULL, StorageStatus.OK]
    finally:
        reserve.close()
