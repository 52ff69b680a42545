"""Telemetry path benchmark: records per second from a plugin's pipe into JetStream, one agent.

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/telemetry_path.py [--quick] [--sizes 100,1000]
        [--batches 500,1000,2000] [--repeat 2] [--seconds 10] [--warmup 3] [--no-profile]

A local stack (`harness.stack`: nats-server with JetStream, one etcd member the path does not
use) and the telemetry stream as the controller makes it (`hidsd.bus.transport.StreamSpec` +
`Bus.js_ensure_stream`: subjects `<prefix>.tel.>`, file storage, discard old, 120 s duplicate
window), bounded by `--stream-max-bytes` and purged before every run.

Each run is a fresh worker process (`telemetry_path_worker.py`, uvloop, `harness.workers`)
holding one agent's real plugin path: its own `Bus` and the agent's `Supervisor`, configured
through `Supervisor.configure` with the built-in `loadgen` plugin (a real child process) at
rate 0, so every record goes plugin pipe -> header check -> `Pipeline.offer` -> bounded queue
-> token bucket -> batcher -> one `Bus.js_publish` per batch, waiting for its PubAck. The
worker counts the records whose batch JetStream acknowledged and its own CPU over a window
after a warmup; agent_cpu_ms_per_10k is that CPU per 10,000 acknowledged records. The
re-encode variant wraps the running pipeline's `offer` to msgpack-decode and re-encode each
payload first. Then the supervisor stops the plugin (a config without it) and every frame the
pipeline took is checked against the stream (the last stored batch's sequence headers) and
the spool's batch files: the `stop_accounting` of each run.

For every record size and variant, each `--batches` value runs `--repeat` times, the variants
interleaved (batches over the server's max_payload are skipped); the best run is reported with
its configuration's median. With profiling, the best configuration of the smallest size runs
once more per variant under cProfile. Runs that would end past `--budget-s` are cut (`cut`).

Writes `benchmarks/results/telemetry_path.json` (or `--out`): `rows` has one object per
record size with the old keys; the top level has the 100 B headline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.report import (
    RESULTS,
    Budget,
    Option,
    add_common_args,
    add_options,
    print_rows,
    quick_defaults,
    run_benchmark,
    warn,
)
from harness.stack import Stack, local_stack
from harness.workers import WorkerPool
from telemetry_path_figures import inspect_stream, profile_summary, row_for, stop_accounting

from hidsd.bus.transport import StreamSpec
from hidsd.wire.names import Subjects

WORKER = Path(__file__).resolve().parent / "telemetry_path_worker.py"
HOST = "bench-tel-1"
PREFIX = "hidsd"
#: far above anything one agent reaches: the token bucket must not be what limits
UNLIMITED_RATE = 10_000_000.0
#: room for NATS headers and protocol when checking a batch against max_payload
PAYLOAD_SLACK = 4096
TARGET_100B = 100_000
VARIANTS = ("direct", "reencode")
#: a run's cost besides its window: worker start, first ack, stop, read-back (seconds)
RUN_OVERHEAD_S = 6.0

NOTES = (
    "One agent's real plugin path in a worker process (uvloop): the agent's Supervisor "
    "(hidsd.plugins.supervisor), configured through its public configure() with the loadgen "
    "built-in (rate 0, {loadgen_batch} frames per write) and a [telemetry] section, builds the "
    "PluginRunner + Pipeline itself; publish = Bus.js_publish on the worker's own NATS "
    "connection; the stream is made with StreamSpec + Bus.js_ensure_stream as the controller "
    "makes it. Every record goes plugin pipe -> 16-byte header check -> Pipeline.offer -> "
    "bounded queue -> token bucket -> batcher -> one JetStream publish per batch, waiting for "
    "its PubAck before the next. records_per_s counts records whose batch JetStream "
    "acknowledged, over a {seconds} s window after {warmup} s of warmup. "
    "agent_cpu_ms_per_10k is the worker's CPU (user+system, all its threads, not the "
    "plugin's; its control connection is idle during the window) per 10,000 acknowledged "
    "records. The plugin and nats-server (JetStream file storage in a temp dir) run on the "
    "same {cpus} cores; their CPU is reported per 10k records too. A loadgen record is the "
    "msgpack map {{n: int, pad: str}} with size-24 pad characters (payload_bytes measured from "
    "the last stored batch). The re-encode variant wraps the running pipeline's offer to "
    "msgpack-decode and re-encode each payload and rebuild its frame. Token bucket: rate and "
    "burst {rate:,.0f}. Policy block: drops stay zero, a slow stage pushes back on the plugin. "
    "Best of the batch_max_records values tried, {repeat} runs each (records_per_s_median: "
    "that configuration's median; every run under `runs` with the load average after it). "
    "Each run: a fresh worker, plugin and purged stream. Profiles (cProfile, one extra run) "
    "slow the agent: use them for shares, not rates. After the window the supervisor stops "
    "the plugin (configure without it: Supervisor._stop cancels the runner, save_unsent puts "
    "what was queued in the spool); stop_accounting checks every frame the pipeline counted "
    "(frames_in) against the stream (stored = the last stored batch's first seq + count - 1) "
    "and the spool's files: lost_uncounted = frames counted in (frames_in) but in no batch, "
    "stored_and_spooled = records JetStream stored that the stop also saved to the spool "
    "(resent later, de-duplicated by their message id), counted_twice = records counted both "
    "in records_out and in spooled_records. unsent_at_stop keeps its old formula "
    "(frames_in - records_out - spooled_records - drops). Not a whole agent: no heartbeat, "
    "config service, breaker or other plugin runs beside the path."
)


@dataclass
class RunSpec:
    size: int
    variant: str
    batch: int
    profile: bool = False

    @property
    def label(self) -> str:
        return f"{self.size} B {self.variant} batch={self.batch}" + (
            " (cProfile)" if self.profile else ""
        )


@dataclass
class Bench:
    args: argparse.Namespace
    stack: Stack
    budget: Budget
    subjects: Subjects = field(default_factory=lambda: Subjects(PREFIX))
    seq: int = 0

    @property
    def stream(self) -> str:
        return self.subjects.telemetry_stream()

    def run_s(self) -> float:
        return self.args.warmup + self.args.seconds + RUN_OVERHEAD_S

    async def run_one(self, spec: RunSpec) -> dict[str, Any]:
        """One worker: the run op (warmup, window, stop), then the stream read back."""
        a = self.args
        self.seq += 1
        rundir = self.stack.workdir / f"run-{self.seq:02d}"
        rundir.mkdir(parents=True)
        await self.stack.bus.client.jetstream(timeout=30).purge_stream(self.stream)
        nats = self.stack.nats.proc
        cfg = {
            "nats_url": self.stack.nats_url, "workdir": str(rundir / "data"), "host": HOST,
            "prefix": PREFIX, "size": spec.size, "batch": spec.batch,
            "batch_max_ms": a.batch_max_ms, "rate_per_s": UNLIMITED_RATE,
            "reencode": spec.variant == "reencode", "warmup_s": a.warmup, "seconds": a.seconds,
            "sample_s": 0.5, "nats_pid": nats.pid if nats else 0,
            "loadgen_batch": a.loadgen_batch, "profile": spec.profile,
            "profile_path": str(rundir / "agent.prof"), "start_timeout_s": 30.0,
        }  # fmt: skip
        pool = WorkerPool(self.stack.bus, rundir, WORKER)
        try:
            ready = await pool.start([cfg], timeout=60.0)
            r = await pool.call_one(0, "run", timeout=self.run_s() + 90.0)
        finally:
            await pool.stop()
        r.pop("worker", None)
        r["max_payload"] = ready[0]["max_payload"]
        r.update(await inspect_stream(self.stack.bus, self.stream))
        r.update(stop_accounting(r))
        r.update(size=spec.size, variant=spec.variant, batch_max_records=spec.batch)
        r["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        if spec.profile:
            r["profile"] = profile_summary(Path(cfg["profile_path"]), a.profile_top)
        return r


def say_run(r: dict[str, Any]) -> None:
    acct = r["stop_accounting"]
    print(f"  {r['size']:>5} B  {r['variant']:<8}  batch {r['batch_max_records']:>5}:  "
          f"{r['records_per_s']:>10,.0f} rec/s   agent {r['agent_cpu_ms_per_10k']:>7} ms/10k   "
          f"plugin {r['plugin_cpu_ms_per_10k']:>7}   nats {r['nats_cpu_ms_per_10k']:>7}   "
          f"frame {r.get('frame_bytes')} B   stop {r['stop_s']} s: lost "
          f"{acct['lost_uncounted']}, stored+spooled {acct['stored_and_spooled']}, counted twice "
          f"{acct['counted_twice']}",
          flush=True)  # fmt: skip


async def run_size(bench: Bench, size: int, max_payload: int) -> dict[str, Any] | None:
    """Every batch size for both variants; the best of each, and what was skipped or cut."""
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    frame_max = 0
    for batch in sorted(bench.args.batches):
        if frame_max and batch * frame_max + PAYLOAD_SLACK > max_payload:
            why = f"{batch} frames of up to {frame_max} B exceed max_payload {max_payload} B"
            skipped.append({"batch_max_records": batch, "why": why})
            print(f"  {size:>5} B  skip batch {batch}: {why}", flush=True)
            continue
        for rep in range(bench.args.repeat):
            for variant in VARIANTS:  # interleaved, so drift in the machine's load hits both
                spec = RunSpec(size, variant, batch)
                if not bench.budget.fits(spec.label, bench.run_s()):
                    break
                r = await bench.run_one(spec)
                r["repeat"] = rep
                say_run(r)
                runs.append(r)
                frame_max = max(frame_max, int(r.get("frame_bytes_max") or 0))
    if not all(any(r["variant"] == v for r in runs) for v in VARIANTS):
        return None
    best: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        top = max(mine, key=lambda r: r["records_per_s"])
        same = [r["records_per_s"] for r in mine
                if r["batch_max_records"] == top["batch_max_records"]]  # fmt: skip
        best[variant] = {**top, "records_per_s_median": round(statistics.median(same), 1),
                         "repeats": len(same)}  # fmt: skip
    return {"runs": runs, "skipped": skipped, "best": best}


async def profiles(bench: Bench, size: int, got: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        batch = got["best"][variant]["batch_max_records"]
        spec = RunSpec(size, variant, batch, profile=True)
        if not bench.budget.fits(spec.label, bench.run_s()):
            continue
        r = await bench.run_one(spec)
        print(f"  profiled {spec.label}: {r['records_per_s']:,.0f} rec/s under cProfile",
              flush=True)  # fmt: skip
        out[variant] = {
            "batch_max_records": batch,
            "records_per_s_under_profile": r["records_per_s"],
            **r["profile"],
        }
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    budget = Budget(args.budget_s)
    async with local_stack("telpath") as st:
        bench = Bench(args, st, budget)
        await st.bus.js_ensure_stream(StreamSpec(bench.stream, (bench.subjects.telemetry_all(),),
                                                 max_bytes=args.stream_max_bytes,
                                                 max_age_s=3600.0), timeout=10.0)  # fmt: skip
        max_payload = st.bus.client.max_payload
        print(f"stream {bench.stream}; max_payload {max_payload} B", flush=True)
        rows: list[dict[str, Any]] = []
        for size in args.sizes:
            got = await run_size(bench, size, max_payload)
            if got is None:
                warn(f"{size} B: not every variant ran inside the budget; no row")
                continue
            prof = await profiles(bench, size, got) if args.profile and size == min(
                args.sizes) else {}  # fmt: skip
            rows.append(row_for(size, got, prof))
    params = {"seconds": args.seconds, "warmup_s": args.warmup, "batch_max_ms": args.batch_max_ms,
              "loadgen_batch": args.loadgen_batch, "rate_per_s": UNLIMITED_RATE,
              "burst": UNLIMITED_RATE, "policy": "block", "repeat": args.repeat,
              "stream_max_bytes": args.stream_max_bytes, "max_payload": max_payload,
              "budget_s": args.budget_s}  # fmt: skip
    small = next((r for r in rows if r["record_bytes"] == min(args.sizes)), {})
    return {
        **{k: small.get(k) for k in ("record_bytes", "records_per_s", "reencode_records_per_s",
                                     "agent_cpu_ms_per_10k", "reencode_agent_cpu_ms_per_10k",
                                     "encode_once_speedup")},
        "target_100b_met": (small.get("records_per_s") or 0) >= TARGET_100B
        if small.get("record_bytes") == 100 else None,
        "rows": rows, "params": params, "cut": budget.cut,
        "notes": NOTES.format(seconds=args.seconds, warmup=args.warmup, cpus=os.cpu_count(),
                              loadgen_batch=args.loadgen_batch, rate=UNLIMITED_RATE,
                              repeat=args.repeat),
    }  # fmt: skip


def print_summary(res: dict[str, Any]) -> None:
    for r in res["rows"]:
        acct = r["stop_accounting"]
        rows = [
            ("records/s (best; median)",
             f"{r['records_per_s']:,.0f}; {r['records_per_s_median']:,.0f}"),
            ("re-encode records/s", f"{r['reencode_records_per_s']:,.0f}; "
             f"{r['reencode_records_per_s_median']:,.0f}"),
            ("encode-once speedup", f"{r['encode_once_speedup']} x"),
            ("agent ms / 10k records", f"{r['agent_cpu_ms_per_10k']}"),
            ("re-encode agent ms / 10k", f"{r['reencode_agent_cpu_ms_per_10k']}"),
            ("plugin / nats ms / 10k",
             f"{r['plugin_cpu_ms_per_10k']} / {r['nats_cpu_ms_per_10k']}"),
            ("batch (direct/re-encode)",
             f"{r['batch_max_records']}/{r['reencode_batch_max_records']}"),
            ("payload / frame bytes", f"{r['payload_bytes']} / {r['frame_bytes']}"),
            ("drops (all runs)", f"{sum(r['drops'].values())}"),
            ("stop: lost uncounted (max)", f"{acct['max_lost_uncounted']}"),
            ("stop: stored and spooled (max)", f"{acct['max_stored_and_spooled']}"),
            ("stop: counted twice (max)", f"{acct['max_counted_twice']}"),
        ]  # fmt: skip
        print_rows(f"telemetry path, {r['record_bytes']} B records, one agent", rows, res["quick"])
    if res.get("target_100b_met") is not None:
        print(f"target {TARGET_100B:,} records/s of 100 B: "
              f"{'met' if res['target_100b_met'] else 'NOT met'}")  # fmt: skip
    for r in res["rows"]:
        for variant, prof in (r.get("profile") or {}).items():
            print(f"\nagent profile, {r['record_bytes']} B {variant} (own time, top 12 of "
                  f"{prof['total_tottime_s']} s):")  # fmt: skip
            for p in prof["by_tottime"][:12]:
                print(f"  {p['tottime_pct']:>5}%  {p['calls']:>9,}  {p['where']}")
    if res["cut"]:
        print(f"cut by the time budget: {', '.join(res['cut'])}")


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


OPTIONS: list[Option] = [
    ("--batch-max-ms", int, 200, "telemetry batch_max_ms"),
    ("--loadgen-batch", int, 64, "frames per pipe write in loadgen (its default)"),
    ("--stream-max-bytes", int, 8 << 30, "telemetry stream bound (purged before every run)"),
    ("--profile-top", int, 30, "profile rows kept"),
    ("--budget-s", float, 540.0, "runs that would end later than this after the start are cut"),
]
FULL = {"seconds": 10.0, "warmup": 3.0, "sizes": [100, 1000], "batches": [500, 1000, 2000],
        "repeat": 2, "profile": True}  # fmt: skip
QUICK = {"seconds": 3.0, "warmup": 1.0, "batches": [1000], "repeat": 1, "profile": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_args(p, RESULTS / "telemetry_path.json")
    p.add_argument("--seconds", type=float, help="measured window per run (10; 3 with --quick)")
    p.add_argument("--warmup", type=float, help="warmup before the window (3; 1 with --quick)")
    p.add_argument("--sizes", type=int_list, help="loadgen record sizes in bytes (100,1000)")
    p.add_argument(
        "--batches",
        type=int_list,
        help="batch_max_records values to try (500,1000,2000; 1000 with --quick)",
    )
    p.add_argument("--repeat", type=int, help="runs per configuration and variant (2; 1 quick)")
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one cProfile run per variant of the smallest size (on; off quick)",
    )
    add_options(p, OPTIONS)
    args = p.parse_args(argv)
    quick_defaults(args, FULL, QUICK)
    if args.seconds <= 0 or args.warmup < 0 or args.repeat < 1:
        p.error("--seconds and --repeat must be positive and --warmup not negative")
    return args


if __name__ == "__main__":
    sys.exit(run_benchmark("telemetry_path", parse_args(), run, print_summary))
