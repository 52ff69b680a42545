"""The agent's view of its own storage: what could not be written, why, and whether it is back.

A full disk, a read-only remount, an I/O error or an exhausted descriptor table must never kill
the agent (R10). Every writer in the agent catches its `OSError`, tells `StorageHealth` what
failed (`failed`) or that it worked again (`ok`), and carries on with what it can keep. The
heartbeat carries the resulting report, so an operator sees `full` / `read-only` / `error` with
the path before anything is lost, and sees it clear by itself once space is back.

`FdReserve` keeps one descriptor spare (the libuv/nginx trick): when the process is out of
descriptors, a writer that must succeed (the control state) releases it, does its one open,
and takes it back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class StorageStatus(StrEnum):
    """The agent's storage as an operator reads it (the worst writer failing now)."""

    OK = "ok"
    FULL = "full"
    READ_ONLY = "read-only"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class StorageReport:
    """What the heartbeat says about the agent's data dir and descriptors."""

    status: StorageStatus
    path: str
    error: str = ""
    free_bytes: int | None = None
    #: writer -> "status: error (path)", for every writer failing now
    failing: dict[str, str] = field(default_factory=dict)
    errors_total: int = 0
    recoveries: int = 0
    fds_open: int | None = None
    fds_limit: int | None = None


#: errno values that mean "out of descriptors" (the process's table, or the system's)
FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


def classify(exc: OSError) -> StorageStatus:
    """Which of the operator-facing states an OSError means."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageStatus.FULL
    if exc.errno == errno.EROFS:
        return StorageStatus.READ_ONLY
    return StorageStatus.ERROR


def describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "E?")
    return f"{name}: {exc.strerror or exc}"


@dataclass(frozen=True, slots=True)
class Failure:
    """One writer that is failing now."""

    what: str
    status: StorageStatus
    path: str
    error: str
    since: float
    count: int
    errno: int | None = None
    #: the writer retries by itself and clears the failure when its retry succeeds
    retried: bool = False


@dataclass(slots=True)
class StorageHealth:
    """Failing writers by name, and the data dir's own state (free space, read-only flag)."""

    data_dir: Path
    clock: Callable[[], float] = time.time
    #: below this many free bytes the data dir counts as full even before a write fails
    low_space_bytes: int = 1 << 20
    failures: dict[str, Failure] = field(default_factory=dict)
    errors_total: int = 0
    recoveries: int = 0
    free_bytes: int | None = None
    fs_read_only: bool = False
    probe_error: str = ""

    def failed(
        self, what: str, path: Path | str, exc: OSError, retried: bool = False
    ) -> StorageStatus:
        """Record a failed write; returns its status. `retried`: the writer owes a save and
        retries it (the probe must not clear it: only the retry knows)."""
        status = classify(exc)
        old = self.failures.get(what)
        since = old.since if old is not None and old.status is status else self.clock()
        count = (old.count if old is not None else 0) + 1
        self.failures[what] = Failure(
            what, status, str(path), describe(exc), since, count, exc.errno, retried
        )
        self.errors_total += 1
        return status

    def ok(self, what: str) -> bool:
        """A writer succeeded; True if that ended a failure."""
        if self.failures.pop(what, None) is None:
            return False
        self.recoveries += 1
        return True

    def probe(self) -> None:
        """statvfs of the data dir: free space and the read-only flag (no write needed)."""
        try:
            st = os.statvfs(self.data_dir)
        except OSError as exc:
            self.probe_error = describe(exc)
            return
        self.probe_error = ""
        self.free_bytes = st.f_bavail * st.f_frsize
        self.fs_read_only = bool(st.f_flag & os.ST_RDONLY)
        # Writers that only write when there is something to write (spool, plugin logs,
        # plugin starts) would otherwise report a failure until their next write: clear them
        # once the probe sees space and write access, or descriptors, back. Writers that owe a
        # save clear on their own retry.
        idle = {w: f for w, f in self.failures.items() if not f.retried}
        if not self.fs_read_only and self.free_bytes >= self.low_space_bytes:
            for what, f in idle.items():
                if f.status is not StorageStatus.ERROR:
                    self.ok(what)
        if any(f.errno in FD_ERRNOS for f in idle.values()) and _can_open():
            for what, f in idle.items():
                if f.errno in FD_ERRNOS:
                    self.ok(what)

    @property
    def status(self) -> StorageStatus:
        if self.fs_read_only:
            return StorageStatus.READ_ONLY
        worst = self._worst()
        if worst is not None:
            return worst.status
        if self.free_bytes is not None and self.free_bytes < self.low_space_bytes:
            return StorageStatus.FULL
        if self.probe_error:
            return StorageStatus.ERROR
        return StorageStatus.OK

    _ORDER = (StorageStatus.ERROR, StorageStatus.READ_ONLY, StorageStatus.FULL)

    def _worst(self) -> Failure | None:
        if not self.failures:
            return None
        return min(self.failures.values(), key=lambda f: (self._ORDER.index(f.status), f.since))

    def report(self) -> StorageReport:
        worst = self._worst()
        status = self.status
        if worst is not None:
            path, error = worst.path, worst.error
        elif status is StorageStatus.READ_ONLY:
            path, error = str(self.data_dir), "the filesystem is mounted read-only"
        elif status is StorageStatus.FULL:
            path, error = str(self.data_dir), f"only {self.free_bytes} bytes free"
        else:
            path, error = str(self.data_dir), self.probe_error
        return StorageReport(
            status=status,
            path=path,
            error=error,
            free_bytes=self.free_bytes,
            failing={
                f.what: f"{f.status.value}: {f.error} ({f.path})" for f in self.failures.values()
            },
            errors_total=self.errors_total,
            recoveries=self.recoveries,
            fds_open=_count_fds(),
            fds_limit=_fd_limit(),
        )


def _can_open() -> bool:
    try:
        os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def _count_fds() -> int | None:
    """Open descriptors of this process. listdir needs one descriptor itself: None without."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return None


def _fd_limit() -> int | None:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return None


class FdReserve:
    """One descriptor held back for writes that must not fail for lack of descriptors."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.used = 0
        self.take()

    def take(self) -> bool:
        if self._fd is not None:
            return True
        try:
            self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        return True

    @property
    def held(self) -> bool:
        return self._fd is not None

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Give the spare descriptor up for the body, then take one back."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.used += 1
        try:
            yield
        finally:
            self.take()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
