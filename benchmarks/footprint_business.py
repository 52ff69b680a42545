"""The business phase of `benchmarks/footprint.py`: what the agent costs the host's real work.

A fixed CPU-bound job (`footprint_job.py`: one process per core, each `work` million
iterations of a pure-Python loop), its wall time in rounds of interleaved conditions: alone
(no agent), agent idle, agent with a misbehaving plugin (the `drill` built-in, mode burn,
burning from 2 s into the job) and the circuit breaker on with short windows, the same with
the breaker disabled (cgroup limits still on), and unprotected (breaker disabled, cgroups
off). Each agent run is a fresh agent process (new data dir: no denylist carried over).
The rest of the host's CPU (/proc/stat minus the job, the agent, its plugins and this
process) is accounted per job; a job during which it exceeded `max_other_pct` of a core is
run again while the time budget allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
from footprint_agent import AgentProc, Host, breaker_summary, cpu_s
from footprint_job import JobResult, run_job
from harness.procs import CpuMeter, wait_for_quiet
from harness.report import Budget, machine_busy_s

CONDITIONS = ("alone", "agent_idle", "breaker", "no_breaker", "unprotected")
DRILLS = ("breaker", "no_breaker", "unprotected")
DRILL_AFTER_S = 2.0
#: quiet time before a job (the previous agent's teardown, an agent's start-up)
SETTLE_BEFORE_JOB_S = 2.0
#: a run's cost besides the job: waiting for quiet, an agent's start and stop (seconds)
RUN_OVERHEAD_S = 9.0
#: the breaker with short windows (its other thresholds at their defaults)
BREAKER_FAST = """\
[breaker]
enabled = {enabled}
interval_s = 0.5
window_s = 2.0
grace_s = 1.0
"""
DRILL_TOML = """\
[plugins.drill]
enabled = true
params = {{ mode = "burn", after_s = {after_s} }}
"""


def business_config(cond: str) -> str:
    if cond == "agent_idle":
        return "# footprint business: agent idle, no plugins\n"
    enabled = "true" if cond == "breaker" else "false"
    head = f"# footprint business: {cond}, drill burning, breaker enabled = {enabled}\n"
    return head + BREAKER_FAST.format(enabled=enabled) + DRILL_TOML.format(after_s=DRILL_AFTER_S)


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class DrillWatch:
    """The drill's CPU over the job (sampled 5 times a second), and when it stopped. Its
    processes are looked up among the agent's children at most once a second."""

    agent: AgentProc
    started: float
    procs: dict[int, psutil.Process] = field(default_factory=dict)
    cpu: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> (first, last)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (at_s, cpu_s so far)
    gone_at: float | None = None
    seen: bool = False
    _scanned: float = -1.0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self.look()

    def look(self) -> None:
        now = time.monotonic() - self.started
        if not self.procs or now - self._scanned >= 1.0:
            self._scanned = now
            for p in self.agent.plugin_procs("drill"):
                self.procs.setdefault(p.pid, p)
        for pid, p in list(self.procs.items()):
            try:
                c = cpu_s(p)
            except psutil.Error:
                del self.procs[pid]
                continue
            self.cpu[pid] = (self.cpu.get(pid, (c, c))[0], c)
        if self.procs:
            self.seen, self.gone_at = True, None
        elif self.seen and self.gone_at is None:
            self.gone_at = now
        self.samples.append((now, self.cpu_s()))

    def cpu_s(self) -> float:
        return sum(last - first for first, last in self.cpu.values())

    def share(self, t0: float, t1: float) -> float | None:
        """The drill's CPU between t0 and t1 (s into the job), in cores."""
        inside = [(t, c) for t, c in self.samples if t0 <= t <= t1]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.3:
            return None
        return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 3)

    def stretches(self, events: list[dict[str, Any]], end: float) -> dict[str, float]:
        """The drill's cores burning before the breaker acted, then in each breaker state."""
        marks = [(DRILL_AFTER_S + 0.3, "burning")] + [
            (e["at_s"], e["state"]) for e in events if e["at_s"] >= DRILL_AFTER_S]  # fmt: skip
        out: dict[str, float] = {}
        for i, (t, label) in enumerate(marks):
            t_next = marks[i + 1][0] if i + 1 < len(marks) else end
            if self.gone_at is not None:
                t_next = min(t_next, self.gone_at)
            share = self.share(t, t_next)
            if share is not None:
                out[label] = share
        return out


