"""Worker for `benchmarks/telemetry_path.py`: one agent's real telemetry path, one run.

The worker holds what the agent runs for its plugins, and nothing else: a real `Bus` (one
nats-py connection, as the agent's) and the agent's own `hidsd.plugins.supervisor.Supervisor`
with `Bus.js_publish` as its publish callable. The run's op hot-applies a plugins section
through the supervisor's public `configure` (what `Agent._apply_config` calls): the built-in
`loadgen` plugin enabled at rate 0 (as fast as the pipe takes it) with the run's record size,
and a `[telemetry]` section with the run's batch size and a token bucket far above what one
agent reaches. The supervisor then builds the `PluginRunner` + `Pipeline` itself (plugin child
process in its own group, pipe reader, bounded queue, token bucket, batcher, publisher, spool).

The re-encode variant wraps the running pipeline's `offer` (a delegating wrapper set on the
instance once the supervisor made it): each payload is msgpack-decoded and encoded again and
its frame rebuilt before the real `offer`, which is what an agent that did not forward the
plugin's encoded bytes would add.

After `warmup_s` the op samples, every `sample_s`, the records JetStream acknowledged
(`records_out`, counted by the pipeline after each PubAck), this process's CPU time
(`time.process_time`: every thread of the agent side, not the plugin), and the plugin's and
nats-server's CPU (`harness.procs.process_cpu_s`). With `profile`, the window runs under
cProfile. Then the plugin is stopped as a config change stops it (`configure` without it:
`Supervisor._stop` cancels the runner and saves what was unsent to the spool), and the op
reports the pipeline's counters and the spool's batches (from its directory) so the
coordinator can check every frame against what the stream stored.

Run as ``python benchmarks/telemetry_path_worker.py '<json config>'``.
"""

from __future__ import annotations

import asyncio
import cProfile
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from harness.procs import process_cpu_s
from harness.workers import serve, worker_main

from hidsd.bus.transport import Bus, BusOptions
from hidsd.plugins.supervisor import PluginRunner, Supervisor
from hidsd.plugins.telemetry import Pipeline
from hidsd.wire import frames
from hidsd.wire.dynconfig import DEFAULTS
from hidsd.wire.names import Subjects

PLUGIN = "loadgen"


def reencode(pipeline: Pipeline) -> None:
    """The baseline: decode each payload and encode it again, then the pipeline's own offer."""
    offer: Callable[[bytes], Awaitable[None]] = pipeline.offer

    async def offer_reencoded(frame: bytes) -> None:
        _magic, data_type, _length, ts_ns = frames.HEADER.unpack_from(frame)
        record = msgpack.unpackb(frame[frames.HEADER_SIZE :], raw=False)
        payload: bytes = msgpack.packb(record, use_bin_type=True)
        await offer(frames.frame(data_type, payload, ts_ns))

    pipeline.offer = offer_reencoded  # type: ignore[method-assign]


@dataclass
class Sample:
    t: float
    records: int
    batches: int
    cpu_s: float
    plugin_cpu_s: float
    nats_cpu_s: float
    queued: int
    ready_batches: int


def sample(runner: PluginRunner, nats_pid: int) -> Sample:
    pipeline = runner.pipeline
    st = pipeline.stats()
    plugin = runner.proc.pid if runner.proc is not None else 0
    return Sample(time.perf_counter(), int(st["records_out"]), int(st["batches_out"]),
                  time.process_time(), process_cpu_s(plugin) or 0.0,
                  process_cpu_s(nats_pid) or 0.0, int(st["queued"]),
                  int(st["ready_batches"]))  # fmt: skip


def spool_batches(directory: Path) -> list[tuple[int, int]]:
    """(first_seq, count) of every batch file in the spool (named epoch-seq-count.batch)."""
    out = []
    for p in sorted(directory.glob("*.batch")):
        _epoch, seq, count = p.stem.split("-")
        out.append((int(seq), int(count)))
    return out


