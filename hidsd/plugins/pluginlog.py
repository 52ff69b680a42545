"""A plugin's stderr, kept by the agent in `<data_dir>/plugin-logs/NAME.log`, bounded.

The agent reads the pipe and appends, instead of handing the plugin the file: a plugin that
floods stderr cannot fill the disk (the file is capped and rotated once), a full or read-only
disk costs only log lines (counted, reported), and no plugin holds a file in the data dir open
for writing (which would make a read-only remount of it fail with EBUSY). The file is opened
per flush, at most every `flush_s` or `chunk_bytes`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from hidsd.base.aio import wait_timeout
from hidsd.base.storage import StorageHealth


class PluginLog:
    def __init__(
        self,
        path: Path,
        max_bytes: int = 4 << 20,
        health: StorageHealth | None = None,
        flush_s: float = 0.5,
        chunk_bytes: int = 64 << 10,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.health = health
        self.flush_s = flush_s
        self.chunk_bytes = chunk_bytes
        self.what = f"plugin_log:{path.stem}"
        self.written = 0
        self.dropped = 0
        self.rotations = 0
        self._size: int | None = None

    async def pump(self, reader: asyncio.StreamReader) -> None:
        """Until EOF: read everything the plugin writes, flush in chunks."""
        buf = bytearray()
        last = time.monotonic()
        while True:
            wait = self.flush_s - (time.monotonic() - last) if buf else None
            try:
                data = await (reader.read(1 << 16) if wait is None
                              else wait_timeout(reader.read(1 << 16), max(wait, 0.0)))  # fmt: skip
            except TimeoutError:
                data = None
            if data:
                buf += data
            if buf and (data == b"" or data is None or len(buf) >= self.chunk_bytes
                        or time.monotonic() - last >= self.flush_s):  # fmt: skip
                self.flush(bytes(buf))
                buf.clear()
                last = time.monotonic()
            if data == b"":
                return

    def flush(self, data: bytes) -> None:
        try:
            if self._size is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._size = self.path.stat().st_size
                except FileNotFoundError:
                    self._size = 0
            if self._size + len(data) > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self.rotations += 1
                self._size = 0
                data = data[-self.max_bytes :]
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    self._size += n
                    self.written += n
            finally:
                os.close(fd)
        except OSError as exc:
            self.dropped += len(data)
            self._size = None  # stat again next time (the file may have gone with the disk)
            if self.health is not None:
                self.health.failed(self.what, self.path, exc)
            return
        if self.health is not None:
            self.health.ok(self.what)

    def stats(self) -> dict[str, int]:
        return {"log_bytes": self.written, "log_bytes_dropped": self.dropped,
                "log_rotations": self.rotations}  # fmt: skip
