"""Procmon plugin: processes the test starts are reported with their parent, command line,
exe and owner; processes running at start are not news (unless asked); a storm of
short-lived processes cannot break a scan."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil
from plugin_harness import start_plugin

from hidsd.plugins.builtin import DataType
from hidsd.plugins.builtin.procmon import boot_time, read_process
from hidsd.wire.frames import TaskType


def test_new_process_is_reported_with_parent_and_cmdline(tmp_path: Path) -> None:
    with start_plugin("procmon", {"interval_s": 0.1}, tmp_path) as p:
        ready = p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
        assert ready["processes"] > 1
        assert ready["emitted"] == 0
        started = time.time()
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            rec = p.wait_for(
                DataType.PROCESS,
                lambda r: r["pid"] == sleeper.pid and r["cmdline"] == ["sleep", "30"],
                what="for the sleep the test started",
            )
            assert rec["ppid"] == os.getpid()
            assert rec["name"] == "sleep"
            assert rec["exe"] == os.path.realpath(shutil.which("sleep") or "")
            assert rec["exe_deleted"] is False
            assert (rec["uid"], rec["euid"], rec["gid"]) == (os.getuid(), os.geteuid(), os.getgid())
            assert rec["event"] in ("start", "exec")
            assert abs(rec["start_time"] - started) < 3.0
            assert abs(rec["start_time"] - psutil.Process(sleeper.pid).create_time()) < 0.05
        finally:
            sleeper.kill()
            sleeper.wait()
        # Running before the plugin: the test itself is baseline, never reported.
        assert not [r for r in p.of_type(DataType.PROCESS) if r["pid"] == os.getpid()]
        # SHUTDOWN with stdin still open ends it cleanly as well.
        p.send(TaskType.SHUTDOWN)
        assert p.proc.wait(5) == 0


def test_emit_initial_reports_what_runs_at_start(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with start_plugin("procmon", {"interval_s": 5.0, "emit_initial": True}, tmp_path) as p:
            ready = p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
            assert 2 <= ready["emitted"] <= ready["processes"]  # kernel threads are skipped
            recs = {r["pid"]: r for r in p.of_type(DataType.PROCESS)}
            assert recs[sleeper.pid]["cmdline"] == ["sleep", "30"]
            assert recs[os.getpid()]["ppid"] == os.getppid()
            assert recs[1]["ppid"] == 0  # init, of this pid namespace at least
    finally:
        sleeper.kill()
        sleeper.wait()


def test_short_lived_processes_do_not_break_scans(tmp_path: Path) -> None:
    with start_plugin("procmon", {"interval_s": 0.02}, tmp_path) as p:
        p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
        # 300 processes that exit at once: many vanish between the listing and the reads.
        # (The shell lingers a little so that it, at least, is surely seen.)
        storm = subprocess.run(
            [
                "sh",
                "-c",
                "i=0; while [ $i -lt 300 ]; do /bin/true & i=$((i+1)); done; wait; sleep 0.3",
            ],
            check=True,
        )
        assert storm.returncode == 0
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            rec = p.wait_for(DataType.PROCESS, lambda r: r["pid"] == sleeper.pid)
            assert rec["ppid"] == os.getpid()
        finally:
            sleeper.kill()
            sleeper.wait()
        assert p.proc.poll() is None
        assert p.of_type(DataType.ERROR) == []
        seen = p.of_type(DataType.PROCESS)
        assert all(isinstance(r["pid"], int) and r["start_time"] > 0 for r in seen)
        assert any(r["cmdline"][:2] == ["sh", "-c"] and r["ppid"] == os.getpid() for r in seen)


def test_read_process_of_a_gone_pid_is_none() -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its /proc entry is gone
    assert read_process(child.pid, boot_time()) is None
    me = read_process(os.getpid(), boot_time())
    assert me is not None
    assert me["pid"] == os.getpid()
    assert me["cmdline"] == psutil.Process().cmdline()
