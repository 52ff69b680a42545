"""hidsd.base.storage: what an OSError means to an operator, and the health report."""

from __future__ import annotations

import errno
from pathlib import Path

from hidsd.base.storage import StorageHealth, StorageStatus, classify


def test_classify() -> None:
    assert classify(OSError(errno.ENOSPC, "x")) is StorageStatus.FULL
    assert classify(OSError(errno.EDQUOT, "x")) is StorageStatus.FULL
    assert classify(OSError(errno.EROFS, "x")) is StorageStatus.READ_ONLY
    assert classify(OSError(errno.EIO, "x")) is StorageStatus.ERROR
    assert classify(OSError(errno.EMFILE, "x")) is StorageStatus.ERROR


def test_health_reports_the_worst_and_clears(tmp_path: Path) -> None:
    h = StorageHealth(tmp_path, clock=lambda: 5.0)
    h.probe()
    assert h.report().status is StorageStatus.OK and h.report().free_bytes
    h.failed("spool:a", tmp_path / "a", OSError(errno.ENOSPC, "No space left on device"))
    h.failed("state", tmp_path / "s", OSError(errno.EIO, "Input/output error"))
    r = h.report()
    assert r.status is StorageStatus.ERROR and r.path == str(tmp_path / "s")
    assert r.failing["spool:a"].startswith("full: ENOSPC")
    assert r.fds_open and r.fds_limit
    assert h.ok("state") and not h.ok("state")
    assert h.report().status is StorageStatus.FULL
    h.ok("spool:a")
    assert h.report().status is StorageStatus.OK and h.recoveries == 2 and h.errors_total == 2


def test_probe_clears_idle_writers_not_those_that_owe_a_save(tmp_path: Path) -> None:
    """With space back, a spool that has nothing to write clears; a state file that owes a
    save clears only when its retry succeeds (EDQUOT can refuse it with the disk half empty)."""
    h = StorageHealth(tmp_path)
    h.failed("spool:a", tmp_path, OSError(errno.ENOSPC, "No space left on device"))
    h.failed("state", tmp_path, OSError(errno.EDQUOT, "Disk quota exceeded"), retried=True)
    h.failed("plugin:b", tmp_path, OSError(errno.EMFILE, "Too many open files"))
    h.probe()
    assert set(h.failures) == {"state"} and h.recoveries == 2
