"""FIM: file integrity of configured paths, inotify-driven, with a SHA-256 of each file.

At start, a baseline record per path (files, and each entry of a directory: one level, not
recursive); then a change record whenever a file's content or attributes change. inotify
events are only hints that say *where* to look: every check re-reads the path and compares
it with what was last reported, so duplicate, reordered or coalesced events cannot produce
wrong records, and a lost event (queue overflow) is healed by a full re-check.

Why directory watches: editors and package managers replace files by rename (vim, sed -i,
dpkg), which leaves a watch on the old inode watching nothing. So each file is watched through
its parent directory (which sees create/delete/rename/write/attrib of its entries), a missing
parent through its nearest existing ancestor (so `mkdir ~/.ssh; echo key >> authorized_keys`
is seen), and a directory path through itself (entries) and its parent (the directory itself).
Writes through a hard link in another directory escape directory watches: the periodic
re-check (`rescan_s`) catches those.

Params: paths, rescan_s (600), settle_s (0.05: let a burst of writes finish before hashing),
max_bytes (64 MiB: larger files get size/mtime but no hash), poll_s (5: re-check period when
inotify is unavailable). RUN task "baseline" re-emits the baseline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import time
from typing import Any

import inotify_simple  # type: ignore[import-untyped]

from hidsd.plugins.builtin import DataType, Runner, is_task, run_main
from hidsd.wire.frames import TaskType

DEFAULT_PATHS = (
    "/etc/passwd",
    "/etc/shadow",
    "/etc/sudoers",
    "/etc/ssh/sshd_config",
    "/etc/crontab",
    "/var/spool/cron/crontabs",
    "/root/.ssh/authorized_keys",
)
_F = inotify_simple.flags
DIR_MASK = int(
    _F.CREATE
    | _F.DELETE
    | _F.MOVED_FROM
    | _F.MOVED_TO
    | _F.CLOSE_WRITE
    | _F.MODIFY
    | _F.ATTRIB
    | _F.DELETE_SELF
    | _F.MOVE_SELF
    | _F.ONLYDIR
)
IN_IGNORED = int(_F.IGNORED)
IN_Q_OVERFLOW = int(_F.Q_OVERFLOW)
CHUNK = 1 << 20
# Compared to decide "attrib"; a directory's own size/mtime change with every entry change,
# and entries are reported one by one.
ATTR_FIELDS = ("mode", "uid", "gid", "ino", "mtime", "size")
DIR_ATTR_FIELDS = ("mode", "uid", "gid", "ino")

State = dict[str, Any]


def show(path: str) -> str:
    """A path as valid UTF-8 for the record (file names are bytes; keep what was there)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"  # fifo, socket, device: never opened for hashing


def _from_stat(st: os.stat_result) -> State:
    return {
        "type": _kind(st.st_mode),
        "sha256": None,
        "size": st.st_size,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": st.st_mtime,
        "ino": st.st_ino,
    }


