"""The telemetry spool and plugin logs on a real small tmpfs: full, read-only, and back.

Nothing raises out of them: what cannot be kept is refused and counted, the failure is in the
storage report with its path, and it clears by itself once the filesystem takes writes again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import can_mount, fill, remount, tmpfs

from hidsd.base.storage import StorageHealth, StorageStatus
from hidsd.plugins.pluginlog import PluginLog
from hidsd.plugins.spool import Batch, Spool
from hidsd.plugins.telemetry import Pipeline
from hidsd.wire.limits import PipelineLimits

needs_mount = pytest.mark.skipif(bool(can_mount()), reason=can_mount() or "-")


def batch(seq: int, size: int = 1000) -> Batch:
    return Batch(epoch=1, first_seq=seq, count=10, body=b"r" * size)


@needs_mount
def test_spool_on_a_full_disk_refuses_counts_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "1m") as fs:
        health = StorageHealth(fs)
        spool = Spool(fs / "spool" / "p", 64 << 20, health)
        assert spool.put(batch(1))
        filler = fill(fs)
        assert not spool.put(batch(11, 50_000))  # refused, nothing half-written left
        assert not list((fs / "spool" / "p").glob("*.tmp"))
        assert health.failures["spool:p"].status is StorageStatus.FULL
        assert len(spool) == 1 and spool.peek() == batch(1)  # what was kept is intact
        filler.unlink()
        assert spool.put(batch(11))
        assert "spool:p" not in health.failures


@needs_mount
def test_spool_read_only_sends_what_it_has_and_forgets_it(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "1m") as fs:
        health = StorageHealth(fs)
        spool = Spool(fs / "spool" / "p", 64 << 20, health)
        spool.put(batch(1))
        spool.put(batch(11))
        remount(fs, "ro")
        try:
            assert spool.peek() == batch(1)
            spool.pop()  # sent; the file cannot be deleted: forgotten, counted
            assert spool.undeletable == 1 and len(spool) == 1
            assert not spool.put(batch(21))
            assert health.failures["spool:p"].status is StorageStatus.READ_ONLY
            again = Spool(fs / "spool" / "p", 64 << 20, health)  # a restart while read-only
            assert len(again) == 2  # the undeleted one comes back: resent, de-duplicated
        finally:
            remount(fs, "rw")


@needs_mount
async def test_pipeline_stop_on_a_full_disk_counts_what_it_cannot_keep(tmp_path: Path) -> None:
    """The crash in the issue: a stopped plugin's unsent records spooled on a full disk."""

    async def down(subject: str, body: bytes, headers: dict[str, str]) -> None:
        raise ConnectionError("NATS is away")

    with tmpfs(tmp_path / "fs", "1m") as fs:
        health = StorageHealth(fs)
        pipe = Pipeline("h", "p", "s", down, Spool(fs / "spool" / "p", 64 << 20, health),
                        PipelineLimits(batch_max_ms=10))  # fmt: skip
        fill(fs)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(pipe.run())
            for _ in range(300):
                await pipe.offer(b"x" * 1000)
            await asyncio.sleep(0.3)
            task.cancel()
        pipe.save_unsent()
        st = pipe.stats()
        assert st["frames_in"] == 300
        assert st["dropped_spool_full"] == 300  # every record counted, none kept, no crash
        assert health.report().status is StorageStatus.FULL


@needs_mount
def test_plugin_log_bounded_and_survives_full_and_read_only(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "1m") as fs:
        health = StorageHealth(fs)
        log = PluginLog(fs / "plugin-logs" / "p.log", max_bytes=100_000, health=health)
        for _ in range(30):
            log.flush(b"y" * 10_000)  # a flood: rotated, never above twice the cap
        assert log.rotations >= 2
        assert (fs / "plugin-logs" / "p.log").stat().st_size <= 100_000
        log = PluginLog(fs / "plugin-logs" / "p.log", max_bytes=1 << 20, health=health)
        filler = fill(fs)
        log.flush(b"lost lines\n" * 1000)  # past the file's last page: needs a new block
        assert log.dropped == 11_000 and "plugin_log:p" in health.failures
        filler.unlink()
        remount(fs, "ro")
        try:
            log.flush(b"lost too\n" * 1000)
            assert health.failures["plugin_log:p"].status is StorageStatus.READ_ONLY
        finally:
            remount(fs, "rw")
        log.flush(b"back\n")
        assert "plugin_log:p" not in health.failures
        assert (fs / "plugin-logs" / "p.log").read_bytes().endswith(b"back\n")


async def test_plugin_log_pump_flushes_on_time_and_eof(tmp_path: Path) -> None:
    log = PluginLog(tmp_path / "p.log", flush_s=0.05)
    reader = asyncio.StreamReader()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(log.pump(reader))
        reader.feed_data(b"first\n")
        await asyncio.sleep(0.2)
        assert (tmp_path / "p.log").read_bytes() == b"first\n"  # flushed while idle
        reader.feed_data(b"last\n")
        reader.feed_eof()
    assert (tmp_path / "p.log").read_bytes() == b"first\nlast\n"
    assert log.stats()["log_bytes"] == 11