class Run:
    """The worker's agent side: its bus and its supervisor."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.host = str(cfg["host"])
        self.bus = Bus(BusOptions(servers=(cfg["nats_url"],), name=f"hidsd:{self.host}"))
        subjects = Subjects(str(cfg["prefix"]))
        self.data_dir = Path(cfg["workdir"])
        self.sup = Supervisor(self.host, lambda name: subjects.telemetry(self.host, name),
                              self.data_dir, self.bus.js_publish)  # fmt: skip

    async def setup(self, tg: asyncio.TaskGroup) -> dict[str, Any]:
        await self.bus.connect(attempts=3)
        tg.create_task(self.sup.run(), name="supervisor")
        return {"max_payload": self.bus.client.max_payload}

    def telemetry(self) -> dict[str, Any]:
        c = self.cfg
        return {**DEFAULTS["telemetry"], "rate_per_s": c["rate_per_s"], "burst": c["rate_per_s"],
                "batch_max_records": c["batch"], "batch_max_ms": c["batch_max_ms"]}  # fmt: skip

    async def started(self, timeout: float) -> tuple[PluginRunner, asyncio.Task[None]]:
        """The runner the supervisor made for the plugin (before the plugin's first frame)."""
        deadline = time.monotonic() + timeout
        while PLUGIN not in self.sup.running:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the supervisor did not start {PLUGIN} in {timeout:.0f}s")
            await asyncio.sleep(0)
        return self.sup.running[PLUGIN]

    async def run(self, _req: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        params = {"rate": 0, "size": c["size"], "batch": c["loadgen_batch"]}
        t_start = time.perf_counter()
        self.sup.configure({PLUGIN: {"enabled": True, "params": params}}, self.telemetry())
        runner, task = await self.started(float(c["start_timeout_s"]))
        if c["reencode"]:
            reencode(runner.pipeline)
        deadline = time.monotonic() + float(c["start_timeout_s"])
        while runner.pipeline.counters["records_out"] == 0:
            if time.monotonic() > deadline or task.done():
                raise RuntimeError(f"no record acknowledged: runner {runner.counters}, "
                                   f"last error {runner.pipeline.last_error!r}")  # fmt: skip
            await asyncio.sleep(0.05)
        first_ack_s = time.perf_counter() - t_start
        await asyncio.sleep(float(c["warmup_s"]))
        window = await self.window(runner)
        stop = await self.stop(runner, task)
        return {"first_ack_s": round(first_ack_s, 3), **window, **stop}

    async def window(self, runner: PluginRunner) -> dict[str, Any]:
        c = self.cfg
        profiler = cProfile.Profile() if c["profile"] else None
        nats_pid = int(c["nats_pid"])
        samples = [sample(runner, nats_pid)]
        if profiler is not None:
            profiler.enable()
        try:
            end = samples[0].t + float(c["seconds"])
            while (left := end - time.perf_counter()) > 1e-3:
                await asyncio.sleep(min(float(c["sample_s"]), left))
                samples.append(sample(runner, nats_pid))
        finally:
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(c["profile_path"])
        first, last = samples[0], samples[-1]
        elapsed = last.t - first.t
        records = last.records - first.records
        cpu = last.cpu_s - first.cpu_s
        return {
            "window_s": round(elapsed, 3), "records": records,
            "batches": last.batches - first.batches,
            "records_per_s": round(records / elapsed, 1) if elapsed > 0 else None,
            "agent_cpu_s": round(cpu, 4),
            "plugin_cpu_s": round(last.plugin_cpu_s - first.plugin_cpu_s, 4),
            "nats_cpu_s": round(last.nats_cpu_s - first.nats_cpu_s, 4),
            "agent_cpu_util": round(cpu / elapsed, 3) if elapsed else None,
            "per_interval_records_per_s": [round((b.records - a.records) / (b.t - a.t), 1)
                                           for a, b in itertools.pairwise(samples) if b.t > a.t],
            # where frames wait: a full queue and no ready batches = the agent's loop is the
            # slow stage; ready batches piling up = JetStream's acks; an empty queue = the plugin
            "mean_queued": round(statistics.fmean(x.queued for x in samples), 1),
            "mean_ready_batches": round(statistics.fmean(x.ready_batches for x in samples), 1),
            "queue_max_records": runner.pipeline.limits.queue_max_records,
            "max_ready_batches": runner.pipeline.max_ready_batches,
            "profiled": bool(c["profile"]),
        }  # fmt: skip

    async def stop(self, runner: PluginRunner, task: asyncio.Task[None]) -> dict[str, Any]:
        """A config without the plugin: the supervisor stops it (`_stop`: cancel the runner,
        then `save_unsent`); the pipeline's counters and the spool's batches after it."""
        t0 = time.perf_counter()
        self.sup.configure({}, self.telemetry())
        deadline = time.monotonic() + 60.0
        while not (task.done() and runner.pipeline.stop_report):
            if time.monotonic() > deadline:
                raise RuntimeError("the supervisor did not stop the plugin within 60 s")
            await asyncio.sleep(0.02)
        pipeline = runner.pipeline
        return {
            "stop_s": round(time.perf_counter() - t0, 3),
            "stop_report": dict(pipeline.stop_report),
            "counters": {**{f"runner.{k}": v for k, v in runner.counters.items()},
                         **{f"tel.{k}": v for k, v in pipeline.stats().items()}},
            "spool": spool_batches(pipeline.spool.dir),
            "epoch": pipeline.epoch,
            "last_error": pipeline.last_error,
            "plugin_last_exit": runner.last_exit,
        }  # fmt: skip

    async def close(self) -> None:
        await self.bus.close()

    def ops(self) -> dict[str, Any]:
        return {"run": self.run}


async def main(cfg: dict[str, Any]) -> None:
    part = Run(cfg)
    await serve(cfg, part.setup, part.ops(), part.close)


if __name__ == "__main__":
    sys.exit(worker_main(main))