def file_state(path: str, max_bytes: int) -> tuple[State | None, OSError | None]:
    """(state, None), (None, None) when the path does not exist, or (state without hash,
    error) when it exists but cannot be read. Only regular files are opened (a device or a
    FIFO never is), non-blocking in case one was swapped in after the stat, and the hash and
    attributes come from the same open descriptor."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, exc  # a symlink loop, or a parent we may not search
    if not stat.S_ISREG(st.st_mode):
        return _from_stat(st), None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return _from_stat(st), exc
    try:
        st = os.fstat(fd)
        state = _from_stat(st)
        if state["type"] == "file" and st.st_size <= max_bytes:
            h = hashlib.sha256()
            while chunk := os.read(fd, CHUNK):
                h.update(chunk)
            state["sha256"] = h.hexdigest()
        return state, None
    except OSError as exc:
        return _from_stat(st), exc
    finally:
        os.close(fd)


def compare(old: State | None, new: State | None) -> tuple[str, list[str]] | None:
    """(change, changed fields) or None when nothing that matters differs."""
    if old is None and new is None:
        return None
    if old is None:
        return "created", []
    if new is None:
        return "deleted", []
    fields = DIR_ATTR_FIELDS if new["type"] == "dir" == old["type"] else ATTR_FIELDS
    changed = [f for f in ("type", "sha256", *fields) if old.get(f) != new.get(f)]
    if not changed:
        return None
    if "type" in changed or "sha256" in changed:
        return "modified", changed
    if new["sha256"] is None and ("size" in changed or "mtime" in changed):
        return "modified", changed  # not hashed (too large, unreadable): size/mtime decide
    return "attrib", changed


def nearest_dir(path: str) -> str:
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


class Fim:
    def __init__(self, rt: Runner, targets: list[str]) -> None:
        self.rt = rt
        self.targets = sorted(set(targets))
        self.max_bytes = rt.param_int("max_bytes", 64 << 20, minimum=0)
        self.settle_s = rt.param_float("settle_s", 0.05, minimum=0.0)
        self.tracked: dict[str, State | None] = {}
        self.entries: dict[str, set[str]] = {}  # directory target -> entry paths
        self.pending: dict[str, float] = {}  # path that vanished -> when to call it deleted
        self.dir_wd: dict[str, int] = {}
        self.wd_dirs: dict[int, set[str]] = {}
        self.degraded = False  # some watch could not be added: poll as well
        self.inotify: Any = None
        try:
            self.inotify = inotify_simple.INotify(nonblocking=True)
        except OSError as exc:
            self.rt.error("inotify", exc)
            self.degraded = True

    def fileno(self) -> int | None:
        return None if self.inotify is None else int(self.inotify.fileno())

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None

    # ------------------------------------------------------------------ checking

    def check(self, path: str, emit: bool, defer: bool = True) -> None:
        """Re-read `path`; emit a change record if it differs from what was last seen."""
        old = self.tracked.get(path)
        new, err = file_state(path, self.max_bytes)
        if err is not None:
            self.rt.error("read", err, show(path))
            if new is not None:
                new["error"] = str(err)
        else:
            self.rt.ok("read", show(path))
        if new is None and old is not None and defer and emit:
            # Renamed away: an editor's replace-by-rename puts the new file in place a moment
            # later, and that is a modification, not a deletion followed by a creation.
            self.pending.setdefault(path, time.monotonic() + max(self.settle_s * 4, 0.2))
            return
        self.pending.pop(path, None)
        self.tracked[path] = new
        verdict = compare(old, new) if emit else None
        if verdict is None:
            return
        change, changed = verdict
        self.rt.log.info("%s %s %s", change, show(path), ",".join(changed))
        self.rt.emit(
            DataType.FIM_CHANGE,
            {
                "path": show(path),
                "change": change,
                "changed": changed,
                "old_sha256": old["sha256"] if old else None,
                "new_sha256": new["sha256"] if new else None,
                "old": old,
                "new": new,
            },
        )

    def check_target(self, target: str, emit: bool) -> None:
        """The target, and for a directory every entry (added, gone or still there)."""
        self.check(target, emit)
        before = self.entries.get(target, set())
        now: set[str] = set()
        is_dir = os.path.isdir(target)  # the truth now, even while a deletion is deferred
        if is_dir:
            try:
                now = {os.path.join(target, n) for n in os.listdir(target)}
                self.rt.ok("list", show(target))
            except FileNotFoundError:
                is_dir = False
            except OSError as exc:
                self.rt.error("list", exc, show(target))
                now = before
        if is_dir:
            self.entries[target] = now
        else:
            self.entries.pop(target, None)
        for entry in sorted(before | now):
            self.check_entry(entry, emit)

    def check_entry(self, entry: str, emit: bool) -> None:
        """A directory target's entry."""
        self.check(entry, emit)
        self._file_entry(entry)

    def _file_entry(self, entry: str) -> None:
        """Keep an entry in its directory's set while it exists, forget it once it is gone
        for good (not while its deletion is deferred)."""
        if entry in self.pending:
            return
        parent = os.path.dirname(entry)
        if self.tracked.get(entry) is not None:
            if parent in self.entries:
                self.entries[parent].add(entry)
        elif entry not in self.targets:
            self.tracked.pop(entry, None)
            self.entries.get(parent, set()).discard(entry)

    def check_all(self, emit: bool) -> None:
        for t in self.targets:
            self.check_target(t, emit)

    def due_pending(self) -> float | None:
        """Decide deferred deletions whose time has come; the next deadline, if any."""
        now = time.monotonic()
        for path, deadline in sorted(self.pending.items()):
            if deadline <= now:
                self.check(path, emit=True, defer=False)
                self._file_entry(path)
        return min(self.pending.values(), default=None)

    # ------------------------------------------------------------------ watching

    def desired_dirs(self) -> set[str]:
        out: set[str] = set()
        for t in self.targets:
            if t in self.entries:  # an existing directory: watch its entries
                out.add(t)
            out.add(nearest_dir(os.path.dirname(t)))
        return out

    def _forget(self, d: str, wd: int) -> None:
        dirs = self.wd_dirs.get(wd)
        if dirs is not None:
            dirs.discard(d)
            if not dirs:
                del self.wd_dirs[wd]
                # Fails when the watch went with its directory (IN_IGNORED is on its way).
                with contextlib.suppress(OSError):
                    self.inotify.rm_watch(wd)

    def reconcile(self) -> set[str]:
        """Watch exactly the directories the targets need now; returns newly watched ones."""
        if self.inotify is None:
            return set()
        want = self.desired_dirs()
        added: set[str] = set()
        failed = False
        for d in sorted(want):
            try:
                wd = int(self.inotify.add_watch(d, DIR_MASK))
            except OSError as exc:  # ENOSPC (max_user_watches), EACCES, or d just vanished
                self.rt.error("watch", exc, show(d))
                failed = True
                continue
            self.rt.ok("watch", show(d))
            old = self.dir_wd.get(d)
            if old != wd:
                if old is not None:
                    self._forget(d, old)
                self.dir_wd[d] = wd
                self.wd_dirs.setdefault(wd, set()).add(d)
                added.add(d)
        for d in set(self.dir_wd) - want:
            self._forget(d, self.dir_wd.pop(d))
        self.degraded = failed
        return added

    def settle_watches(self, emit: bool) -> None:
        """Watch, then re-check what lies under each new watch (it may have changed before
        the watch existed), until the set of watches stops changing (mkdir -p a/b/c)."""
        for _ in range(64):
            added = self.reconcile()
            if not added:
                return
            for t in self.targets:
                if any(under(t, d) for d in added):
                    self.check_target(t, emit)

    def start(self) -> None:
        self.check_all(emit=False)
        self.settle_watches(emit=False)
        self.check_all(emit=False)  # what the watches now guard
        self.emit_baseline("start")

    def emit_baseline(self, reason: str) -> None:
        for path in sorted(self.tracked):
            state = self.tracked[path]
            record: State = {"path": show(path), "reason": reason}
            if state is None:
                record["status"] = "missing"
            else:
                record.update(status="present", **state)
            self.rt.emit(DataType.FIM_BASELINE, record)

    # ------------------------------------------------------------------ events

    def handle_events(self) -> None:
        if self.settle_s:
            time.sleep(self.settle_s)
        try:
            events = self.inotify.read(timeout=0)
        except OSError as exc:
            self.rt.error("inotify_read", exc)
            self.check_all(emit=True)
            return
        dirty: set[str] = set()
        everything = False
        for ev in events:
            if ev.mask & IN_Q_OVERFLOW:
                everything = True
                continue
            dirs = self.wd_dirs.get(ev.wd, set())
            if ev.mask & IN_IGNORED:  # the kernel dropped the watch (directory deleted)
                for d in self.wd_dirs.pop(ev.wd, set()):
                    if self.dir_wd.get(d) == ev.wd:
                        del self.dir_wd[d]
            for d in dirs:
                dirty.add(os.path.join(d, ev.name) if ev.name else d)
        if everything:
            self.rt.log.warning("inotify queue overflowed: re-checking everything")
            self.check_all(emit=True)
        else:
            self.check_paths(dirty)
        self.settle_watches(emit=True)

    def check_paths(self, dirty: set[str]) -> None:
        targets: set[str] = set()
        entries: set[str] = set()
        for p in dirty:
            targets.update(t for t in self.targets if under(t, p))  # it, or an ancestor
            if os.path.dirname(p) in self.entries and p not in self.targets:
                entries.add(p)
        for t in sorted(targets):
            self.check_target(t, emit=True)
        for p in sorted(entries):
            self.check_entry(p, emit=True)


