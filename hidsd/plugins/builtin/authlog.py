"""Authlog: SSH logins and failures from auth.log (Debian, Ubuntu) or secure (RHEL).

Each path is followed like `tail -F`: started at its end (a restart must not replay history
as new alerts), re-opened from the start when the name points to a new file (rotation by
rename; the old file is drained first, and kept while the name is missing because the logger
may still write to it), and re-read from the start when the file shrinks (copytruncate).
A path that does not exist yet is waited for. Polling a stat per path every `poll_s` costs
nothing measurable and needs no inotify watch on /var/log.

Params: paths (["/var/log/auth.log", "/var/log/secure"]), poll_s (1.0), from_start (false:
also report what the files already hold).
Records: SSH_ACCEPTED, SSH_FAILED (invalid_user true for "Failed ... for invalid user"),
SSH_INVALID_USER; each {event, user, ip, port, method, pid, host, timestamp (as written),
time (epoch seconds), count, path, line}; the frame's timestamp is the line's.
STATUS "following" says which file (and inode) is followed from which offset, and why.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import time
from datetime import datetime
from typing import Any

from hidsd.plugins.builtin import DataType, Runner, run_main
from hidsd.wire.frames import TaskType

DEFAULT_PATHS = ("/var/log/auth.log", "/var/log/secure")
READ_CHUNK = 1 << 16
MAX_LINE = 1 << 16  # a longer "line" is garbage: cut it, never buffer without bound
POLL_BUDGET = 4 << 20  # bytes per file per poll, so a backlog cannot delay a stop

# "Mar  5 10:11:12 host sshd[123]: msg" or "2024-03-05T10:11:12.345678+01:00 host sshd[123]: msg"
_SYSLOG = re.compile(
    r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+)\s+(?P<host>\S+)\s+"
    r"(?P<prog>sshd(?:-session|-auth)?)\[(?P<pid>\d+)\]:\s+(?P<msg>.*)$"
)
_REPEATED = re.compile(r"^message repeated (?P<n>\d+) times: \[\s*(?P<msg>.*?)\s*\]$")
_ACCEPTED = re.compile(
    r"^Accepted (?P<method>\S+) for (?P<user>.*?) from (?P<ip>\S+) port (?P<port>\d+)"
    r"(?: [^\s:]+)?(?:: (?P<key_type>\S+) (?P<fingerprint>\S+))?"
)
_FAILED = re.compile(
    r"^Failed (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>.*?) "
    r"from (?P<ip>\S+) port (?P<port>\d+)"
)
_INVALID = re.compile(r"^Invalid user (?P<user>.*?) from (?P<ip>\S+)(?: port (?P<port>\d+))?")


def parse_time(text: str, now: float) -> float | None:
    """Epoch seconds of a syslog timestamp. The traditional format has no year: take this
    year, or last year when that would put the line more than a day in the future (December
    lines read in January)."""
    if text[0].isdigit():
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    year = datetime.fromtimestamp(now).year
    for y in (year, year - 1):
        try:
            t = datetime.strptime(f"{y} {text}", "%Y %b %d %H:%M:%S").timestamp()
        except ValueError:
            return None  # Feb 29 of a non-leap year falls here too
        if t <= now + 86400:
            return t
    return None


def parse_line(line: str, now: float | None = None) -> tuple[DataType, dict[str, Any]] | None:
    """(data type, record) for an SSH login line; None for anything else."""
    m = _SYSLOG.match(line)
    if m is None:
        return None
    msg, count = m["msg"], 1
    if rep := _REPEATED.match(msg):  # rsyslog's duplicate suppression
        msg, count = rep["msg"], int(rep["n"])
    rec: dict[str, Any] = {
        "host": m["host"],
        "pid": int(m["pid"]),
        "timestamp": m["ts"],
        "time": parse_time(m["ts"], time.time() if now is None else now),
        "count": count,
        "line": line,
    }
    if a := _ACCEPTED.match(msg):
        rec.update(
            event="accepted",
            user=a["user"],
            ip=a["ip"],
            port=int(a["port"]),
            method=a["method"],
            key_type=a["key_type"],
            fingerprint=a["fingerprint"],
        )
        return DataType.SSH_ACCEPTED, rec
    if f := _FAILED.match(msg):
        rec.update(
            event="failed",
            user=f["user"],
            ip=f["ip"],
            port=int(f["port"]),
            method=f["method"],
            invalid_user=bool(f["invalid"]),
        )
        return DataType.SSH_FAILED, rec
    if i := _INVALID.match(msg):
        port = int(i["port"]) if i["port"] else None
        rec.update(event="invalid_user", user=i["user"], ip=i["ip"], port=port, method=None)
        return DataType.SSH_INVALID_USER, rec
    return None


class Follower:
    """One path followed like `tail -F`."""

    def __init__(self, rt: Runner, path: str, from_start: bool) -> None:
        self.rt = rt
        self.path = path
        self.fd: int | None = None
        self.ino: tuple[int, int] | None = None
        self.offset = 0
        self.buf = b""
        # Start at the end only of a file that exists when we start; one that appears later
        # is all news.
        self._at_start = not from_start

    def poll(self) -> bool:
        """Read what is new; True when a read budget was used up and more is waiting."""
        if self.fd is None:
            self._open("start" if self._at_start else "created")
            if self.fd is None:
                return False
        if self._drain(POLL_BUDGET):
            return True  # a backlog (from_start on a big file): rotation checks can wait
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # rotated away, new file not there yet: keep reading the old one
        except OSError as exc:
            self.rt.error("stat", exc, self.path)
            return False
        if (st.st_dev, st.st_ino) != self.ino:
            self._drain(None)  # all the logger wrote to the old file before it switched
            self._flush_partial()
            self._close()
            self._open("rotated")
            return self.fd is not None and self._drain(POLL_BUDGET)
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            return False
        if size < self.offset:  # copytruncate: the same file, emptied
            self.buf = b""
            self.offset = 0
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.rt.status(
                "following",
                path=self.path,
                inode=self.ino[1] if self.ino else None,
                offset=0,
                reason="truncated",
            )
            return self._drain(POLL_BUDGET)
        return False

    def _open(self, reason: str) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self._at_start = False
            return  # not there (yet): waiting is normal, not an error
        except OSError as exc:
            self.rt.error("open", exc, self.path)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", self.path)
            offset = os.lseek(fd, 0, os.SEEK_END) if reason == "start" else 0
        except OSError as exc:
            os.close(fd)
            self.rt.error("open", exc, self.path)
            return
        self.rt.ok("open", self.path)
        self._at_start = False
        self.fd, self.ino, self.offset, self.buf = fd, (st.st_dev, st.st_ino), offset, b""
        self.rt.log.info(
            "following %s (inode %d) from %d: %s", self.path, st.st_ino, offset, reason
        )
        self.rt.status("following", path=self.path, inode=st.st_ino, offset=offset, reason=reason)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.ino, self.buf = None, None, b""

    def _drain(self, budget: int | None) -> bool:
        """Read to the end, or until `budget` bytes (then True: more is waiting)."""
        assert self.fd is not None
        done = 0
        while budget is None or done < budget:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except OSError as exc:
                self.rt.error("read", exc, self.path)
                return False
            if not data:
                return False
            done += len(data)
            self.offset += len(data)
            self.buf += data
            *lines, self.buf = self.buf.split(b"\n")
            if len(self.buf) > MAX_LINE:
                lines.append(self.buf[:MAX_LINE])
                self.buf = b""
            for raw in lines:
                self._line(raw)
        return True

    def _flush_partial(self) -> None:
        if self.buf:
            self._line(self.buf)
            self.buf = b""

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        parsed = parse_line(line)
        if parsed is None:
            return
        data_type, rec = parsed
        rec["path"] = self.path
        ts = rec["time"]
        self.rt.emit(data_type, rec, int(ts * 1e9) if ts is not None else None)

    def close(self) -> None:
        self._close()


def run(rt: Runner) -> None:
    rt.configure()

    def followers() -> list[Follower]:
        from_start = rt.param_bool("from_start", False)
        return [Follower(rt, p, from_start) for p in rt.param_paths("paths", DEFAULT_PATHS)]

    tails = followers()
    backlog = any([t.poll() for t in tails])
    rt.status(
        "ready",
        paths=[t.path for t in tails],
        following=[t.path for t in tails if t.fd is not None],
    )
    try:
        while not rt.stopping:
            rt.sleep(0.0 if backlog else rt.param_float("poll_s", 1.0, minimum=0.01))
            for task_type, payload in rt.tasks():
                if task_type == TaskType.CONFIG:
                    paths = rt.param_paths("paths", DEFAULT_PATHS)
                    if paths != [t.path for t in tails]:
                        for t in tails:
                            t.close()
                        tails = followers()
                        for t in tails:
                            t.poll()
                        rt.status(
                            "reconfigured",
                            paths=[t.path for t in tails],
                            following=[t.path for t in tails if t.fd is not None],
                        )
                elif task_type == TaskType.RUN:
                    rt.error("task", f"unknown task {payload!r} (authlog has none)")
            if rt.stopping:
                break
            backlog = any([t.poll() for t in tails])
    finally:
        for t in tails:
            t.close()


def main() -> int:
    return run_main("authlog", run)


if __name__ == "__main__":
    sys.exit(main())
