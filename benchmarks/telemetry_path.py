"""Telemetry path benchmark: records per second from a plugin's pipe into JetStream, one agent.

Usage::

    .venv/bin/python benchmarks/telemetry_path.py [--out PATH] [--seconds S] [--warmup S]
        [--sizes 100,1000] [--batches 500,1000,2000] [--repeat N] [--no-profile]
        [--keep-workdir]

The script starts one nats-server with JetStream (`hidsd.dev.devstack.NatsServer`) in a temp dir
and creates the telemetry stream as the controller's `ensure_stream` does (subjects
`<prefix>.tel.>`, file storage, discard old, 120 s duplicate window), bounded by
`--stream-max-bytes` and purged before every run.

Each run is a separate agent process (`benchmarks/_telemetry_agent.py`, uvloop) holding the
real path of one plugin as the supervisor builds it: `PluginRunner` + `Pipeline` with a real
`Bus` and `Bus.js_publish` as the publish callable, and the built-in `loadgen` plugin as its
child at rate 0 (as fast as the pipe takes it) with a token bucket far above the achievable
rate. The agent counts the records whose batch JetStream acknowledged (`records_out`) and its
own CPU time over a steady window after a warmup; agent_cpu_ms_per_10k is that CPU per
10,000 acknowledged records. The re-encode variant runs the same path with a pipeline whose
`offer` msgpack-decodes and re-encodes every payload (and rebuilds the frame) before queueing.

For every record size and variant, each `--batches` value is run `--repeat` times,
interleaving the variants (batch sizes whose batches would exceed the server's max_payload
are skipped and listed); the best run is reported, with its configuration's median. After
every run the last stored batch is read back from the stream and split into frames, which
gives the real payload and frame sizes and checks that what was stored is intact. With
profiling on (the default), the best 100 B configuration of both variants is run once more
under cProfile, and the functions where the agent spends its time are listed.

Writes a JSON list (one object per record size) to `benchmarks/results/telemetry_path.json`
(or `--out`) and prints a table. Ctrl-C or SIGTERM stops the agent, its plugin and the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import uvloop
from _telemetry_agent import AgentConfig

from hidsd.base import logging as hidsd_logging
from hidsd.base.errors import HidsError
from hidsd.base.proc import with_pdeathsig
from hidsd.bus.transport import Bus, BusOptions
from hidsd.dev.devstack import NatsServer, find_binary
from hidsd.wire import frames
from hidsd.wire.names import Subjects

HERE = Path(__file__).resolve().parent
AGENT_PY = HERE / "_telemetry_agent.py"
DEFAULT_OUT = HERE / "results" / "telemetry_path.json"
HOST = "bench-tel-1"
PREFIX = "hidsd"
#: far above anything one agent reaches: the token bucket must not be what limits
UNLIMITED_RATE = 10_000_000.0
#: room for NATS headers and protocol when checking a batch against max_payload
PAYLOAD_SLACK = 4096
TARGET_100B = 100_000
VARIANTS = ("direct", "reencode")

NOTES = (
    "One agent process (uvloop) runs the real PluginRunner + Pipeline for the loadgen plugin "
    "(built with PluginSpec.builtin, publish = Bus.js_publish), so every record goes "
    "plugin pipe -> 16-byte header check -> Pipeline.offer -> bounded queue -> token bucket -> "
    "batcher -> one JetStream publish per batch, waiting for its PubAck before the next. "
    "records_per_s counts records whose batch JetStream acknowledged, over a {seconds} s "
    "window after {warmup} s of warmup. agent_cpu_ms_per_10k is the agent process's CPU "
    "(user+system, all its threads, not the plugin's) over that window per 10,000 "
    "acknowledged records. The plugin (loadgen, rate 0, {loadgen_batch} frames per write, "
    "msgpack-encoding every record) and nats-server (JetStream file storage in a temp dir on "
    "local disk) run on the same {cpus} CPU cores; their CPU is reported per 10k records too. "
    "Loadgen's `size` is approximate: a record is the msgpack map {{n: int, pad: str}} with "
    "size-24 pad characters, so payload_bytes (measured from the last stored batch) is about "
    "size-10 once n needs 5 bytes; frame_bytes adds the 16-byte header. "
    "The re-encode variant is the same path with Pipeline.offer wrapped to msgpack-decode and "
    "re-encode each payload and rebuild its frame (what an agent that does not forward the "
    "plugin's bytes would add). Token bucket: rate and burst {rate:,.0f}. Policy block (the "
    "default): drops stay zero and a slow stage pushes back on the plugin. The best of the "
    "batch_max_records values tried, {repeat} runs each, is reported (best single run; the median "
    "of that configuration's runs is records_per_s_median; all runs are under `runs`, with the "
    "1-minute load average after each: other work on the machine only slows runs down, so the "
    "best run is the least disturbed one); each run uses a "
    "fresh agent and plugin and a purged stream. Profiles (cProfile on the agent's event loop "
    "thread for one extra run) slow the agent down; use them for shares, not for rates. "
    "After the window the agent cancels the runner as Supervisor._stop does; a task that lost "
    "its cancellation (Python 3.11 asyncio.wait_for, listed in stop_recancelled_tasks) is "
    "cancelled again after 8 s, outside the measured window. unsent_at_stop counts frames the "
    "pipeline had taken but neither published, spooled nor counted as dropped when it stopped."
)


class BenchError(Exception):
    """The benchmark could not run as specified."""


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def per_10k_ms(cpu_s: float, records: int) -> float | None:
    return round(cpu_s * 1000 * 10_000 / records, 2) if records > 0 else None


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        out = subprocess.run(
            [find_binary("nats-server", "HIDSD_NATS_SERVER_BIN"), "--version"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        nats_version = (out.stdout or out.stderr).strip()
    except (OSError, HidsError, subprocess.SubprocessError):
        nats_version = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nats_server": nats_version,
        "msgpack": ".".join(map(str, msgpack.version)),
        "uvloop": getattr(uvloop, "__version__", "?"),
    }


# --------------------------------------------------------------------------- the stream


async def ensure_stream(bus: Bus, subjects: Subjects, max_bytes: int) -> None:
    """The telemetry stream as `hidsd.controller.service.ControllerService.ensure_stream` makes it,
    with our own bound on bytes."""
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig

    js = bus.client.jetstream(timeout=10)
    cfg = StreamConfig(
        name=subjects.telemetry_stream(),
        subjects=[subjects.telemetry_all()],
        max_bytes=max_bytes,
        max_age=3600.0,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        duplicate_window=120.0,
    )
    try:
        await js.add_stream(cfg)
    except Exception as exc:
        if "already in use" not in str(exc):
            raise
        await js.update_stream(cfg)


async def purge(bus: Bus, stream: str) -> None:
    await bus.client.jetstream(timeout=30).purge_stream(stream)


async def inspect_stream(bus: Bus, stream: str) -> dict[str, Any]:
    """Stream totals, and the last stored batch split back into frames."""
    js = bus.client.jetstream(timeout=30)
    info = await js.stream_info(stream)
    st = info.state
    out: dict[str, Any] = {"stream_messages": st.messages, "stream_bytes": st.bytes}
    if not st.messages:
        return out
    msg = await js.get_msg(stream, seq=st.last_seq)
    body = msg.data or b""
    parts = list(frames.iter_frames(body))
    headers = msg.headers or {}
    sizes = [len(p) for _, p in parts]
    record = msgpack.unpackb(parts[-1][1], raw=False) if parts else None
    out.update(
        last_batch_frames=len(parts),
        last_batch_count_header=int(headers.get(frames.H_COUNT, "-1")),
        last_batch_body_bytes=len(body),
        payload_bytes=round(statistics.fmean(sizes), 1) if sizes else None,
        payload_bytes_min=min(sizes, default=None),
        payload_bytes_max=max(sizes, default=None),
        frame_bytes=round(statistics.fmean(sizes) + frames.HEADER_SIZE, 1) if sizes else None,
        frame_bytes_max=max(sizes, default=0) + frames.HEADER_SIZE,
        last_record_keys=sorted(record) if isinstance(record, dict) else None,
        last_record_pad_chars=len(record.get("pad", "")) if isinstance(record, dict) else None,
        intact=len(parts) == int(headers.get(frames.H_COUNT, "-1")),
    )
    return out


# --------------------------------------------------------------------------- one run


@dataclass
class RunSpec:
    size: int
    variant: str
    batch: int
    profile: bool = False

    @property
    def label(self) -> str:
        extra = " (cProfile)" if self.profile else ""
        return f"{self.size} B {self.variant} batch={self.batch}{extra}"


@dataclass
class Bench:
    args: argparse.Namespace
    nats: NatsServer
    bus: Bus
    workdir: Path
    subjects: Subjects = field(default_factory=lambda: Subjects(PREFIX))
    seq: int = 0

    @property
    def stream(self) -> str:
        return self.subjects.telemetry_stream()

    async def run_one(self, spec: RunSpec) -> dict[str, Any]:
        """One agent process: warmup, window, result; then the stream read back."""
        self.seq += 1
        rundir = self.workdir / f"run-{self.seq:02d}"
        rundir.mkdir(parents=True)
        await purge(self.bus, self.stream)
        assert self.nats.proc is not None
        cfg = AgentConfig(
            nats_url=self.nats.url,
            workdir=str(rundir),
            result_path=str(rundir / "result.json"),
            host=HOST,
            prefix=PREFIX,
            size=spec.size,
            batch_max_records=spec.batch,
            batch_max_ms=self.args.batch_max_ms,
            rate_per_s=UNLIMITED_RATE,
            burst=UNLIMITED_RATE,
            reencode=spec.variant == "reencode",
            warmup_s=self.args.warmup,
            seconds=self.args.seconds,
            sample_s=0.5,
            nats_pid=self.nats.proc.pid,
            loadgen_batch=self.args.loadgen_batch,
            profile=spec.profile,
            profile_path=str(rundir / "agent.prof"),
        )
        log = rundir / "agent.log"
        with open(log, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *with_pdeathsig([sys.executable, str(AGENT_PY), cfg.to_json()], os.getpid()),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        timeout = cfg.start_timeout_s + cfg.warmup_s + cfg.seconds + 30.0
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
            # (Ctrl-C) that arrives in the same loop iteration as the agent's exit
            async with asyncio.timeout(timeout):
                rc = await proc.wait()
        except TimeoutError:
            raise BenchError(f"agent for {spec.label} still running after {timeout:.0f}s") from None
        finally:
            await stop_agent(proc)
        result = read_result(Path(cfg.result_path), log, rc, spec)
        result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        result.update(await inspect_stream(self.bus, self.stream))
        records = int(result["records"])
        counters = result["counters"]
        result.update(
            size=spec.size,
            variant=spec.variant,
            batch_max_records=spec.batch,
            agent_cpu_ms_per_10k=per_10k_ms(result["agent_cpu_s"], records),
            plugin_cpu_ms_per_10k=per_10k_ms(result["plugin_cpu_s"], records),
            nats_cpu_ms_per_10k=per_10k_ms(result["nats_cpu_s"], records),
            batches_per_s=round(result["batches"] / result["window_s"], 1),
            mean_batch_records=round(records / result["batches"], 1) if result["batches"] else 0,
            drops={
                k.removeprefix("tel."): v
                for k, v in counters.items()
                if k.startswith("tel.dropped_")
            },
            publish_failures=counters.get("tel.publish_failures", 0),
            # frames the pipeline took but neither published, spooled nor counted as dropped
            # when the runner was stopped (queue, batch being built, ready batches)
            unsent_at_stop=counters["tel.frames_in"]
            - counters["tel.records_out"]
            - counters["tel.spooled_records"]
            - sum(v for k, v in counters.items() if k.startswith("tel.dropped_")),
        )
        if spec.profile:
            result["profile"] = profile_summary(Path(cfg.profile_path), self.args.profile_top)
        return result


def read_result(path: Path, log: Path, rc: int, spec: RunSpec) -> dict[str, Any]:
    if rc != 0 or not path.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchError(f"agent for {spec.label} exited with {rc}:\n{tail}")
    result: dict[str, Any] = json.loads(path.read_text())
    return result


async def stop_agent(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the agent then stops its plugin), wait; then SIGKILL. Also runs after a
    Ctrl-C; a second one interrupts it, and PR_SET_PDEATHSIG still takes the agent (and with
    it the plugin) down when this process exits."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(wait_s):
                await proc.wait()
        except TimeoutError:
            continue


def profile_summary(path: Path, top: int) -> dict[str, Any]:
    """The agent's hottest functions (own time) and the biggest cumulative ones."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in raw.values())

    def where(key: tuple[str, int, str]) -> str:
        file, line, func = key
        for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
            if marker in file:
                file = file.split(marker, 1)[1]
                break
        return f"{file}:{line}({func})"

    def row(key: Any, value: Any) -> dict[str, Any]:
        _cc, nc, tt, ct, _callers = value
        return {
            "where": where(key),
            "calls": nc,
            "tottime_s": round(tt, 4),
            "tottime_pct": round(100 * tt / total, 1) if total else None,
            "cumtime_s": round(ct, 4),
        }

    by_tt = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    by_ct = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[:top]
    return {
        "total_tottime_s": round(total, 3),
        "by_tottime": [row(k, v) for k, v in by_tt],
        "by_cumtime": [row(k, v) for k, v in by_ct],
    }


