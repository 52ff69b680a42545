"""A small SDK for writing hidsd plugins in Python. A plugin is a few lines:

    from hidsd.plugins.sdk import Plugin

    plugin = Plugin("hello")
    while plugin.wait(5.0):             # False once the agent asks it to stop
        plugin.emit(1, {"msg": "hi", "n": plugin.params.get("n", 0)})

Records are msgpack-encoded once, here, and framed (see `hidsd.wire.frames`); the agent
forwards them without decoding. Tasks from the agent (config, run, shutdown) are read by a
background thread; `params` always holds the latest config. When the agent closes the pipe
or sends SHUTDOWN, `wait` returns False and the plugin should exit.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import msgpack

from hidsd.base.errors import ProtocolError
from hidsd.wire import frames

TaskHandler = Callable[[int, Any], None]


class Plugin:
    def __init__(
        self,
        name: str,
        out: BinaryIO | None = None,
        inp: BinaryIO | None = None,
        on_task: TaskHandler | None = None,
    ) -> None:
        self.name = name
        if out is None:
            # Frames own the real stdout: keep it on a private descriptor and point fd 1 at
            # stderr, so a stray print() or a child inheriting stdout cannot corrupt the stream.
            sys.stdout.flush()
            private = os.dup(1)
            os.dup2(2, 1)
            out = os.fdopen(private, "wb", buffering=1 << 16)
        self._out = out
        self._in = inp if inp is not None else sys.stdin.buffer
        self._on_task = on_task
        self.params: dict[str, Any] = {}
        self.emitted = 0
        self._stop = threading.Event()
        self._configured = threading.Event()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_tasks, name="tasks", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ records

    def encode(self, data_type: int, record: Any, ts_ns: int | None = None) -> bytes:
        """Encode and frame one record; ValueError if it exceeds the agent's frame limit
        (the agent would treat it as garbage and restart the plugin): split it instead."""
        payload: bytes = msgpack.packb(record, use_bin_type=True)
        return self.frame(data_type, payload, ts_ns)

    def frame(self, data_type: int, payload: bytes, ts_ns: int | None = None) -> bytes:
        """Frame a payload already encoded (by a typed codec of `hidsd.wire`); ValueError if
        it exceeds the agent's frame limit."""
        if len(payload) > frames.DEFAULT_MAX_FRAME_BYTES:
            raise ValueError(
                f"record of {len(payload)} bytes exceeds the frame limit "
                f"{frames.DEFAULT_MAX_FRAME_BYTES}: split it"
            )
        return frames.frame(data_type, payload, ts_ns if ts_ns is not None else time.time_ns())

    def emit(self, data_type: int, record: Any, ts_ns: int | None = None) -> None:
        """Encode once and write one record. Blocks when the agent pushes back."""
        self.write(self.encode(data_type, record, ts_ns))

    def write(self, data: bytes, count: int = 1) -> None:
        """Write already-framed bytes (one or many frames) and flush."""
        try:
            with self._lock:
                self._out.write(data)
                self._out.flush()
                self.emitted += count
        except (BrokenPipeError, ValueError):
            self._stop.set()  # the agent went away
            return

    # ------------------------------------------------------------------ tasks

    def _read_tasks(self) -> None:
        try:
            while not self._stop.is_set():
                head = self._in.read(frames.HEADER_SIZE)
                if len(head) < frames.HEADER_SIZE:
                    break  # EOF: the agent closed our stdin
                hdr = frames.unpack_header(head)
                body = self._in.read(hdr.length)
                if len(body) < hdr.length:
                    break
                payload = msgpack.unpackb(body, raw=False) if body else None
                if hdr.data_type == frames.TaskType.SHUTDOWN:
                    break
                if hdr.data_type == frames.TaskType.CONFIG and isinstance(payload, dict):
                    self.params = payload
                    self._configured.set()
                if self._on_task is not None:
                    try:
                        self._on_task(hdr.data_type, payload)
                    except Exception as exc:  # a plugin bug must not kill the task reader
                        print(f"{self.name}: task handler failed: {exc!r}", file=sys.stderr)
        except (OSError, ValueError, ProtocolError):
            pass  # a broken task pipe means the agent is gone: stop
        finally:
            self._stop.set()
            self._configured.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; False when the plugin should stop."""
        return not self._stop.wait(seconds)

    def wait_configured(self, timeout: float = 5.0) -> dict[str, Any]:
        """The first CONFIG task (the agent sends one right after start)."""
        self._configured.wait(timeout)
        return self.params
