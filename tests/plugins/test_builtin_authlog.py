"""Authlog plugin on a log file the test writes: accepted, failed and invalid-user lines are
reported with user, address, port, method, pid and the line's own time; history is not
replayed; rotation by rename (with late writes to the old file) and truncation are followed;
a file that appears later is read from its start."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from plugin_harness import start_plugin

from hidsd.plugins.builtin import DataType
from hidsd.plugins.builtin.authlog import parse_line
from hidsd.wire.frames import TaskType

ACCEPTED = (
    "Mar  5 10:11:12 web1 sshd[1234]: Accepted publickey for root from 10.0.0.1 port 51234 "
    "ssh2: ED25519 SHA256:4bXo0uIz0sZJ1D1yGg0qk8p0Ym0V2cQYkq1nYJ3hX2w"
)
FAILED = (
    "Mar  5 10:11:13 web1 sshd[1235]: Failed password for alice from 203.0.113.7 port 40000 ssh2"
)
INVALID = "Mar  5 10:11:14 web1 sshd[1236]: Invalid user admin from 198.51.100.9 port 2222"
FAILED_INVALID = (
    "2026-03-05T10:11:15.250000+01:00 web1 sshd[1236]: Failed password for invalid user admin "
    "from 2001:db8::9 port 2223 ssh2"
)
NOISE = "Mar  5 10:11:16 web1 CRON[99]: pam_unix(cron:session): session opened for user root"


def _append(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))


def test_logins_failures_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_text(ACCEPTED.replace("root", "history") + "\n")  # before start: not news
    params = {"paths": [str(log), str(tmp_path / "secure")], "poll_s": 0.05}
    with start_plugin("authlog", params, tmp_path) as p:
        start = p.wait_for(DataType.STATUS, lambda r: r["event"] == "following")
        assert (start["path"], start["reason"]) == (str(log), "start")
        assert start["offset"] == log.stat().st_size
        assert start["inode"] == log.stat().st_ino

        _append(log, ACCEPTED, NOISE, FAILED, INVALID, FAILED_INVALID)
        acc = p.wait_for(DataType.SSH_ACCEPTED)
        assert {k: acc[k] for k in ("event", "user", "ip", "port", "method", "pid", "host")} == {
            "event": "accepted",
            "user": "root",
            "ip": "10.0.0.1",
            "port": 51234,
            "method": "publickey",
            "pid": 1234,
            "host": "web1",
        }
        assert acc["key_type"] == "ED25519"
        assert acc["fingerprint"].startswith("SHA256:4bXo")
        assert acc["timestamp"] == "Mar  5 10:11:12"
        assert datetime.fromtimestamp(acc["time"]).strftime("%m-%d %H:%M:%S") == "03-05 10:11:12"
        assert acc["line"] == ACCEPTED
        assert acc["path"] == str(log)

        failed = p.wait_for_all(DataType.SSH_FAILED, lambda got: len(got) == 2)
        assert [
            (f["user"], f["ip"], f["port"], f["method"], f["invalid_user"]) for f in failed
        ] == [
            ("alice", "203.0.113.7", 40000, "password", False),
            ("admin", "2001:db8::9", 2223, "password", True),
        ]
        assert (
            failed[1]["time"] == datetime.fromisoformat("2026-03-05T10:11:15.25+01:00").timestamp()
        )
        inv = p.wait_for(DataType.SSH_INVALID_USER)
        assert (inv["user"], inv["ip"], inv["port"], inv["pid"]) == (
            "admin",
            "198.51.100.9",
            2222,
            1236,
        )
        # The frame's timestamp is the line's, not the time we read it.
        ts = [r.ts_ns for r in p.records if r.data_type == DataType.SSH_INVALID_USER]
        assert ts == [int(inv["time"] * 1e9)]
        assert [a["user"] for a in p.of_type(DataType.SSH_ACCEPTED)] == ["root"]  # no history

        # Rotation: the log is renamed, the daemon writes once more to the old file before
        # it reopens, then writes to the new one. Both lines arrive, in that order.
        mark = p.mark()
        log.rename(tmp_path / "auth.log.1")
        _append(tmp_path / "auth.log.1", ACCEPTED.replace("root", "late"))
        _append(log, ACCEPTED.replace("root", "fresh"))
        p.wait_for(DataType.SSH_ACCEPTED, lambda r: r["user"] == "fresh", since=mark)
        users = [a["user"] for a in p.of_type(DataType.SSH_ACCEPTED, mark)]
        assert users == ["late", "fresh"]
        rotated = p.wait_for(DataType.STATUS, lambda r: r["event"] == "following", since=mark)
        assert (rotated["reason"], rotated["offset"]) == ("rotated", 0)
        assert rotated["inode"] == log.stat().st_ino

        # Truncation in place (copytruncate), then a shorter write.
        mark = p.mark()
        with log.open("w") as f:
            f.write(INVALID.replace("admin", "x") + "\n")
        inv = p.wait_for(DataType.SSH_INVALID_USER, lambda r: r["user"] == "x", since=mark)
        trunc = p.wait_for(DataType.STATUS, lambda r: r["event"] == "following", since=mark)
        assert trunc["reason"] == "truncated"
    assert p.of_type(DataType.ERROR) == []


def test_file_that_appears_later_is_read_from_its_start(tmp_path: Path) -> None:
    secure = tmp_path / "secure"
    params = {"paths": [str(secure), str(tmp_path)], "poll_s": 0.05}  # the 2nd is a directory
    with start_plugin("authlog", params, tmp_path) as p:
        ready = p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
        assert ready["following"] == []
        err = p.wait_for(DataType.ERROR)
        assert (err["op"], err["path"]) == ("open", str(tmp_path))

        repeated = (
            "Mar  5 10:11:20 db1 sshd[77]: message repeated 3 times: [ "
            + FAILED.split(": ", 1)[1]
            + "]"
        )
        secure.write_text(f"{ACCEPTED}\n{repeated}\n")
        created = p.wait_for(DataType.STATUS, lambda r: r["event"] == "following")
        assert (created["reason"], created["offset"]) == ("created", 0)
        assert p.wait_for(DataType.SSH_ACCEPTED)["path"] == str(secure)
        rep = p.wait_for(DataType.SSH_FAILED)
        assert (rep["count"], rep["user"], rep["host"]) == (3, "alice", "db1")
        # A partial line waits for its end.
        with secure.open("a") as f:
            f.write(INVALID[:40])
            f.flush()
            os.fsync(f.fileno())
        time.sleep(0.25)  # five polls
        assert p.of_type(DataType.SSH_INVALID_USER) == []
        with secure.open("a") as f:
            f.write(INVALID[40:] + "\n")
        assert p.wait_for(DataType.SSH_INVALID_USER)["line"] == INVALID
        assert len(p.of_type(DataType.ERROR)) == 1  # the directory, reported once

        # A new CONFIG with other paths: the plugin follows those from then on.
        other = tmp_path / "other.log"
        p.send(TaskType.CONFIG, {"paths": [str(other)], "poll_s": 0.05})
        p.wait_for(DataType.STATUS, lambda r: r["event"] == "reconfigured")
        _append(other, ACCEPTED.replace("root", "carol"))
        rec = p.wait_for(DataType.SSH_ACCEPTED, lambda r: r["user"] == "carol")
        assert rec["path"] == str(other)


def test_parse_line_formats() -> None:
    newer = (
        "Mar  5 10:11:12 h sshd-session[9]: Accepted password for bob from 10.1.1.1 port 22 ssh2"
    )
    kind, rec = parse_line(newer) or (None, {})
    assert kind == DataType.SSH_ACCEPTED
    assert (rec["user"], rec["method"], rec["key_type"]) == ("bob", "password", None)
    empty = "Mar  5 10:11:12 h sshd[9]: Invalid user  from 10.1.1.1 port 22"
    kind, rec = parse_line(empty) or (None, {})
    assert (kind, rec["user"], rec["ip"]) == (DataType.SSH_INVALID_USER, "", "10.1.1.1")
    assert parse_line(NOISE) is None
    assert parse_line("garbage") is None
    # A December line read in January belongs to last year.
    jan2 = datetime(2027, 1, 2, 0, 0, 0).timestamp()
    _, rec = parse_line(ACCEPTED.replace("Mar  5", "Dec 31"), now=jan2) or (None, {})
    assert datetime.fromtimestamp(rec["time"]).year == 2026
