"""Agent process for `benchmarks/telemetry_path.py`: one plugin's real telemetry path.

The process holds what the agent's `Supervisor` builds for one enabled plugin and nothing
else: a real `Bus` (one nats-py connection), a `Pipeline` (bounded queue, token bucket,
batcher, publisher, spool) whose publish callable is `Bus.js_publish`, and a `PluginRunner`
that starts the built-in `loadgen` plugin as a child process (own process group,
PR_SET_PDEATHSIG) and offers every frame it reads to the pipeline. The spec comes from
`PluginSpec.builtin`, as the supervisor makes it from the dynamic config.

With `reencode` set, the pipeline is `ReencodePipeline`: its `offer` msgpack-decodes every
payload and encodes it again (and rebuilds the frame) before queueing it, which is what an
agent that does not forward the plugin's encoded bytes would do on top of the same path.

The process measures itself: after `warmup_s` it samples, every `sample_s`, the records
JetStream acknowledged (`records_out`, counted after each PubAck) and its own CPU time
(`time.process_time`: every thread of this process, not the plugin's), plus the plugin's and
nats-server's CPU through psutil. With `profile` set, the window runs under cProfile and the
stats go to `profile_path`. The result is written as JSON to `result_path`; then the runner
is cancelled, which stops the plugin as the supervisor does (SHUTDOWN, close stdin, wait,
SIGTERM and SIGKILL the group). SIGTERM and SIGINT stop the same way.

Run as ``python benchmarks/_telemetry_agent.py '<json config>'``.
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import itertools
import json
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import psutil
import uvloop

from hidsd.base import logging as hidsd_logging
from hidsd.bus.transport import Bus, BusOptions
from hidsd.plugins.supervisor import PluginRunner, PluginSpec
from hidsd.plugins.telemetry import Pipeline, Spool
from hidsd.wire import frames
from hidsd.wire.dynconfig import DEFAULTS
from hidsd.wire.names import Subjects

PLUGIN = "loadgen"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    nats_url: str
    workdir: str
    result_path: str
    host: str
    prefix: str
    size: int
    batch_max_records: int
    batch_max_ms: int
    rate_per_s: float
    burst: float
    reencode: bool
    warmup_s: float
    seconds: float
    sample_s: float
    nats_pid: int
    loadgen_batch: int
    profile: bool = False
    profile_path: str = ""
    start_timeout_s: float = 30.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AgentConfig:
        return cls(**json.loads(text))


class ReencodePipeline(Pipeline):
    """The baseline: decode each payload and encode it again before it is queued."""

    async def offer(self, frame: bytes) -> None:
        _magic, data_type, _length, ts_ns = frames.HEADER.unpack_from(frame)
        record = msgpack.unpackb(frame[frames.HEADER_SIZE :], raw=False)
        payload: bytes = msgpack.packb(record, use_bin_type=True)
        await super().offer(frames.frame(data_type, payload, ts_ns))


def build(cfg: AgentConfig, bus: Bus) -> PluginRunner:
    """The runner and pipeline exactly as `Supervisor._reconcile` makes them."""
    workdir = Path(cfg.workdir)
    telemetry = {
        **DEFAULTS["telemetry"],
        "rate_per_s": cfg.rate_per_s,
        "burst": cfg.burst,
        "batch_max_records": cfg.batch_max_records,
        "batch_max_ms": cfg.batch_max_ms,
    }
    conf = {
        "enabled": True,
        "params": {"rate": 0, "size": cfg.size, "batch": cfg.loadgen_batch},
    }
    spec = PluginSpec.builtin(PLUGIN, conf, telemetry)
    cls = ReencodePipeline if cfg.reencode else Pipeline
    pipeline = cls(
        host=cfg.host,
        plugin=PLUGIN,
        subject=Subjects(cfg.prefix).telemetry(cfg.host, PLUGIN),
        publish=bus.js_publish,
        spool=Spool(workdir / "spool" / PLUGIN, spec.limits.spool_max_bytes),
        limits=spec.limits,
    )
    return PluginRunner(spec, pipeline, workdir / "plugin-logs")


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


def note(text: str) -> None:
    """A progress line for the run's agent.log."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def cpu_of(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


class Meter:
    """Samples the pipeline's acknowledged records and the CPU of the three processes."""

    def __init__(self, runner: PluginRunner, nats_pid: int) -> None:
        self.runner = runner
        self.nats = psutil.Process(nats_pid) if nats_pid else None
        self.plugin: psutil.Process | None = None

    def sample(self) -> Sample:
        proc = self.runner.proc
        if self.plugin is None and proc is not None and proc.returncode is None:
            self.plugin = psutil.Process(proc.pid)
        pipeline = self.runner.pipeline
        c = pipeline.counters
        st = pipeline.stats()
        return Sample(
            t=time.perf_counter(),
            records=c["records_out"],
            batches=c["batches_out"],
            cpu_s=time.process_time(),
            plugin_cpu_s=cpu_of(self.plugin),
            nats_cpu_s=cpu_of(self.nats),
            queued=int(st["queued"]),
            ready_batches=int(st["ready_batches"]),
        )


