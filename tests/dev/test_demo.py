"""`make demo` end to end: it completes, and Ctrl-C at any point leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest


def _descendants_gone(pids: set[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if psutil.pid_exists(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if psutil.pid_exists(p) and
                 psutil.Process(p).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    return alive


def _start_demo() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hidsd.dev.demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )


def test_demo_runs_to_completion() -> None:
    demo = _start_demo()
    out, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0, out
    assert out.count("3/3") >= 2  # live progress for stop and resume
    assert "mode stopped    │ 3" in out
    assert "mode running    │ 3" in out
    assert "all processes stopped" in out


@pytest.mark.parametrize("after", ["nats-server", "started 2 hidsd-controllers", "2. emergency"])
def test_ctrl_c_at_any_point_leaves_nothing_running(after: str) -> None:
    demo = _start_demo()
    seen: set[int] = set()
    assert demo.stdout is not None
    lines = []
    for line in demo.stdout:
        lines.append(line)
        try:
            seen |= {c.pid for c in psutil.Process(demo.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            break
        if after in line:
            break
    else:
        raise AssertionError(f"the demo never printed {after!r}: " + "".join(lines))
    assert seen, "".join(lines)
    os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode in (0, 130), "".join(lines) + rest
    assert not _descendants_gone(seen), "".join(lines) + rest
