"""The applied control state on disk, writable when the disk is full.

A stop accepted on a full disk must survive a restart while etcd is down; otherwise the agent
comes back running and escapes control. So the state does not live in a file that is replaced
on every save (a new file needs free blocks): it lives in a file whose blocks were written once
when the agent first started, and every save overwrites one of two fixed slots in place. Each
slot carries a generation number and a CRC, so a torn write (power loss mid-slot) leaves the
other slot, one save older, intact; a load takes the valid slot with the highest generation.

A read-only remount stops in-place writes too, so the same slots are kept a second time under
the runtime dir (`/run/hidsd` by default: a tmpfs, kept across agent restarts, not across
reboots). A load takes the newest valid slot of both files; the mirror counts only beside an
existing primary file, so a wiped data dir never resurrects an old state from /run.

Copy-on-write filesystems (btrfs, ZFS) need new blocks even for an in-place write: there the
mirror is what holds a stop accepted on a full disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from hidsd.agent.control import ControlState
from hidsd.base.storage import FD_ERRNOS, FdReserve, StorageHealth

STATE_FILE = "control-state.slots"
#: the format before slots (one file replaced on every save); read once, then migrated
LEGACY_STATE_FILE = "control-state.msgpack"
SLOT_SIZE = 4096
SLOTS = 2
_MAGIC = b"HSC1"
_HEADER = struct.Struct(">4sQII")  # magic, generation, payload length, crc32(payload)
MAX_PAYLOAD = SLOT_SIZE - _HEADER.size


def encode_slot(generation: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"state payload of {len(payload)} bytes exceeds a slot")
    head = _HEADER.pack(_MAGIC, generation, len(payload), zlib.crc32(payload))
    return (head + payload).ljust(SLOT_SIZE, b"\0")


def decode_slot(data: bytes) -> tuple[int, bytes] | None:
    """(generation, payload) of an intact slot; None for an empty, torn or foreign one."""
    if len(data) < _HEADER.size:
        return None
    magic, generation, length, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC or length > MAX_PAYLOAD or generation == 0:
        return None
    payload = data[_HEADER.size : _HEADER.size + length]
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return generation, payload


class SlotFile:
    """Two checksummed slots in a file written in full once, then only overwritten in place."""

    def __init__(self, path: Path, reserve: FdReserve | None = None, durable: bool = True):
        self.path = path
        self.reserve = reserve
        self.durable = durable

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.path, flags | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in FD_ERRNOS or self.reserve is None:
                raise
            with self.reserve.released():  # out of descriptors: use the spare one
                return os.open(self.path, flags | os.O_CLOEXEC, 0o600)

    def exists(self) -> bool:
        try:
            return self.path.stat().st_size == SLOT_SIZE * SLOTS
        except OSError:
            return False

    def ensure(self) -> None:
        """Create the file with every block written (zeros), so later saves need no space."""
        if self.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(b"\0" * (SLOT_SIZE * SLOTS))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def read(self) -> tuple[int, bytes] | None:
        """The newest intact slot. FileNotFoundError when there is no file."""
        fd = self._open(os.O_RDONLY)
        try:
            data = os.pread(fd, SLOT_SIZE * SLOTS, 0)
        finally:
            os.close(fd)
        slots = [decode_slot(data[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]) for i in range(SLOTS)]
        valid = [s for s in slots if s is not None]
        return max(valid, key=lambda s: s[0]) if valid else None

    def write(self, generation: int, payload: bytes) -> None:
        """Overwrite the slot of this generation in place (never the newest one). The file
        must exist (`ensure`): without O_CREAT a missing one is an error, never a new file."""
        slot = encode_slot(generation, payload)
        fd = self._open(os.O_WRONLY)
        try:
            n = os.pwrite(fd, slot, (generation % SLOTS) * SLOT_SIZE)
            if n != SLOT_SIZE:
                raise OSError(errno.EIO, f"short write ({n} of {SLOT_SIZE} bytes)", str(self.path))
            if self.durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def mirror_name(host: str, data_dir: Path) -> str:
    """One mirror per (host, data dir): several agents (the demo, tests) share /run."""
    digest = hashlib.sha256(f"{host}\0{data_dir.resolve()}".encode()).hexdigest()[:16]
    return f"control-state-{digest}.slots"


class StateFile:
    """The agent's control state: primary slots in the data dir, a mirror in the runtime dir.

    `save` never raises for storage: a failure is reported to `health` (and retried by
    `retry`); it returns whether at least one copy now holds the state.
    """

    def __init__(
        self,
        data_dir: Path,
        mirror_dir: Path | None = None,
        health: StorageHealth | None = None,
        reserve: FdReserve | None = None,
        host: str = "",
        durable: bool = True,
        log: Callable[..., None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.path = data_dir / STATE_FILE
        self.primary = SlotFile(self.path, reserve, durable)
        self.mirror = (
            SlotFile(mirror_dir / mirror_name(host, data_dir), reserve, durable)
            if mirror_dir is not None
            else None
        )
        self.health = health
        self.generation = 0
        self.pending: ControlState | None = None  # a save the primary still owes
        self.mirror_disabled = ""
        self._log = log or (lambda *a, **k: None)

    def prepare(self) -> None:
        """Reserve the slots (needs 8 KiB once). Failures are reported, never raised."""
        self._guard("state", self.path, self.primary.ensure)
        if self.mirror is not None:
            try:
                self.mirror.ensure()
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    # not root: no /run/hidsd. Say so once; the primary still holds the state.
                    self.mirror_disabled = f"{self.mirror.path.parent}: {exc.strerror}"
                    self._log("state_mirror_disabled", reason=self.mirror_disabled)
                    self.mirror = None
                elif self.health is not None:
                    self.health.failed("state_mirror", self.mirror.path, exc)

    def load(self) -> ControlState | None:
        """The newest state of primary and mirror (or the legacy file). ProtocolError if a
        slot is intact but its content is not a control state."""
        best: tuple[int, bytes] | None = None
        primary_exists = True
        try:
            best = self.primary.read()
        except FileNotFoundError:
            primary_exists = False
        except OSError as exc:
            self._report("state", self.path, exc)
        if self.mirror is not None and primary_exists:
            try:
                m = self.mirror.read()
            except FileNotFoundError:
                m = None
            except OSError as exc:
                self._report("state_mirror", self.mirror.path, exc)
                m = None
            if m is not None and (best is None or m[0] > best[0]):
                best = m
                behind = True  # the primary missed saves (read-only then): it catches up
            else:
                behind = False
        if best is None:
            return self._load_legacy()
        self.generation = best[0]
        state = ControlState.from_bytes(best[1])
        if primary_exists and self.mirror is not None and behind:
            self.pending = state
        return state

    def _load_legacy(self) -> ControlState | None:
        try:
            data = (self.data_dir / LEGACY_STATE_FILE).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._report("state", self.data_dir / LEGACY_STATE_FILE, exc)
            return None
        return ControlState.from_bytes(data)

    def save(self, state: ControlState) -> bool:
        """Write the state to both copies; True if at least one holds it now."""
        self.generation += 1
        payload = state.to_bytes()
        saved = self._guard("state", self.path, lambda: self._write(self.primary, payload))
        self.pending = None if saved else state
        if self.mirror is not None and self._guard(
            "state_mirror", self.mirror.path, lambda: self._write(self.mirror, payload)
        ):
            return True
        return saved

    def _write(self, slots: SlotFile | None, payload: bytes) -> None:
        assert slots is not None
        slots.ensure()  # a file lost or never created (full at first start) is made now
        slots.write(self.generation, payload)

    def retry(self) -> bool:
        """Write a save the primary still owes (called periodically); True when done."""
        state = self.pending
        if state is None:
            return True
        self.save(state)
        return self.pending is None

    def _guard(self, what: str, path: Path, fn: Callable[[], None]) -> bool:
        try:
            fn()
        except OSError as exc:
            self._report(what, path, exc)
            return False
        if self.health is not None and self.health.ok(what):
            self._log("storage_recovered", what=what, path=str(path))
        return True

    def _report(self, what: str, path: Path, exc: OSError) -> None:
        self._log("state_save_failed", what=what, path=str(path), error=str(exc))
        if self.health is not None:
            self.health.failed(what, path, exc, retried=True)