async def timed_job(work: int, agent: AgentProc | None, drill: bool) -> dict[str, Any]:
    """One business job, with what else used the CPU meanwhile (the agent and its plugins,
    this process, and the rest of the host: nats-server, etcd, anything else running)."""
    procs = os.cpu_count() or 1
    a0 = cpu_s(agent.ps) if agent is not None and agent.ps is not None else 0.0
    t0 = time.monotonic()
    watch = DrillWatch(agent, t0) if agent is not None and drill else None
    if watch is not None:
        watch.look()
    watcher = asyncio.create_task(watch.run()) if watch is not None else None
    h0, s0 = machine_busy_s(), self_cpu_s()
    try:
        job: JobResult = await run_job(procs, work)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    h1, s1 = machine_busy_s(), self_cpu_s()
    if watch is not None:
        watch.look()
    agent_cpu = cpu_s(agent.ps) - a0 if agent is not None and agent.ps is not None else 0.0
    drill_cpu = watch.cpu_s() if watch is not None else 0.0
    out: dict[str, Any] = {
        "wall_s": round(job.wall_s, 3), "cpu_s": round(job.cpu_s, 2),
        #: the share of the job's wall time its processes were on a CPU (1.0: never waited)
        "on_cpu": round(job.cpu_s / procs / job.wall_s, 4),
        "agent_cpu_s": round(agent_cpu, 2),
        "other_cpu_s": round((h1 - h0) - job.cpu_s - agent_cpu - drill_cpu - (s1 - s0), 2),
        "bench_cpu_s": round(s1 - s0, 2),
    }  # fmt: skip
    if watch is not None:
        out["drill_cpu_s"] = round(drill_cpu, 2)
        out["drill_stopped_at_s"] = None if watch.gone_at is None else round(watch.gone_at, 2)
        out["_watch"] = watch
    return out