# --------------------------------------------------------------------------- the matrix


def say_run(r: dict[str, Any]) -> None:
    print(f"  {r['size']:>5} B  {r['variant']:<8}  batch {r['batch_max_records']:>5}:  "
          f"{r['records_per_s']:>10,.0f} rec/s   agent {r['agent_cpu_ms_per_10k']:>7} ms/10k   "
          f"plugin {r['plugin_cpu_ms_per_10k']:>7}   nats {r['nats_cpu_ms_per_10k']:>7}   "
          f"{r['batches_per_s']:>7,.1f} batches/s  frame {r.get('frame_bytes')} B"
          + ("  [stop: cancellation lost, cancelled again]"
             if r.get("stop_recancelled_tasks") else ""),
          flush=True)  # fmt: skip


async def run_size(bench: Bench, size: int, max_payload: int) -> dict[str, Any]:
    """Every batch size for both variants; the best of each, and what was skipped."""
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    frame_max = 0
    for batch in sorted(bench.args.batches):
        if frame_max and batch * frame_max + PAYLOAD_SLACK > max_payload:
            skipped.append({"batch_max_records": batch,
                            "why": f"{batch} frames of up to {frame_max} B exceed the server's "
                                   f"max_payload {max_payload} B"})  # fmt: skip
            print(f"  {size:>5} B  skip batch {batch}: {skipped[-1]['why']}", flush=True)
            continue
        for rep in range(bench.args.repeat):
            for variant in VARIANTS:  # interleaved, so drift in the machine's load hits both
                r = await bench.run_one(RunSpec(size, variant, batch))
                r["repeat"] = rep
                say_run(r)
                runs.append(r)
                frame_max = max(frame_max, int(r.get("frame_bytes_max") or 0))
    best: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        top = max(mine, key=lambda r: r["records_per_s"])
        same = [
            r["records_per_s"] for r in mine if r["batch_max_records"] == top["batch_max_records"]
        ]
        best[variant] = {**top, "records_per_s_median": round(statistics.median(same), 1),
                         "repeats": len(same)}  # fmt: skip
    return {"runs": runs, "skipped": skipped, "best": best}


