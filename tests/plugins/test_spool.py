"""hidsd.plugins.spool: oldest first, bounded in bytes, what a crash or a bad file leaves."""

from __future__ import annotations

from pathlib import Path

from hidsd.base.storage import StorageHealth
from hidsd.plugins.spool import Batch, Spool


def batch(seq: int, size: int = 100, epoch: int = 1) -> Batch:
    return Batch(epoch=epoch, first_seq=seq, count=10, body=bytes([seq % 256]) * size)


def test_batches_come_back_oldest_first_and_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "p", 1 << 20)
    for seq in (1, 11, 21):
        assert spool.put(batch(seq))
    again = Spool(tmp_path / "p", 1 << 20)  # a restart lists what is on disk
    assert len(again) == 3 and again.bytes == sum(
        p.stat().st_size for p in (tmp_path / "p").iterdir()
    )
    seen = []
    while (b := again.peek()) is not None:
        seen.append(b)
        again.pop()
    assert seen == [batch(1), batch(11), batch(21)]
    assert again.bytes == 0 and not list((tmp_path / "p").iterdir())


def test_a_newer_epoch_sorts_after_an_older_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "p", 1 << 20)
    spool.put(batch(1, epoch=2))
    spool.put(batch(500, epoch=1))  # an earlier run's batch, restored late
    assert Spool(tmp_path / "p", 1 << 20).peek() == batch(500, epoch=1)


def test_the_byte_bound_refuses_and_keeps_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "p", 1000)
    assert spool.put(batch(1, size=500))
    assert not spool.put(batch(11, size=500))  # 2 x (500 + 64) > 1000
    assert len(spool) == 1 and len(list((tmp_path / "p").glob("*.batch"))) == 1


def test_a_crash_leftover_is_removed_on_start(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.batch.tmp").write_bytes(b"half")
    spool = Spool(tmp_path / "p", 1 << 20)
    assert len(spool) == 0 and not list((tmp_path / "p").iterdir())


def test_an_unreadable_batch_is_dropped_counted_and_reported(tmp_path: Path) -> None:
    health = StorageHealth(tmp_path)
    spool = Spool(tmp_path / "p", 1 << 20, health)
    spool.put(batch(1))
    spool.put(batch(11))
    (tmp_path / "p" / f"{batch(1).name}.batch").unlink()  # gone behind the spool's back
    assert spool.peek() == batch(11)  # the next one, read fine, clears the failure again
    assert spool.unreadable_records == 10
    assert health.errors_total == 1 and health.recoveries == 1
    assert "spool:p" not in health.failures
    spool.pop()
    assert spool.peek() is None and spool.bytes == 0