@dataclass
class Business:
    host: Host
    work: int
    max_other_pct: float
    quiet_timeout_s: float
    budget: Budget

    async def run_one(self, cond: str) -> dict[str, Any]:
        await wait_for_quiet(CpuMeter({}), self.max_other_pct, self.quiet_timeout_s)
        if cond == "alone":
            await asyncio.sleep(SETTLE_BEFORE_JOB_S)
            return {"condition": cond, **await timed_job(self.work, None, drill=False)}
        agent = self.host.agent("off" if cond == "unprotected" else "auto")
        drill = cond != "agent_idle"
        try:
            since = await self.host.start_agent(agent, business_config(cond),
                                                f"footprint business: {cond}")  # fmt: skip
            if drill:  # it idles for DRILL_AFTER_S, then burns: the job starts now
                await self.host.wait_plugins(agent, ("drill",))
            else:
                await asyncio.sleep(SETTLE_BEFORE_JOB_S)
            t0 = time.monotonic()
            r = await timed_job(self.work, agent, drill)
            r["breaker_events"] = [
                {"at_s": round(at - t0, 2), "state": e.get("state"),
                 "resource": e.get("resource"), "offender": e.get("offender")}
                for at, e in self.host.obs.breaker_events(since)
            ]  # fmt: skip
            watch = r.pop("_watch", None)
            if watch is not None:
                r["drill_cores_by_stretch"] = watch.stretches(r["breaker_events"], r["wall_s"])
            r["breaker"] = breaker_summary(self.host.obs.last())
            return {"condition": cond, **r}
        finally:
            await agent.stop()

    def quiet(self, r: dict[str, Any]) -> bool:
        """Whether the rest of the host stayed under `max_other_pct` of one core."""
        return bool(100 * r["other_cpu_s"] / r["wall_s"] <= self.max_other_pct)

    async def phase(self, conditions: tuple[str, ...], reps: int, retries: int) -> dict[str, Any]:
        procs = os.cpu_count() or 1
        print(f"business: {procs} processes x {self.work}M iterations; {reps} rounds of "
              f"{', '.join(conditions)}", flush=True)  # fmt: skip
        warm = await run_job(procs, max(1, self.work // 4))
        est = warm.wall_s * 4 + RUN_OVERHEAD_S
        print(f"  warm-up run (a quarter of the work, not counted): {warm.wall_s:.2f} s; a run "
              f"takes about {est:.0f} s", flush=True)  # fmt: skip
        runs: list[dict[str, Any]] = []
        discarded: list[dict[str, Any]] = []
        for rep in range(reps):
            # unprotected runs take about twice as long: one run more than the conditions
            if not self.budget.fits(f"business round {rep}", est * (len(conditions) + 1)):
                break
            k = rep % len(conditions)  # rotate: no condition always follows the same one
            for cond in conditions[k:] + conditions[:k]:
                for attempt in range(retries + 1):
                    r = await self.run_one(cond)
                    r["round"], r["attempt"] = rep, attempt
                    ok = self.quiet(r)
                    say(rep, cond, r, ok)
                    last = attempt == retries or not self.budget.fits(
                        f"business rerun {rep} {cond}", est * (1 + len(conditions)))  # fmt: skip
                    if ok or last:
                        r["quiet"] = ok
                        runs.append(r)
                        break
                    discarded.append(r)
        return summarize(conditions, runs, discarded, self.work, warm.wall_s)


def say(rep: int, cond: str, r: dict[str, Any], ok: bool) -> None:
    extra = ""
    if cond in DRILLS:
        states = [e["state"] for e in r["breaker_events"]]
        extra = (f"  drill {r['drill_cpu_s']} CPU s, stopped at {r['drill_stopped_at_s']} s; "
                 f"breaker {states}; drill cores {r['drill_cores_by_stretch']}")  # fmt: skip
    print(f"  round {rep} {cond:<11} {r['wall_s']:7.2f} s  on CPU {r['on_cpu']:.3f}  others "
          f"{r['other_cpu_s']:5.2f} s{extra}" + ("" if ok else "  [busy host: discarded]"),
          flush=True)  # fmt: skip


def summarize(
    conditions: tuple[str, ...], runs: list[dict[str, Any]], discarded: list[dict[str, Any]],
    work: int, warm_s: float,
) -> dict[str, Any]:  # fmt: skip
    by = {c: [r for r in runs if r["condition"] == c] for c in conditions}
    by = {c: rs for c, rs in by.items() if rs}
    if "alone" not in by:
        return {"runs": runs, "discarded_busy_host": discarded, "error": "no alone run"}
    others = [c for c in by if c != "alone"]
    med = {c: statistics.median(r["wall_s"] for r in rs) for c, rs in by.items()}
    alone = {r["round"]: r for r in by["alone"]}
    paired = {c: statistics.median(r["wall_s"] / alone[r["round"]]["wall_s"] for r in by[c]
                                   if r["round"] in alone) for c in others}  # fmt: skip
    on_cpu = {c: statistics.median(r["on_cpu"] for r in rs) for c, rs in by.items()}
    drills = [c for c in DRILLS if c in by]

    def stretches(c: str) -> dict[str, float]:
        acc: dict[str, list[float]] = {}
        for r in by[c]:
            for k, v in r.get("drill_cores_by_stretch", {}).items():
                acc.setdefault(k, []).append(v)
        return {k: round(statistics.median(v), 3) for k, v in acc.items()}

    stopped = [r["drill_stopped_at_s"] if r["drill_stopped_at_s"] is not None else math.inf
               for r in by.get("breaker", [])]  # fmt: skip
    return {
        "procs": os.cpu_count() or 1, "work_millions_per_proc": work,
        "rounds": len(by["alone"]), "conditions": list(by),
        #: the main figure: the job's time corrected for the machine's speed, from the share
        #: of its time the job's processes were on a CPU: median(on_cpu alone)/median(on_cpu)-1
        "slowdown_pct": {c: round(100 * (on_cpu["alone"] / on_cpu[c] - 1), 2) for c in others},
        #: raw wall time: median over rounds of (wall / the same round's alone wall) - 1
        "slowdown_wall_pct": {c: round(100 * (v - 1), 2) for c, v in paired.items()},
        "slowdown_of_medians_pct": {c: round(100 * (med[c] / med["alone"] - 1), 2)
                                    for c in others},
        "median_wall_s": {c: round(v, 3) for c, v in med.items()},
        "median_on_cpu": {c: round(v, 4) for c, v in on_cpu.items()},
        "median_drill_cpu_s": {c: round(statistics.median(r["drill_cpu_s"] for r in by[c]), 2)
                               for c in drills},
        "median_drill_stopped_at_s": round(statistics.median(stopped), 2) if stopped else None,
        "median_drill_cores_by_stretch": {c: stretches(c) for c in drills},
        "noisy_runs_kept": sum(1 for r in runs if not r["quiet"]),
        "warmup_quarter_wall_s": round(warm_s, 3),
        "runs": runs, "discarded_busy_host": discarded,
    }  # fmt: skip
