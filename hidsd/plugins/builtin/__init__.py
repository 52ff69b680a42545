"""The built-in plugins: real detection data, each its own process.

Run one as `python -m hidsd.plugins.builtin.<name>`; the agent sends its params in a CONFIG
task right after start and reads record frames from its stdout (`hidsd.wire.frames`).

| plugin      | data types                                 | source                         |
|-------------|--------------------------------------------|--------------------------------|
| `inventory` | PACKAGES, PORTS, USERS and their *_DELTA   | dpkg/rpm/apk, sockets, passwd  |
| `procmon`   | PROCESS                                    | /proc, scanned periodically    |
| `fim`       | FIM_BASELINE, FIM_CHANGE                   | inotify + SHA-256              |
| `authlog`   | SSH_ACCEPTED, SSH_FAILED, SSH_INVALID_USER | auth.log / secure, followed    |
| `loadgen`   | LOADGEN                                    | synthetic (benchmarks, drills) |
| `drill`     | STATUS                                     | burns CPU or leaks memory      |

Every built-in also emits ERROR (something it could not read; reported once until it recovers,
so a broken file cannot flood the fleet) and STATUS (ready, reconfigured; authlog: following a
file, and why: start, created, rotated, truncated).

The numbers live in `hidsd.wire.records` (re-exported here), because the agent forwards frames
without decoding them: consumers (controller ingest, fleet queries) route on the header's data
type alone.

`Runner` is the loop the built-ins share on top of the SDK: the SDK's `wait` wakes only on stop,
but these plugins must also wake on tasks (a "snapshot" RUN) and on their own descriptors
(inotify), so sleeping is a `select` on a self-pipe that tasks and stop both write to.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import logging
import os
import queue
import select
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from hidsd.plugins.sdk import Plugin
from hidsd.wire import frames
from hidsd.wire.records import DataType

__all__ = ["DataType", "Runner"]


def is_task(payload: Any, name: str) -> bool:
    """A RUN task payload naming `name`: `{"task": name}` or the bare string."""
    if isinstance(payload, str):
        return payload == name
    return isinstance(payload, dict) and payload.get("task") == name


class Runner:
    """The SDK plugin plus a wakeable sleep, task queue, params helpers and error records."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = logging.getLogger(f"hidsd.plugin.{name}")
        self._tasks: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._reported: dict[tuple[str, str], str] = {}
        self.plugin = Plugin(name, on_task=self._on_task)
        threading.Thread(target=self._watch_stop, name="stop", daemon=True).start()

    # ------------------------------------------------------------------ lifecycle

    def configure(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the first CONFIG (defaults if none comes) and set up stderr logging."""
        params = self.plugin.wait_configured(timeout)
        self.tasks()  # the initial CONFIG is in the queue too: it is not a change
        level = str(params.get("log_level", "info")).upper()
        logging.basicConfig(
            stream=sys.stderr,
            level=getattr(logging, level, logging.INFO),
            format=f"%(asctime)s {self.name}[%(process)d] %(levelname)s %(message)s",
        )
        return self.plugin.params

    def _on_task(self, task_type: int, payload: Any) -> None:
        self._tasks.put((task_type, payload))
        self._poke()

    def _watch_stop(self) -> None:
        while self.plugin.wait(3600.0):
            pass
        self._poke()

    def _poke(self) -> None:
        # A full pipe means a wake-up is already pending; a closed one, that we are exiting.
        with contextlib.suppress(OSError):
            os.write(self._wfd, b"!")

    @property
    def stopping(self) -> bool:
        return self.plugin.stopping

    @property
    def params(self) -> dict[str, Any]:
        return self.plugin.params

    def sleep(self, seconds: float | None, fds: Sequence[int] = ()) -> list[int]:
        """Block up to `seconds` (None: forever) or until a task, stop, or one of `fds` is
        readable; return the readable ones among `fds`."""
        if self.stopping:
            return []
        timeout = None if seconds is None else max(0.0, seconds)
        ready, _, _ = select.select([self._rfd, *fds], [], [], timeout)
        if self._rfd in ready:
            try:
                while os.read(self._rfd, 4096):
                    pass
            except BlockingIOError:
                pass
        return [fd for fd in ready if fd != self._rfd]

    def tasks(self) -> list[tuple[int, Any]]:
        """Tasks received since the last call (CONFIG included: params are already updated)."""
        out: list[tuple[int, Any]] = []
        while True:
            try:
                out.append(self._tasks.get_nowait())
            except queue.Empty:
                return out

    def config_changed(self, tasks: list[tuple[int, Any]]) -> bool:
        return any(t == frames.TaskType.CONFIG for t, _ in tasks)

    # ------------------------------------------------------------------ records

    def emit(self, data_type: int, record: dict[str, Any], ts_ns: int | None = None) -> None:
        self.plugin.emit(int(data_type), record, ts_ns)

    def emit_payload(self, data_type: int, payload: bytes, ts_ns: int | None = None) -> None:
        """A record a typed codec of `hidsd.wire` encoded (the bytes it defines go out as is)."""
        self.plugin.write(self.plugin.frame(int(data_type), payload, ts_ns))

    def status(self, event: str, **fields: Any) -> None:
        self.emit(DataType.STATUS, {"plugin": self.name, "event": event, **fields})

    def error(self, op: str, exc: BaseException | str, path: str | None = None) -> None:
        """Log and emit an ERROR record, once per (op, path) until `ok` clears it."""
        message = str(exc)
        key = (op, path or "")
        if self._reported.get(key) == message:
            return
        self._reported[key] = message
        code = exc.errno if isinstance(exc, OSError) else None
        self.log.warning("%s failed%s: %s", op, f" for {path}" if path else "", message)
        self.emit(
            DataType.ERROR,
            {
                "plugin": self.name,
                "op": op,
                "path": path,
                "error": message,
                "errno": errno_mod.errorcode.get(code, str(code)) if code else None,
            },
        )

    def ok(self, op: str, path: str | None = None) -> None:
        """`op` works again: its next failure is reported again."""
        self._reported.pop((op, path or ""), None)

    # ------------------------------------------------------------------ params

    def param_float(self, key: str, default: float, minimum: float) -> float:
        value = self.params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error("params", f"{key} must be a number, got {value!r}; using {default}")
            return default
        return max(minimum, float(value))

    def param_int(self, key: str, default: int, minimum: int) -> int:
        return int(self.param_float(key, default, minimum))

    def param_bool(self, key: str, default: bool) -> bool:
        value = self.params.get(key, default)
        if not isinstance(value, bool):
            self.error("params", f"{key} must be true or false, got {value!r}; using {default}")
            return default
        return value

    def param_str(self, key: str, default: str) -> str:
        value = self.params.get(key, default)
        if not isinstance(value, str) or not value:
            self.error("params", f"{key} must be a non-empty string, got {value!r}")
            return default
        return value

    def param_paths(self, key: str, default: Sequence[str]) -> list[str]:
        value = self.params.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.error("params", f"{key} must be a list of paths, got {value!r}")
            return list(default)
        return [os.path.abspath(v) for v in value if v]


def run_main(name: str, body: Callable[[Runner], None]) -> int:
    """Run a plugin body; a bug is logged with its traceback and exits 1 (the supervisor
    restarts it); the agent closing the pipes is a clean exit."""
    try:
        runner = Runner(name)
        body(runner)
    except KeyboardInterrupt:
        return 0
    except Exception:
        logging.getLogger(f"hidsd.plugin.{name}").exception("plugin failed")
        return 1
    return 0
