"""FIM plugin on files the test creates: baseline hashes, in-place modification, replacement by
rename (vim, sed -i), deletion, creation under a directory that does not exist yet, attribute
changes, directory entries, and paths it cannot read. Idle, it must not use the CPU."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import psutil
from plugin_harness import PluginRun, start_plugin

from hidsd.plugins.builtin import DataType
from hidsd.wire.frames import TaskType


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _change(p: PluginRun, path: Path, change: str, since: int) -> dict[str, Any]:
    rec: dict[str, Any] = p.wait_for(
        DataType.FIM_CHANGE,
        lambda r: r["path"] == str(path) and r["change"] == change,
        since=since,
        what=f"{change} {path}",
    )
    return rec


def _put(path: Path, data: bytes, scratch: Path) -> None:
    """Create `path` whole, as crontab(1) does: written elsewhere, renamed in. (A file created
    and then written may be seen in between: that is a "created" and then a "modified".)"""
    tmp = scratch / f".{path.name}.new"
    tmp.write_bytes(data)
    tmp.rename(path)


def test_baseline_then_every_kind_of_change(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    passwd, shadow = etc / "passwd", etc / "shadow"
    passwd.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    shadow.write_bytes(b"root:*:19000:0:99999:7:::\n")
    passwd.chmod(0o644)
    shadow.chmod(0o640)
    crontabs = tmp_path / "crontabs"
    crontabs.mkdir()
    (crontabs / "root").write_bytes(b"* * * * * true\n")
    keys = tmp_path / "root" / ".ssh" / "authorized_keys"  # neither directory exists yet
    paths = [str(passwd), str(shadow), str(crontabs), str(keys)]

    with start_plugin("fim", {"paths": paths}, tmp_path) as p:
        p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
        base = {r["path"]: r for r in p.of_type(DataType.FIM_BASELINE)}
        assert set(base) == {*paths, str(crontabs / "root")}
        assert base[str(passwd)]["sha256"] == sha(passwd.read_bytes())
        assert base[str(passwd)]["size"] == passwd.stat().st_size
        assert base[str(shadow)]["mode"] == "0640"
        assert base[str(shadow)]["uid"] == os.getuid()
        assert base[str(shadow)]["mtime"] == shadow.stat().st_mtime
        assert base[str(crontabs)]["type"] == "dir"
        assert base[str(crontabs / "root")]["sha256"] == sha(b"* * * * * true\n")
        assert base[str(keys)] == {"path": str(keys), "reason": "start", "status": "missing"}

        # In-place modification.
        mark = p.mark()
        with passwd.open("ab") as f:
            f.write(b"mallory:x:0:0::/root:/bin/sh\n")
        rec = _change(p, passwd, "modified", mark)
        assert rec["old_sha256"] == base[str(passwd)]["sha256"]
        assert rec["new_sha256"] == sha(passwd.read_bytes())
        assert "sha256" in rec["changed"]

        # Replacement by rename, the way vim saves: move the original aside, write a new
        # file, remove the backup. One "modified", never a "deleted" in between.
        mark = p.mark()
        old_ino = shadow.stat().st_ino
        shadow.rename(etc / "shadow~")
        shadow.write_bytes(b"root:$6$new:19000:0:99999:7:::\n")
        (etc / "shadow~").unlink()
        rec = _change(p, shadow, "modified", mark)
        assert rec["new_sha256"] == sha(shadow.read_bytes())
        assert rec["old"]["ino"] == old_ino != rec["new"]["ino"]
        # ... and the way sed -i and dpkg do: write a temporary, rename it over the file.
        mark = p.mark()
        tmp = etc / ".passwd.tmp"
        tmp.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
        tmp.rename(passwd)
        rec = _change(p, passwd, "modified", mark)
        assert rec["new_sha256"] == sha(passwd.read_bytes())

        # Attribute change only.
        mark = p.mark()
        passwd.chmod(0o666)
        rec = _change(p, passwd, "attrib", mark)
        assert rec["changed"] == ["mode"]
        assert (rec["old"]["mode"], rec["new"]["mode"]) == ("0644", "0666")
        assert rec["old_sha256"] == rec["new_sha256"] == sha(passwd.read_bytes())

        # Creation where not even the directories exist yet.
        mark = p.mark()
        keys.parent.mkdir(parents=True)
        _put(keys, b"ssh-ed25519 AAAA attacker\n", tmp_path)
        rec = _change(p, keys, "created", mark)
        assert (rec["old_sha256"], rec["old"]) == (None, None)
        assert rec["new_sha256"] == sha(b"ssh-ed25519 AAAA attacker\n")

        # Directory entries: a new crontab, a removed one.
        mark = p.mark()
        _put(crontabs / "bob", b"@reboot nc -l 4444\n", tmp_path)
        (crontabs / "root").unlink()
        rec = _change(p, crontabs / "bob", "created", mark)
        assert rec["new_sha256"] == sha(b"@reboot nc -l 4444\n")
        rec = _change(p, crontabs / "root", "deleted", mark)
        assert rec["old_sha256"] == sha(b"* * * * * true\n")
        assert rec["new"] is None

        # Deletion.
        mark = p.mark()
        shadow.unlink()
        rec = _change(p, shadow, "deleted", mark)
        assert rec["new_sha256"] is None

        # No change was reported twice or wrongly: every record matches a step above.
        kinds = [(r["path"], r["change"]) for r in p.of_type(DataType.FIM_CHANGE)]
        assert kinds == [
            (str(passwd), "modified"),
            (str(shadow), "modified"),
            (str(passwd), "modified"),
            (str(passwd), "attrib"),
            (str(keys), "created"),
            (str(crontabs / "bob"), "created"),
            (str(crontabs / "root"), "deleted"),
            (str(shadow), "deleted"),
        ]

        # The baseline again, on request, reflects all of it.
        mark = p.mark()
        p.send(TaskType.RUN, {"task": "baseline"})
        for path in (*paths, str(crontabs / "bob")):
            p.wait_for(DataType.FIM_BASELINE, lambda r, x=path: r["path"] == x, since=mark)
        again = {r["path"]: r for r in p.of_type(DataType.FIM_BASELINE, mark)}
        assert again[str(shadow)]["status"] == "missing"
        assert again[str(keys)]["status"] == "present"
        assert str(crontabs / "root") not in again
        assert again[str(crontabs / "bob")]["reason"] == "task"
    assert p.of_type(DataType.ERROR) == []


def test_unreadable_and_special_paths_and_idle_cpu(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for a hash would block forever
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    watched = tmp_path / "watched"
    watched.write_text("a")
    paths = [str(fifo), str(not_a_dir / "child"), str(watched)]
    with start_plugin("fim", {"paths": paths}, tmp_path) as p:
        p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
        base = {r["path"]: r for r in p.of_type(DataType.FIM_BASELINE)}
        assert base[str(fifo)]["type"] == "other"
        assert base[str(fifo)]["sha256"] is None
        err = p.wait_for(DataType.ERROR)
        assert (err["op"], err["path"], err["errno"]) == ("read", paths[1], "ENOTDIR")

        # Idle: inotify blocks in select, so a second of nothing costs (almost) no CPU.
        proc = psutil.Process(p.proc.pid)
        before = sum(proc.cpu_times()[:2])
        time.sleep(1.0)
        assert sum(proc.cpu_times()[:2]) - before < 0.05

        mark = p.mark()
        watched.write_text("b")
        rec = _change(p, watched, "modified", mark)
        assert rec["new_sha256"] == sha(b"b")
        assert len(p.of_type(DataType.ERROR)) == 1  # reported once, not on every event