async def wait_flowing(runner: PluginRunner, timeout: float) -> None:
    """Until JetStream acknowledged the first batch (the plugin started, the stream exists)."""
    deadline = time.monotonic() + timeout
    while runner.pipeline.counters["records_out"] == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no record acknowledged within {timeout:.0f}s: "
                f"runner={runner.stats()} last_error={runner.pipeline.last_error!r}"
            )
        await asyncio.sleep(0.05)


async def measure(cfg: AgentConfig, runner: PluginRunner) -> dict[str, Any]:
    meter = Meter(runner, cfg.nats_pid)
    t_start = time.perf_counter()
    await wait_flowing(runner, cfg.start_timeout_s)
    first_ack_s = time.perf_counter() - t_start
    note(f"first batch acknowledged after {first_ack_s:.2f}s")
    await asyncio.sleep(cfg.warmup_s)
    profiler = cProfile.Profile() if cfg.profile else None
    samples = [meter.sample()]
    if profiler is not None:
        profiler.enable()
    try:
        end = samples[0].t + cfg.seconds
        while (left := end - time.perf_counter()) > 1e-3:
            await asyncio.sleep(min(cfg.sample_s, left))
            samples.append(meter.sample())
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(cfg.profile_path)
    first, last = samples[0], samples[-1]
    note(f"window done: {last.records - first.records} records")
    elapsed = last.t - first.t
    records = last.records - first.records
    per_interval = [
        round((b.records - a.records) / (b.t - a.t), 1)
        for a, b in itertools.pairwise(samples)
        if b.t > a.t
    ]
    return {
        "first_ack_s": round(first_ack_s, 3),
        "window_s": round(elapsed, 3),
        "records": records,
        "batches": last.batches - first.batches,
        "records_per_s": round(records / elapsed, 1) if elapsed > 0 else None,
        "agent_cpu_s": round(last.cpu_s - first.cpu_s, 4),
        "plugin_cpu_s": round(last.plugin_cpu_s - first.plugin_cpu_s, 4),
        "nats_cpu_s": round(last.nats_cpu_s - first.nats_cpu_s, 4),
        "agent_cpu_util": round((last.cpu_s - first.cpu_s) / elapsed, 3) if elapsed else None,
        "per_interval_records_per_s": per_interval,
        # where frames wait: a full queue with no ready batches means the agent's own loop is
        # the slow stage; ready batches piling up mean JetStream's acks are; an empty queue
        # means the plugin is
        "mean_queued": round(statistics.fmean(x.queued for x in samples), 1),
        "mean_ready_batches": round(statistics.fmean(x.ready_batches for x in samples), 1),
        "queue_max_records": runner.pipeline.limits.queue_max_records,
        "max_ready_batches": runner.pipeline.max_ready_batches,
        "profiled": cfg.profile,
    }


async def stop_runner(runner_task: asyncio.Task[None], wait_s: float) -> list[str]:
    """Cancel the runner as `Supervisor._stop` does and wait for it to finish; return the
    tasks that had to be cancelled a second time.

    On Python 3.11, `asyncio.wait_for` (in nats-py's request, so in `Bus.js_publish`, and in
    `Pipeline._batcher`) returns the result and drops the cancellation when the awaited
    future completes in the same loop iteration as the cancel: the pipeline's publisher then
    goes back to waiting for work and the runner never finishes. After `wait_s`, every task
    still cancelling (the stuck one and its TaskGroup parents, which are only waiting for it)
    is cancelled again, and their names are reported.
    """
    runner_task.cancel()
    me = asyncio.current_task()
    recancelled: list[str] = []
    while True:
        done, _ = await asyncio.wait([runner_task], timeout=wait_s)
        if done:
            return recancelled
        stuck = [t for t in asyncio.all_tasks() if t is not me and t.cancelling() and not t.done()]
        names = [getattr(t.get_coro(), "__qualname__", t.get_name()) for t in stuck]
        note(f"still cancelling after {wait_s:.0f}s, cancelled again: {', '.join(names)}")
        for t in stuck:
            t.cancel()
        recancelled += names


async def run(cfg: AgentConfig) -> dict[str, Any]:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    bus = Bus(BusOptions(servers=(cfg.nats_url,), name=f"hidsd:{cfg.host}"))
    await bus.connect(attempts=3)
    try:
        runner = build(cfg, bus)
        recancelled: list[str] = []
        async with asyncio.TaskGroup() as tg:
            runner_task = tg.create_task(runner.run(), name=f"plugin:{PLUGIN}")
            try:
                result = await measure(cfg, runner)
            finally:
                # the plugin's own stop takes up to two stop_grace_s (SIGTERM, SIGKILL)
                recancelled = await stop_runner(runner_task, 2 * runner.stop_grace_s + 2.0)
        note(f"runner stopped: plugin {runner.last_exit}; cancelled again: {recancelled}")
        result["stop_recancelled_tasks"] = recancelled
        result["counters"] = {
            **{f"runner.{k}": v for k, v in runner.counters.items()},
            **{f"tel.{k}": v for k, v in runner.pipeline.stats().items()},
        }
        result["last_error"] = runner.pipeline.last_error
        result["plugin_last_exit"] = runner.last_exit
        result["max_payload"] = bus.client.max_payload
        return result
    finally:
        await bus.close()
        note("bus closed")


def main() -> int:
    cfg = AgentConfig.from_json(sys.argv[1])
    hidsd_logging.configure("warning")
    try:
        result = uvloop.run(run(cfg))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    Path(cfg.result_path).write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