def run(rt: Runner) -> None:
    rt.configure()
    paths = rt.param_paths("paths", DEFAULT_PATHS)
    fim = Fim(rt, paths)
    fim.start()
    rt.status("ready", paths=[show(p) for p in fim.targets], watches=sorted(fim.dir_wd))
    next_rescan = time.monotonic() + rt.param_float("rescan_s", 600.0, minimum=1.0)
    next_pending: float | None = None
    try:
        while not rt.stopping:
            polling = fim.degraded or fim.fileno() is None
            period = rt.param_float("poll_s", 5.0, minimum=0.1) if polling else None
            deadline = min(d for d in (next_rescan, next_pending) if d is not None)
            timeout = deadline - time.monotonic()
            if period is not None:
                timeout = min(timeout, period)
            fd = fim.fileno()
            ready = rt.sleep(timeout, [fd] if fd is not None else [])
            for task_type, payload in rt.tasks():
                if task_type == TaskType.RUN and is_task(payload, "baseline"):
                    fim.emit_baseline("task")
                elif task_type == TaskType.RUN:
                    rt.error("task", f"unknown task {payload!r} (known: baseline)")
                elif task_type == TaskType.CONFIG:
                    new_paths = rt.param_paths("paths", DEFAULT_PATHS)
                    if sorted(set(new_paths)) != fim.targets:
                        fim.close()
                        fim = Fim(rt, new_paths)
                        fim.start()
                        rt.status("reconfigured", paths=[show(p) for p in fim.targets])
            if rt.stopping:
                break
            if ready:
                fim.handle_events()
            next_pending = fim.due_pending()
            now = time.monotonic()
            if now >= next_rescan or (polling and not ready):
                fim.check_all(emit=True)
                fim.settle_watches(emit=True)
                if now >= next_rescan:
                    next_rescan = now + rt.param_float("rescan_s", 600.0, minimum=1.0)
    finally:
        fim.close()


def main() -> int:
    return run_main("fim", run)


if __name__ == "__main__":
    sys.exit(main())
