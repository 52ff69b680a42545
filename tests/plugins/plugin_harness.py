"""Run a built-in plugin the way the agent does: a child process that gets a CONFIG task on
stdin and writes record frames on stdout (stderr to a log file), stopped by closing stdin.

A reader thread decodes frames as they come, so a test can wait for a record by predicate
while the plugin keeps running.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from hidsd.plugins.builtin import DataType
from hidsd.wire import frames


@dataclass(frozen=True)
class Record:
    data_type: int
    ts_ns: int
    data: Any


class PluginRun:
    def __init__(self, name: str, params: dict[str, Any], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.stderr.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"hidsd.plugins.builtin.{name}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.records: list[Record] = []
        self.eof = False
        self.read_error: BaseException | None = None
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()
        self.send(frames.TaskType.CONFIG, params)

    # ------------------------------------------------------------------ pipes

    def send(self, task_type: int, payload: Any = None) -> None:
        body = b"" if payload is None else msgpack.packb(payload, use_bin_type=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(frames.frame(task_type, body, time.time_ns()))
        self.proc.stdin.flush()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        try:
            while True:
                head = out.read(frames.HEADER_SIZE)
                if len(head) < frames.HEADER_SIZE:
                    break
                hdr = frames.unpack_header(head)
                body = out.read(hdr.length)
                data = msgpack.unpackb(body, raw=False) if body else None
                with self._cond:
                    self.records.append(Record(hdr.data_type, hdr.ts_ns, data))
                    self._cond.notify_all()
        except BaseException as exc:  # reported by wait_for, never lost in a thread
            self.read_error = exc
        finally:
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    # ------------------------------------------------------------------ records

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def mark(self) -> int:
        """Index of the next record: pass it as `since` to ignore what came before."""
        with self._cond:
            return len(self.records)

    def of_type(self, data_type: int, since: int = 0) -> list[Any]:
        with self._cond:
            return [r.data for r in self.records[since:] if r.data_type == data_type]

    def wait_for(
        self,
        data_type: int,
        pred: Callable[[Any], bool] = lambda _: True,
        timeout: float = 10.0,
        since: int = 0,
        what: str = "",
    ) -> Any:
        """The first record of `data_type` (from index `since`) whose data matches."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for r in self.records[since:]:
                    if r.data_type == data_type and pred(r.data):
                        return r.data
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    break
                self._cond.wait(left)
        raise AssertionError(
            f"{self.name}: no {DataType(data_type).name} record {what} within {timeout}s "
            f"(eof={self.eof}, read_error={self.read_error!r}, got "
            f"{[(DataType(r.data_type).name, r.data) for r in self.records[-10:]]})\n"
            f"stderr:\n{self.stderr()}"
        )

    def wait_for_all(
        self, data_type: int, pred: Callable[[list[Any]], bool], timeout: float = 10.0
    ) -> list[Any]:
        """All records of `data_type` so far, once `pred` holds for them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r.data for r in self.records if r.data_type == data_type]
                if pred(got):
                    return got
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise AssertionError(
                        f"{self.name}: {DataType(data_type).name} records never matched: "
                        f"{got!r}\nstderr:\n{self.stderr()}"
                    )
                self._cond.wait(left)

    # ------------------------------------------------------------------ stopping

    def stop(self, timeout: float = 5.0) -> int:
        """Close stdin as the agent does; the plugin must exit 0 within `timeout`."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout)
        finally:
            self.close()
        assert code == 0, f"{self.name} exited {code}\nstderr:\n{self.stderr()}"
        return code

    def close(self) -> None:
        """Kill if still running and release every pipe and file."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5.0)
        self._reader.join(5.0)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                f.close()
        self._log.close()


@contextmanager
def start_plugin(name: str, params: dict[str, Any], log_dir: Path) -> Iterator[PluginRun]:
    """A running plugin; on leaving, asserts a clean exit on stdin close (unless the test
    already failed or stopped it), and never leaves the process behind."""
    run = PluginRun(name, params, log_dir)
    try:
        yield run
        if run.proc.returncode is None:
            run.stop()
    finally:
        run.close()
