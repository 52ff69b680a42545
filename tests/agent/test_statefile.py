"""The control state file: two checksummed slots written in place, a mirror in the runtime
dir, and saves that keep working on a full disk, a read-only remount and without spare
descriptors (real tmpfs where the test says so)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
from support import can_mount, fill, remount, tmpfs

from hidsd.agent.control import ControlState
from hidsd.agent.statefile import (
    LEGACY_STATE_FILE,
    SLOT_SIZE,
    STATE_FILE,
    StateFile,
    decode_slot,
    encode_slot,
)
from hidsd.base.storage import FdReserve, StorageHealth, StorageStatus
from hidsd.wire.commands import RunMode

STOPPED = ControlState(mode=RunMode.STOPPED, applied_rev=42, applied_cmd="c-42")
RUNNING = ControlState(mode=RunMode.RUNNING, applied_rev=43, applied_cmd="c-43")
HELD = ControlState(RunMode.STOPPED, 43, held=True, held_cmd="h", held_issued_at=9.0)


def test_slot_round_trip_and_rejects_damage() -> None:
    slot = encode_slot(7, b"payload")
    assert len(slot) == SLOT_SIZE
    assert decode_slot(slot) == (7, b"payload")
    assert decode_slot(b"\0" * SLOT_SIZE) is None  # never written
    torn = bytearray(slot)
    torn[22] ^= 0xFF  # a byte of the payload changed: CRC mismatch
    assert decode_slot(bytes(torn)) is None
    assert decode_slot(slot[:10]) is None
    with pytest.raises(ValueError, match="exceeds a slot"):
        encode_slot(1, b"x" * SLOT_SIZE)


def test_save_alternates_slots_and_load_takes_newest(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    sf.prepare()
    assert sf.load() is None  # reserved, nothing saved yet
    assert sf.save(STOPPED) and sf.save(RUNNING)
    assert StateFile(tmp_path).load() == RUNNING
    assert (tmp_path / STATE_FILE).stat().st_size == 2 * SLOT_SIZE  # never grows


def test_torn_write_keeps_the_other_slot(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    sf.prepare()
    sf.save(STOPPED)  # generation 1 -> slot 1
    sf.save(RUNNING)  # generation 2 -> slot 0
    with open(tmp_path / STATE_FILE, "r+b") as f:  # the newest slot torn mid-write
        f.seek(100)
        f.write(b"\xff" * 50)
    assert StateFile(tmp_path).load() == STOPPED


def test_mirror_holds_what_the_primary_could_not(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    health = StorageHealth(data)
    sf = StateFile(data, run, health, host="h1")
    sf.prepare()
    sf.save(RUNNING)
    (data / STATE_FILE).unlink()
    (data / STATE_FILE).mkdir()  # the primary can no longer be written (EISDIR)
    assert sf.save(STOPPED)
    assert sf.pending == STOPPED and "state" in health.failures
    assert StateFile(data, run, host="h1").load() == STOPPED


def test_mirror_without_primary_is_ignored(tmp_path: Path) -> None:
    """A wiped data dir never brings an old state back from /run."""
    data, run = tmp_path / "data", tmp_path / "run"
    sf = StateFile(data, run, host="h1")
    sf.prepare()
    sf.save(STOPPED)
    (data / STATE_FILE).unlink()
    assert StateFile(data, run, host="h1").load() is None


def test_legacy_file_is_read_once(tmp_path: Path) -> None:
    (tmp_path / LEGACY_STATE_FILE).write_bytes(STOPPED.to_bytes())
    sf = StateFile(tmp_path)
    sf.prepare()
    assert sf.load() == STOPPED
    sf.save(RUNNING)
    assert StateFile(tmp_path).load() == RUNNING


def test_unwritable_everything_is_reported_not_raised(tmp_path: Path) -> None:
    health = StorageHealth(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    sf = StateFile(blocker / "data", health=health)
    sf.prepare()
    assert not sf.save(STOPPED)
    assert sf.pending == STOPPED
    assert "state" in health.failures
    assert health.status is StorageStatus.ERROR  # ENOTDIR


def test_out_of_descriptors_uses_the_reserve(tmp_path: Path) -> None:
    reserve = FdReserve()
    sf = StateFile(tmp_path, reserve=reserve)
    sf.prepare()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no descriptor left
    try:
        with pytest.raises(OSError, match="Too many open files"):
            os.open(os.devnull, os.O_RDONLY)
        assert sf.save(HELD)
        assert reserve.used >= 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        reserve.close()
    assert StateFile(tmp_path).load() == HELD


needs_mount = pytest.mark.skipif(bool(can_mount()), reason=can_mount() or "-")


@needs_mount
def test_save_on_a_full_disk(tmp_path: Path) -> None:
    """The issue's case: the stop must be on disk although not one byte is free."""
    with tmpfs(tmp_path / "fs", "1m") as fs:
        health = StorageHealth(fs)
        sf = StateFile(fs / "data", health=health)
        sf.prepare()
        sf.save(RUNNING)
        fill(fs)
        with pytest.raises(OSError):
            (fs / "data" / "probe").write_bytes(b"x")
        assert sf.save(STOPPED)
        assert not health.failures
        health.probe()
        assert health.status is StorageStatus.FULL
        assert StateFile(fs / "data").load() == STOPPED


@needs_mount
def test_read_only_remount_keeps_the_mirror_and_retries(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "1m") as fs:
        health = StorageHealth(fs)
        sf = StateFile(fs / "data", tmp_path / "run", health, host="h1")
        sf.prepare()
        sf.save(RUNNING)
        remount(fs, "ro")
        try:
            assert sf.save(STOPPED)  # held by the mirror
            assert health.failures["state"].status is StorageStatus.READ_ONLY
            health.probe()
            assert health.report().status is StorageStatus.READ_ONLY
            assert StateFile(fs / "data", tmp_path / "run", host="h1").load() == STOPPED
            assert not sf.retry()
        finally:
            remount(fs, "rw")
        assert sf.retry()  # the primary catches up by itself
        assert "state" not in health.failures and health.recoveries == 1
        assert StateFile(fs / "data").load() == STOPPED
