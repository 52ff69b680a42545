"""Worker processes driven by a coordinator over NATS: one framework for every benchmark.

Coordinator side, `WorkerPool`: spawn the worker scripts (PR_SET_PDEATHSIG, so nothing
outlives the benchmark; output to a log per worker, its tail in the error if one dies), wait
for every worker's ready message, then `call` an operation on every worker (or some) and gather
the replies; `stop` asks them to exit, then SIGTERM, then SIGKILL.

Worker side, `serve`: connect the control connection, run `setup` (build and start the
worker's slice), announce readiness with its result, then answer operations from a table one
at a time until `exit`. An operation that raises is answered with the error, which fails the
coordinator's call: nothing is swallowed.

Subjects: ready on `bench.ctl.ready`, operations on `bench.ctl.op.<worker index>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from nats.aio.msg import Msg

from hidsd.base import logging as hidsd_logging
from hidsd.base.proc import with_pdeathsig
from hidsd.bus.transport import Bus, BusOptions

from .report import BenchError, pack, raise_nofile_limit, unpack

READY_SUBJECT = "bench.ctl.ready"


def op_subject(index: int) -> str:
    return f"bench.ctl.op.{index}"


def split(total: int, parts: int) -> list[int]:
    """Split `total` (agents, load) over `parts` workers: sizes that differ by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# ----------------------------------------------------------------------------- coordinator


@dataclass
class WorkerPool:
    """The worker processes of one run and the control protocol to drive them."""

    bus: Bus
    workdir: Path
    script: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    ready: list[dict[str, Any]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.procs)

    def check_alive(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = self.logs[i].read_text(errors="replace")[-3000:]
                raise BenchError(f"worker {i} exited with {proc.returncode}:\n{tail}")

    async def start(
        self, configs: Sequence[Mapping[str, Any]], timeout: float
    ) -> list[dict[str, Any]]:
        """Spawn one worker per config (each gets `index`) and wait for every ready message."""
        done = asyncio.Event()

        async def on_ready(msg: Msg) -> None:
            self.ready.append(unpack(msg.data))
            if len(self.ready) >= self.size:
                done.set()

        sub = await self.bus.subscribe(READY_SUBJECT, on_ready)
        try:
            self._spawn(configs)
            await self._wait(done, timeout, "the workers to be ready")
        finally:
            await sub.unsubscribe()
        self.ready.sort(key=lambda r: int(r["worker"]))
        return self.ready

    def _spawn(self, configs: Sequence[Mapping[str, Any]]) -> None:
        for i, cfg in enumerate(configs):
            log = self.workdir / f"worker-{i}.log"
            argv = [sys.executable, str(self.script), json.dumps({**cfg, "index": i})]
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    with_pdeathsig(argv, os.getpid()), stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            self.procs.append(proc)
            self.logs.append(log)

    async def _wait(self, done: asyncio.Event, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done.is_set():
            self.check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), min(0.25, left))

    async def call_one(
        self, index: int, op: str, timeout: float = 60.0, **params: Any
    ) -> dict[str, Any]:
        try:
            data = await self.bus.request(op_subject(index), pack({"op": op, **params}), timeout)
        except Exception as exc:
            self.check_alive()
            raise BenchError(
                f"worker {index}: {op} got no answer in {timeout:.0f}s: {exc!r}"
            ) from exc
        reply: dict[str, Any] = unpack(data)
        if "error" in reply:
            raise BenchError(f"worker {index}: {reply['error']}")
        return reply

    async def call(
        self,
        op: str,
        timeout: float = 60.0,
        only: Sequence[int] | None = None,
        per_worker: Callable[[int], Mapping[str, Any]] | None = None,
        **params: Any,
    ) -> list[dict[str, Any]]:
        """`op` on every worker (or those in `only`) at once; replies in worker order.
        `per_worker(i)` adds parameters that differ between workers."""
        indexes = range(self.size) if only is None else only
        return list(await asyncio.gather(*(
            self.call_one(i, op, timeout, **params, **(per_worker(i) if per_worker else {}))
            for i in indexes
        )))  # fmt: skip

    async def stop(self, graceful: bool = True, timeout: float = 60.0) -> None:
        """`exit` (each worker closes its slice), then SIGTERM, then SIGKILL."""
        if graceful and self.procs:
            with contextlib.suppress(BenchError):
                await self.call("exit", timeout=timeout)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ----------------------------------------------------------------------------- worker

Op = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve(
    cfg: dict[str, Any],
    setup: Callable[[asyncio.TaskGroup], Awaitable[dict[str, Any]]],
    ops: Mapping[str, Op],
    close: Callable[[], Awaitable[None]],
) -> None:
    """The worker's life: control connection, `setup`, ready, operations until `exit`."""
    index = int(cfg["index"])
    control = Bus(BusOptions(servers=(cfg["nats_url"],), name=f"bench-worker-{index}"))
    await control.connect(attempts=5)
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def on_op(msg: Msg) -> None:
        queue.put_nowait((msg.reply, unpack(msg.data)))

    async def answer(subject: str, result: dict[str, Any]) -> None:
        await control.publish(subject, pack({"worker": index, **result}))
        await control.flush()

    try:
        async with asyncio.TaskGroup() as tg:
            await control.subscribe(op_subject(index), on_op)
            ready = await setup(tg)
            await control.publish(
                READY_SUBJECT, pack({"worker": index, "pid": os.getpid(), **ready})
            )
            await control.flush()
            while True:
                reply, req = await queue.get()
                name = str(req.pop("op", ""))
                try:
                    if name == "exit":
                        await asyncio.wait_for(close(), 60.0)
                        result: dict[str, Any] = {"closed": True}
                    elif name in ops:
                        result = await ops[name](req)
                    else:
                        result = {"error": f"unknown op {name!r}"}
                except Exception as exc:  # answered: the coordinator fails the run with it
                    result = {"error": f"{name}: {type(exc).__name__}: {exc}"}
                await answer(reply, result)
                if name == "exit":
                    raise _Exit  # cancels whatever `setup` left running in the group
    except* _Exit:
        pass
    finally:
        with contextlib.suppress(Exception):
            await control.close(timeout=1.0)


class _Exit(Exception):
    """The coordinator said exit: ends the worker's TaskGroup."""


def worker_main(run: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
    """A worker script's `main`: the coordinator decides when workers stop (Ctrl-C goes to the
    whole foreground process group, so SIGINT is ignored here; PR_SET_PDEATHSIG if it dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile_limit()
    hidsd_logging.configure("warning", "json")
    uvloop.run(run(json.loads(sys.argv[1])))
    return 0