def row_for(size: int, got: dict[str, Any], profiles: dict[str, Any]) -> dict[str, Any]:
    d, e = got["best"]["direct"], got["best"]["reencode"]
    drops: dict[str, int] = {}
    for r in got["runs"]:
        for k, v in r["drops"].items():
            drops[k] = drops.get(k, 0) + int(v)
    row: dict[str, Any] = {
        "record_bytes": size,
        "records_per_s": d["records_per_s"],
        "reencode_records_per_s": e["records_per_s"],
        "agent_cpu_ms_per_10k": d["agent_cpu_ms_per_10k"],
        "reencode_agent_cpu_ms_per_10k": e["agent_cpu_ms_per_10k"],
        "records_per_s_median": d["records_per_s_median"],
        "reencode_records_per_s_median": e["records_per_s_median"],
        "repeats": d["repeats"],
        "agent_cpu_util": d["agent_cpu_util"],
        "reencode_agent_cpu_util": e["agent_cpu_util"],
        "mean_queued": d["mean_queued"],
        "mean_ready_batches": d["mean_ready_batches"],
        "encode_once_speedup": round(d["records_per_s"] / e["records_per_s"], 2),
        "reencode_cpu_ratio": round(e["agent_cpu_ms_per_10k"] / d["agent_cpu_ms_per_10k"], 2),
        "payload_bytes": d.get("payload_bytes"),
        "frame_bytes": d.get("frame_bytes"),
        "batch_max_records": d["batch_max_records"],
        "reencode_batch_max_records": e["batch_max_records"],
        "batches": d["batches"],
        "batches_per_s": d["batches_per_s"],
        "mean_batch_records": d["mean_batch_records"],
        "plugin_cpu_ms_per_10k": d["plugin_cpu_ms_per_10k"],
        "nats_cpu_ms_per_10k": d["nats_cpu_ms_per_10k"],
        "reencode_plugin_cpu_ms_per_10k": e["plugin_cpu_ms_per_10k"],
        "reencode_nats_cpu_ms_per_10k": e["nats_cpu_ms_per_10k"],
        "drops": drops,
        "publish_failures": sum(int(r["publish_failures"]) for r in got["runs"]),
        "max_unsent_at_stop": max(int(r["unsent_at_stop"]) for r in got["runs"]),
        "runs_with_lost_cancellation": sum(
            1 for r in got["runs"] if r.get("stop_recancelled_tasks")
        ),
        "batch_sizes_tried": sorted({int(r["batch_max_records"]) for r in got["runs"]}),
        "batch_sizes_skipped": got["skipped"],
        "runs": [{k: v for k, v in r.items() if k != "profile"} for r in got["runs"]],
    }
    if profiles:
        row["profile"] = profiles
    return row


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start nats-server, run the matrix, stop everything (also on Ctrl-C and SIGTERM)."""
    task = asyncio.current_task()
    if task is not None:  # also when started with SIGINT ignored (a background job)
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        warn(f"load average is {load_before[0]:.1f} before starting: other work shares the CPUs")
    workdir = Path(tempfile.mkdtemp(prefix="hidsd-telpath-"))
    nats_srv = NatsServer(workdir / "stack")
    bus: Bus | None = None
    try:
        nats_srv.start()
        bus = Bus(BusOptions(servers=(nats_srv.url,), name="bench-telemetry-coordinator"))
        await bus.connect(attempts=3)
        bench = Bench(args, nats_srv, bus, workdir)
        await ensure_stream(bus, bench.subjects, args.stream_max_bytes)
        max_payload = bus.client.max_payload
        print(f"nats-server {nats_srv.url} (JetStream, max_payload {max_payload} B); stream "
              f"{bench.stream}; workdir {workdir}", flush=True)  # fmt: skip
        machine = machine_info()
        rows: list[dict[str, Any]] = []
        for size in args.sizes:
            got = await run_size(bench, size, max_payload)
            profiles: dict[str, Any] = {}
            if args.profile and size == min(args.sizes):
                for variant in VARIANTS:
                    batch = got["best"][variant]["batch_max_records"]
                    r = await bench.run_one(RunSpec(size, variant, batch, profile=True))
                    rate = r["records_per_s"]
                    print(f"  profiled {size} B {variant} batch {batch}: {rate:,.0f} rec/s "
                          "under cProfile", flush=True)  # fmt: skip
                    profiles[variant] = {
                        "batch_max_records": batch,
                        "records_per_s_under_profile": r["records_per_s"],
                        **r["profile"],
                    }
            row = row_for(size, got, profiles)
            row["notes"] = NOTES.format(
                seconds=args.seconds, warmup=args.warmup, loadgen_batch=args.loadgen_batch,
                cpus=os.cpu_count(), rate=UNLIMITED_RATE, repeat=args.repeat,
            )  # fmt: skip
            row["params"] = {
                "seconds": args.seconds,
                "warmup_s": args.warmup,
                "batch_max_ms": args.batch_max_ms,
                "loadgen_batch": args.loadgen_batch,
                "rate_per_s": UNLIMITED_RATE,
                "burst": UNLIMITED_RATE,
                "policy": "block",
                "stream_max_bytes": args.stream_max_bytes,
                "max_payload": max_payload,
            }
            row["machine"] = {
                **machine,
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            }
            row["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            rows.append(row)
        return rows
    finally:
        if bus is not None:
            try:
                await bus.close(timeout=2.0)
            except Exception as exc:
                warn(f"closing the coordinator's NATS connection: {exc!r}")
        try:
            nats_srv.stop()
        except Exception as exc:
            warn(f"stopping nats-server: {exc!r}")
        if args.keep_workdir:
            print(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- output


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("record", "payload B", "records/s", "(median)", "re-encode rec/s", "(median)", "x",
            "agent ms/10k", "re-enc ms/10k", "batch", "plugin ms/10k", "nats ms/10k")  # fmt: skip
    lines = [head]
    for r in rows:
        lines.append((
            f"{r['record_bytes']} B", f"{r['payload_bytes']}", f"{r['records_per_s']:,.0f}",
            f"({r['records_per_s_median']:,.0f})", f"{r['reencode_records_per_s']:,.0f}",
            f"({r['reencode_records_per_s_median']:,.0f})", f"{r['encode_once_speedup']}",
            f"{r['agent_cpu_ms_per_10k']}", f"{r['reencode_agent_cpu_ms_per_10k']}",
            f"{r['batch_max_records']}/{r['reencode_batch_max_records']}",
            f"{r['plugin_cpu_ms_per_10k']}", f"{r['nats_cpu_ms_per_10k']}",
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print()
    print("hidsd telemetry path, one agent (plugin pipe -> JetStream PubAck); records/s: best "
          "run, median of its configuration's runs in parentheses")  # fmt: skip
    for i, line in enumerate(lines):
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    small = next((r for r in rows if r["record_bytes"] == 100), None)
    if small is not None:
        ok = small["records_per_s"] >= TARGET_100B
        print(f"\ntarget {TARGET_100B:,} records/s of 100 B: "
              f"{'met' if ok else 'NOT met'} ({small['records_per_s']:,.0f})")  # fmt: skip
    for r in rows:
        for variant, prof in (r.get("profile") or {}).items():
            print(f"\nagent profile, {r['record_bytes']} B {variant} (own time, top 12 of "
                  f"{prof['total_tottime_s']} s):")  # fmt: skip
            for p in prof["by_tottime"][:12]:
                print(f"  {p['tottime_pct']:>5}%  {p['calls']:>9,}  {p['where']}")


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per run (10)")
    p.add_argument("--warmup", type=float, default=3.0, help="warmup before the window (3)")
    p.add_argument("--sizes", type=int_list, default=[100, 1000],
                   help="loadgen record sizes in bytes (100,1000)")  # fmt: skip
    p.add_argument("--batches", type=int_list, default=[500, 1000, 2000],
                   help="batch_max_records values to try (500,1000,2000)")  # fmt: skip
    p.add_argument("--repeat", type=int, default=2,
                   help="runs per configuration and variant; the best is reported (2)")  # fmt: skip
    p.add_argument("--batch-max-ms", type=int, default=200, help="batch_max_ms (200)")
    p.add_argument("--loadgen-batch", type=int, default=64,
                   help="frames per pipe write in loadgen (its default, 64)")  # fmt: skip
    p.add_argument("--stream-max-bytes", type=int, default=8 << 30,
                   help="telemetry stream bound (8 GiB; purged before every run)")  # fmt: skip
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the cProfile runs of the agent")  # fmt: skip
    p.add_argument("--profile-top", type=int, default=30, help="profile rows kept (30)")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs, profiles, stream")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.repeat < 1:
        p.error("--seconds and --repeat must be positive and --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hidsd_logging.configure("warning")
    try:
        rows = uvloop.run(run(args))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; agent, plugin and nats-server stopped", file=sys.stderr)
        return 130
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
