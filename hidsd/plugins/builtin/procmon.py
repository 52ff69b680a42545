"""Procmon: new processes, found by scanning /proc every `interval_s`.

Polling keeps us in user space with no kernel hooks (R3, R4); the price is that a process
living shorter than one interval can be missed, and that pid reuse within one interval hides
the second process. A scan lists /proc and reads only pids it has not seen, so an idle host
costs one directory listing per interval.

A process caught between fork and exec still shows its parent's image, so each new process is
looked at again on the next scan: if its exe or cmdline changed it is reported once more with
event "exec". Kernel threads are skipped.

Params: interval_s (1.0), emit_initial (false: processes already running at start are the
baseline, not news).
Record (PROCESS): {event, pid, ppid, name, exe, exe_deleted, cmdline, uid, euid, gid,
start_time}; the frame's timestamp is the process start time.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from hidsd.plugins.builtin import DataType, Runner, run_main
from hidsd.wire.frames import TaskType

PROC = "/proc"
PF_KTHREAD = 0x00200000
CLK_TCK = os.sysconf("SC_CLK_TCK")
GONE = (FileNotFoundError, ProcessLookupError)  # the process exited while we read it


def list_pids(proc: str = PROC) -> set[int]:
    return {int(n) for n in os.listdir(proc) if n.isdigit()}


def boot_time(proc: str = PROC) -> float:
    with open(f"{proc}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError(f"{proc}/stat has no btime line")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _text(data: bytes) -> str:
    # Arguments are bytes; msgpack needs valid UTF-8, and we must not lose what was there.
    return data.decode("utf-8", errors="backslashreplace")


def _argv(raw: bytes) -> list[str]:
    """NUL-separated arguments; the final NUL is missing when a process rewrote its argv
    (setproctitle), and a zombie's cmdline is empty."""
    raw = raw.removesuffix(b"\0")
    return [_text(a) for a in raw.split(b"\0")] if raw else []


def read_process(pid: int, boot: float, proc: str = PROC) -> dict[str, Any] | None:
    """What /proc says about `pid`; None for a kernel thread or a process already gone.
    Fields a non-root user may not read (exe of another user's process) are None."""
    base = f"{proc}/{pid}"
    try:
        stat = _read(f"{base}/stat")
        # "pid (comm) state ppid ...": comm may hold spaces and ")", so split at the last ")".
        lpar, rpar = stat.find(b"("), stat.rfind(b")")
        fields = stat[rpar + 2 :].split()
        ppid, flags, start_ticks = int(fields[1]), int(fields[6]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None  # gone (or, never seen, a stat line we cannot parse): nothing to report
    if flags & PF_KTHREAD:
        return None
    rec: dict[str, Any] = {
        "event": "start",
        "pid": pid,
        "ppid": ppid,
        "name": _text(stat[lpar + 1 : rpar]),
        "exe": None,
        "exe_deleted": False,
        "cmdline": [],
        "uid": None,
        "euid": None,
        "gid": None,
        "start_time": round(boot + start_ticks / CLK_TCK, 3),
        "start_ticks": start_ticks,
    }
    try:
        rec["cmdline"] = _argv(_read(f"{base}/cmdline"))
        for line in _read(f"{base}/status").splitlines():
            if line.startswith(b"Uid:"):
                ids = line.split()
                rec["uid"], rec["euid"] = int(ids[1]), int(ids[2])
            elif line.startswith(b"Gid:"):
                rec["gid"] = int(line.split()[1])
                break
        exe = os.readlink(f"{base}/exe")
        rec["exe_deleted"] = exe.endswith(" (deleted)")  # running from an unlinked binary
        rec["exe"] = exe.removesuffix(" (deleted)")
    except GONE:
        rec["exited"] = True  # it ran: report what we have
    except OSError:
        pass  # not root: another user's exe is hidden (EACCES), the rest is public
    return rec


class ProcessScanner:
    """Remembers the pids seen and reports the new ones (and a recent one's exec)."""

    def __init__(self, rt: Runner, proc: str = PROC) -> None:
        self.rt = rt
        self.proc = proc
        try:
            self.boot = boot_time(proc)
        except OSError as exc:
            rt.error("boot_time", exc, f"{proc}/stat")
            self.boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        self.known: set[int] = set()
        self._recent: dict[int, dict[str, Any]] = {}  # pid -> record, for one more scan

    def scan(self, report: bool) -> int:
        """One pass; returns how many records were emitted."""
        try:
            current = list_pids(self.proc)
        except OSError as exc:
            self.rt.error("list", exc, self.proc)
            return 0
        self.rt.ok("list", self.proc)
        emitted = 0
        recent, self._recent = self._recent, {}
        for pid, old in recent.items():
            if pid not in current:
                continue
            now = read_process(pid, self.boot, self.proc)
            if now is None or now["start_ticks"] != old["start_ticks"]:
                continue  # gone, or the pid was reused: the new one is handled below
            if now["exe"] != old["exe"] or now["cmdline"] != old["cmdline"]:
                now["event"] = "exec"
                self._emit(now)
                emitted += 1
        new = [r for pid in current - self.known if (r := read_process(pid, self.boot, self.proc))]
        new.sort(key=lambda r: (r["start_ticks"], r["pid"]))  # parents before children
        for rec in new:
            if report:
                self._emit(rec)
                emitted += 1
            if not rec.get("exited"):
                self._recent[rec["pid"]] = rec
        self.known = current
        return emitted

    def _emit(self, rec: dict[str, Any]) -> None:
        out = {k: v for k, v in rec.items() if k != "start_ticks"}
        self.rt.emit(DataType.PROCESS, out, int(rec["start_time"] * 1e9))


def run(rt: Runner) -> None:
    rt.configure()
    scanner = ProcessScanner(rt)
    interval = rt.param_float("interval_s", 1.0, minimum=0.05)
    initial = scanner.scan(report=rt.param_bool("emit_initial", False))
    rt.status("ready", interval_s=interval, processes=len(scanner.known), emitted=initial)
    next_scan = time.monotonic() + interval
    while not rt.stopping:
        rt.sleep(next_scan - time.monotonic())
        for task_type, payload in rt.tasks():
            if task_type == TaskType.CONFIG:
                interval = rt.param_float("interval_s", 1.0, minimum=0.05)
                next_scan = min(next_scan, time.monotonic() + interval)
            elif task_type == TaskType.RUN:
                rt.error("task", f"unknown task {payload!r} (procmon has none)")
        if rt.stopping:
            break
        if time.monotonic() >= next_scan:
            scanner.scan(report=True)
            # Fixed rate, but never a burst of catch-up scans after a stall.
            next_scan = max(next_scan + interval, time.monotonic() + interval / 2)


def main() -> int:
    return run_main("procmon", run)


if __name__ == "__main__":
    sys.exit(main())
