"""The on-disk spool: telemetry batches that could not be published, kept until they can be.

One file per batch, named epoch-first_seq-count so that a sorted listing is oldest first and
a batch read back after a restart keeps its message id (a resend is de-duplicated). Bounded in
bytes; written through the one atomic writer, so a crash leaves a whole batch or a `.tmp`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from hidsd.base.files import write_atomic
from hidsd.base.storage import FD_ERRNOS, StorageHealth


@dataclass
class Batch:
    epoch: int
    first_seq: int
    count: int
    body: bytes

    @property
    def name(self) -> str:
        return f"{self.epoch:020d}-{self.first_seq:020d}-{self.count}"


class Spool:
    """Batches that could not be published, one file each, oldest first, bounded in bytes.

    Storage errors never escape: a batch that cannot be written is refused (the caller counts
    it as `dropped_spool_full`), one that cannot be read back is dropped and counted, one that
    cannot be deleted after it was sent is forgotten (a resend after a restart is de-duplicated
    by its message id). Each failure goes to `health`, and clears there on the next success.
    """

    def __init__(
        self, directory: Path, max_bytes: int, health: StorageHealth | None = None
    ) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.health = health
        self.what = f"spool:{directory.name}"
        self._files: deque[tuple[Path, int]] = deque()
        self.unreadable_records = 0
        self.undeletable = 0
        self.bytes = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for p in sorted(self.dir.glob("*.batch")):
                self._files.append((p, p.stat().st_size))
            for p in self.dir.glob("*.tmp"):
                p.unlink(missing_ok=True)  # a write interrupted by a crash
        except OSError as exc:
            self._failed(exc)  # what was listed stays; put() retries the directory
        self.bytes = sum(size for _, size in self._files)

    def __len__(self) -> int:
        return len(self._files)

    def _failed(self, exc: OSError) -> None:
        if self.health is not None:
            self.health.failed(self.what, self.dir, exc)

    def _ok(self) -> None:
        if self.health is not None:
            self.health.ok(self.what)

    def put(self, batch: Batch) -> bool:
        """Append; False (nothing kept) when over the bound or the disk refuses it."""
        size = len(batch.body) + 64
        if self.bytes + size > self.max_bytes:
            return False
        name = self.dir / f"{batch.name}.batch"
        try:
            write_atomic(name, batch.body)
        except OSError as exc:
            self._failed(exc)
            return False
        self._ok()
        self._files.append((name, size))
        self.bytes += size
        return True

    def peek(self) -> Batch | None:
        """The oldest batch. One that cannot be read is dropped and counted; out of
        descriptors, None (try again later)."""
        while self._files:
            path, _ = self._files[0]
            epoch, seq, count = path.stem.split("-")
            try:
                body = path.read_bytes()
            except OSError as exc:
                self._failed(exc)
                if exc.errno in FD_ERRNOS:
                    return None
                self.unreadable_records += int(count)
                self._forget()
                continue
            self._ok()
            return Batch(int(epoch), int(seq), int(count), body)
        return None

    def pop(self) -> None:
        path, _ = self._files[0]
        self._forget()
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # read-only now: sent anyway; a resend is de-duplicated
            self.undeletable += 1
            self._failed(exc)

    def _forget(self) -> None:
        _, size = self._files.popleft()
        self.bytes -= size
