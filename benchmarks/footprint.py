"""Footprint benchmark: the agent's RSS and CPU, and what it costs the host's real work.

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/footprint.py [--quick] [--budget-s 540]
        [--idle-s 40] [--phase-s 20] [--skip-business] [--business-reps 3]

A local stack (`harness.stack`: nats-server with JetStream, one etcd member, no auth) and the
telemetry stream as the controller makes it (`StreamSpec` + `Bus.js_ensure_stream`, bounded
here). ONE real agent process at a time (`python -m hidsd.agent.main -c agent.toml`, cgroups
"auto" with a cgroup name of its own: cgroup v1 here, run as root), measured from outside
(`footprint_agent.measure`). Its dynamic config is written into etcd as `hidsctl config set
--scope fleet` writes it (`hidsd.ctl.configplane.set_config`), so the agent hot-applies each
phase's config; the hidsd package is byte-compiled first, as an installed package is.

1. idle (`--idle-s`): no plugins, after `--warmup-s` of settling. `idle_rss_mb` is the largest
   RSS sampled (every second), `idle_cpu_pct` the CPU over the window.
2. plugins: the built-ins procmon, inventory, fim (on a temp dir) and authlog (on a temp file)
   for `--phase-s` after `--settle-s`; `plugins_rss_mb` is the median over the samples of
   the sum of the plugin processes' RSS.
3. load: `loadgen` at 1,000 records/s of 200 B alone for `--phase-s` after a warmup;
   `load_cpu_pct` is the agent's CPU; the records that reached NATS are counted from the
   telemetry subject and from the heartbeat's pipeline counters.
4. business (`footprint_business.py`): a fixed CPU-bound job's time alone and beside fresh
   agents, with and without the circuit breaker and cgroups, against a burning `drill` plugin.

Against the 15-minute version, the full run fits `--budget-s` (540 s): idle 40 s (was 60)
after 5 s (was 10), plugins and load windows 20 s (were 30) after 15 s / 5 s, the same 1 s
sampling; business 3 rounds of the same 320M job, at most 1 rerun of a busy-host job (was 2)
and only while the budget allows, up to 10 s waiting for a quiet host (was 10 min), a warm-up
job of a quarter of the work. Phases and rounds that would overrun the budget are cut (`cut`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from typing import Any

from footprint_agent import AgentProc, Host, Observer, breaker_summary, measure, wait_for
from footprint_business import CONDITIONS, DRILL_AFTER_S, Business
from harness.report import (
    RESULTS,
    Budget,
    Option,
    add_common_args,
    add_options,
    fmt,
    print_rows,
    quick_defaults,
    run_benchmark,
    warn,
)
from harness.stack import local_stack

from hidsd.bus.store import Store
from hidsd.bus.transport import StreamSpec
from hidsd.wire.heartbeat import plugin_map
from hidsd.wire.names import Subjects
from hidsd.wire.signing import OperatorKey, encode_public_key

TARGET_IDLE_RSS_MB = 50.0
TARGET_IDLE_CPU_PCT = 0.5
TARGET_SLOWDOWN_PCT = 5.0
BUILTINS = ("procmon", "inventory", "fim", "authlog")
LOAD_RATE = 1000
LOAD_SIZE = 200
IDLE_TOML = '# footprint: idle, no plugins\nlog_level = "info"\n'
PLUGINS_TOML = """\
# footprint: the built-in plugins
[plugins.procmon]
enabled = true
[plugins.inventory]
enabled = true
[plugins.fim]
enabled = true
params = {{ paths = [{fim_dir}] }}
[plugins.authlog]
enabled = true
params = {{ paths = [{auth_log}] }}
"""
LOAD_TOML = f"""\
# footprint: {LOAD_RATE} records/s of telemetry
[plugins.loadgen]
enabled = true
rate_per_s = 5000
burst = 5000
params = {{ rate = {LOAD_RATE}, size = {LOAD_SIZE} }}
"""

NOTES = (
    "One real agent process (python -m hidsd.agent.main, uvloop, log_format json, cgroups "
    "auto with a cgroup name of its own: cgroup v1 here, as root; breaker at its defaults "
    "unless said otherwise), measured from outside with psutil every second: a real host's "
    "agent, with nats-server and etcd on the same {cpus} cores. RSS includes the shared clean "
    "pages of the libraries it maps (agent_smaps splits it: private_dirty is what the agent "
    "alone costs). CPU = (user+system time delta, all threads) / wall time, in percent of one "
    "core; plugins are the agent's descendants, measured the same way. The hidsd package is "
    "byte-compiled before each start (as installed). Idle = no plugins, heartbeat 10 s, "
    "resync 60 s; windows: idle {idle_s} s after {warmup_s} s, plugins and load {phase_s} s. "
    "The load phase runs loadgen alone; records_per_s_on_nats counts the records in the "
    "batches that arrived on the telemetry subject during the window. The business job is "
    "{procs} processes (one per core) of {work}M iterations of a pure-Python loop, in {reps} "
    "rounds interleaving the conditions. This machine's speed drifts by up to ~15 % between "
    "runs, so business_slowdown_pct is corrected for it: from on_cpu, the share of the job's "
    "wall time its processes were on a CPU, as median(on_cpu alone) / median(on_cpu with the "
    "agent) - 1 (the time the job waited for a CPU, not slowdown through shared caches); "
    "business_slowdown_wall_pct is the raw median over rounds of wall / wall(alone, same "
    "round) - 1. Jobs during which the rest of the host used more than {max_other}% of a core "
    "are rerun (at most {retries} time(s), while the budget allows); each run first waits up "
    "to {quiet_s} s for 3 quiet seconds. The drill plugin (mode burn) starts to burn {after} s "
    "into the job, so each run includes the breaker's detection (interval 0.5 s, window 2 s, "
    "grace 1 s, other thresholds at their defaults); with cgroups the kernel's cpu quota holds "
    "the plugins at once. no_breaker = [breaker] enabled = false, cgroups auto (the quota "
    "still applies); unprotected = breaker disabled and cgroups off. Each agent run is a fresh "
    "agent. Shorter than the 15-minute version (see the module docstring): idle 40 s (was 60), "
    "windows 20 s (were 30), reruns at most 1 (was 2)."
)


async def phase_idle(host: Host, agent: AgentProc, a: argparse.Namespace) -> dict[str, Any]:
    await host.start_agent(agent, IDLE_TOML, "footprint: idle")
    assert agent.ps is not None
    print(f"agent up (pid {agent.ps.pid}); idle: settling {a.warmup_s:.0f} s, then "
          f"{a.idle_s:.0f} s", flush=True)  # fmt: skip
    await asyncio.sleep(a.warmup_s)
    ev0 = time.monotonic()
    m = await measure(agent.ps, a.idle_s)
    m["breaker"] = breaker_summary(host.obs.last())
    m["breaker_events"] = [e for _, e in host.obs.breaker_events(ev0)]
    m["uss_mb"] = round(agent.ps.memory_full_info().uss / (1 << 20), 2)
    print(f"  idle: RSS {m['agent_rss_mb']} MB (max), CPU {m['agent_cpu_pct']:.3f} % of a core, "
          f"{m['agent_threads']} threads", flush=True)  # fmt: skip
    return m


async def phase_plugins(host: Host, agent: AgentProc, a: argparse.Namespace) -> dict[str, Any]:
    fim_dir = host.workdir / "fim"
    fim_dir.mkdir(exist_ok=True)
    for i in range(20):
        (fim_dir / f"file-{i}.txt").write_text(f"footprint {i}\n" * 50)
    auth_log = host.workdir / "auth.log"
    auth_log.write_text("")
    text = PLUGINS_TOML.format(fim_dir=json.dumps(str(fim_dir)),
                               auth_log=json.dumps(str(auth_log)))  # fmt: skip
    since = time.monotonic()
    await host.wait_applied(await host.set_config(text, "footprint: built-ins"), agent, since)
    await host.wait_plugins(agent, BUILTINS)
    print(f"plugins {', '.join(BUILTINS)} running; settling {a.settle_s:.0f} s, then "
          f"{a.phase_s:.0f} s", flush=True)  # fmt: skip
    await asyncio.sleep(a.settle_s)
    assert agent.ps is not None
    ev0 = time.monotonic()
    m = await measure(agent.ps, a.phase_s)
    hb = host.obs.last()
    m["breaker"] = breaker_summary(hb)
    m["breaker_events"] = [e for _, e in host.obs.breaker_events(ev0)]
    keep = ("state", "starts", "records", "cpu_pct", "rss_bytes")
    m["heartbeat_plugins"] = {n: {k: v for k, v in plugin_map(hb, n).items() if k in keep}
                              for n in BUILTINS} if hb is not None else {}  # fmt: skip
    print(f"  plugins: {m['plugins_rss_mb']} MB RSS together, {m['plugins_cpu_pct']:.2f} % CPU; "
          f"agent {m['agent_rss_mb']} MB, {m['agent_cpu_pct']:.3f} %", flush=True)  # fmt: skip
    return m


async def phase_load(host: Host, agent: AgentProc, a: argparse.Namespace) -> dict[str, Any]:
    obs = host.obs
    since = time.monotonic()
    await host.wait_applied(await host.set_config(LOAD_TOML, "footprint: loadgen"), agent, since)
    await host.wait_plugins(agent, ("loadgen",), BUILTINS)
    await wait_for(lambda: obs.records("loadgen", since, time.monotonic()) > 0, 20,
                   "loadgen records on NATS", agent)  # fmt: skip
    print(f"loadgen running; warmup {a.load_warmup_s:.0f} s, then {a.phase_s:.0f} s", flush=True)
    await asyncio.sleep(a.load_warmup_s)
    assert agent.ps is not None
    t0 = time.monotonic()
    hb0 = obs.heartbeats[-1][1] if obs.heartbeats else None
    m = await measure(agent.ps, a.phase_s)
    t1 = time.monotonic()
    n_hb = len(obs.heartbeats)  # one more heartbeat after the window, for the counters
    await wait_for(lambda: len(obs.heartbeats) > n_hb, 30, "a heartbeat", agent)
    hb1 = obs.heartbeats[-1][1]
    got = obs.records("loadgen", t0, t1)
    m["records_on_nats"] = got
    m["records_per_s_on_nats"] = round(got / (t1 - t0), 1)
    if hb0 is not None:
        p0, p1 = dict(plugin_map(hb0, "loadgen")), dict(plugin_map(hb1, "loadgen"))
        dt = hb1.sent_at - hb0.sent_at
        out = p1.get("tel.records_out", 0) - p0.get("tel.records_out", 0)
        m["heartbeat_records_out_per_s"] = round(out / dt, 1) if dt > 0 else None
        m["heartbeat_window_s"] = round(dt, 2)
        m["drops"] = {k: p1.get(k, 0) for k in p1 if k.startswith("tel.dropped")}
        m["publish_failures"] = p1.get("tel.publish_failures", 0)
    lg = m["per_plugin"].get("loadgen", {})
    m["loadgen_cpu_pct"], m["loadgen_rss_mb"] = lg.get("cpu_pct"), lg.get("rss_mb")
    m["rate_ok"] = abs(m["records_per_s_on_nats"] - LOAD_RATE) <= 0.05 * LOAD_RATE
    if not m["rate_ok"]:
        warn(f"loadgen delivered {m['records_per_s_on_nats']} records/s, not ~{LOAD_RATE}")
    m["breaker"] = breaker_summary(obs.last())
    m["breaker_events"] = [e for _, e in obs.breaker_events(t0)]
    print(f"  load: agent CPU {m['agent_cpu_pct']:.2f} % ({m['records_per_s_on_nats']:,.0f} "
          f"records/s on NATS, heartbeat says {m.get('heartbeat_records_out_per_s')}); loadgen "
          f"{m['loadgen_cpu_pct']} %; agent RSS {m['agent_rss_mb']} MB", flush=True)  # fmt: skip
    return m


def summarize(res: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    idle, plug, load = res.get("idle") or {}, res.get("plugins") or {}, res.get("load") or {}
    biz = res.get("business") or {}
    slow, wall = biz.get("slowdown_pct", {}), biz.get("slowdown_wall_pct", {})
    out: dict[str, Any] = {
        "idle_rss_mb": idle.get("agent_rss_mb"), "idle_cpu_pct": idle.get("agent_cpu_pct"),
        "plugins_rss_mb": plug.get("plugins_rss_mb"), "load_cpu_pct": load.get("agent_cpu_pct"),
        "business_slowdown_pct": slow.get("breaker"),
        "idle_private_dirty_mb": idle.get("agent_smaps", {}).get("private_dirty_mb"),
        "plugins_cpu_pct": plug.get("plugins_cpu_pct"),
        "plugins_agent_rss_mb": plug.get("agent_rss_mb"),
        "plugins_agent_cpu_pct": plug.get("agent_cpu_pct"),
        "load_records_per_s": load.get("records_per_s_on_nats"),
        "load_loadgen_cpu_pct": load.get("loadgen_cpu_pct"),
        "load_agent_rss_mb": load.get("agent_rss_mb"),
        "business_slowdown_wall_pct": wall.get("breaker"),
        "business_slowdown_breaker_disabled_pct": slow.get("no_breaker"),
        "business_slowdown_unprotected_pct": slow.get("unprotected"),
        "business_slowdown_agent_idle_pct": slow.get("agent_idle"),
        "business_drill_cpu_s": biz.get("median_drill_cpu_s"),
        "business_drill_stopped_at_s": biz.get("median_drill_stopped_at_s"),
        "business_drill_cores_by_stretch": biz.get("median_drill_cores_by_stretch", {}).get(
            "breaker"),
    }  # fmt: skip

    def under(key: str, target: float) -> bool | None:
        return None if out[key] is None else bool(out[key] < target)

    targets = {"idle_rss_under_50_mb": under("idle_rss_mb", TARGET_IDLE_RSS_MB),
               "idle_cpu_under_0.5_pct": under("idle_cpu_pct", TARGET_IDLE_CPU_PCT),
               "business_slowdown_under_5_pct": under("business_slowdown_pct",
                                                      TARGET_SLOWDOWN_PCT)}  # fmt: skip
    notes = NOTES.format(cpus=os.cpu_count(), procs=os.cpu_count(), work=a.business_work,
                         reps=a.business_reps, after=DRILL_AFTER_S, max_other=a.max_other_pct,
                         retries=a.business_retries, quiet_s=a.quiet_timeout_s,
                         idle_s=a.idle_s, warmup_s=a.warmup_s, phase_s=a.phase_s)  # fmt: skip
    if not biz:
        notes += " The business phase did not run (skipped or cut): its figures are null."
    return {**out, "targets": targets, **res, "notes": notes}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    budget = Budget(args.budget_s)
    prefix = f"fp{secrets.token_hex(3)}"
    subjects = Subjects(prefix)
    res: dict[str, Any] = {}
    async with local_stack("footprint") as st, Store(st.etcd_endpoints, timeout_s=5.0) as store:
        await st.bus.js_ensure_stream(StreamSpec(subjects.telemetry_stream(),
                                                 (subjects.telemetry_all(),), max_bytes=256 << 20,
                                                 max_age_s=600.0), timeout=10.0)  # fmt: skip
        obs = await Observer(subjects).start(st.bus)
        key = encode_public_key(OperatorKey.generate().public_key)
        host = Host(st.workdir, st.nats_url, list(st.etcd_endpoints), store, obs, prefix, key)
        agent: AgentProc | None = host.agent()
        try:
            phases = (("idle", phase_idle, args.warmup_s + args.idle_s + 10),
                      ("plugins", phase_plugins, args.settle_s + args.phase_s + 10),
                      ("load", phase_load, args.load_warmup_s + args.phase_s + 20))  # fmt: skip
            for name, phase, needs_s in phases:
                if not budget.fits(name, needs_s):
                    break
                res[name] = await phase(host, agent, args)
            res["agent_exit_code"] = await agent.stop()
            agent = None
            if not args.skip_business:
                biz = Business(host, args.business_work, args.max_other_pct,
                               args.quiet_timeout_s, budget)  # fmt: skip
                res["business"] = await biz.phase(tuple(args.conditions), args.business_reps,
                                                  args.business_retries)  # fmt: skip
        finally:
            if agent is not None:
                with contextlib.suppress(Exception):
                    await agent.stop()
    res["params"] = {k: getattr(args, k) for k in (
        "idle_s", "warmup_s", "phase_s", "settle_s", "load_warmup_s", "business_reps",
        "business_work", "skip_business", "max_other_pct", "business_retries",
        "quiet_timeout_s", "conditions", "budget_s")}  # fmt: skip
    res["params"].update(load_rate=LOAD_RATE, load_size=LOAD_SIZE, drill_after_s=DRILL_AFTER_S)
    res["cut"] = budget.cut
    res["config_versions"] = host.config_versions
    return summarize(res, args)


def print_summary(out: dict[str, Any]) -> None:
    t = out["targets"]

    def verdict(ok: bool | None) -> str:
        return "" if ok is None else ("  (met)" if ok else "  (NOT met)")

    rows = [
        ("idle_rss_mb (< 50)", fmt(out["idle_rss_mb"], "MB") + verdict(t["idle_rss_under_50_mb"])),
        ("idle_cpu_pct (< 0.5)", fmt(out["idle_cpu_pct"], "%")
         + verdict(t["idle_cpu_under_0.5_pct"])),
        ("plugins_rss_mb", fmt(out["plugins_rss_mb"], "MB")),
        ("load_cpu_pct", fmt(out["load_cpu_pct"], "%")),
        ("business_slowdown_pct (< 5)", fmt(out["business_slowdown_pct"], "%")
         + verdict(t["business_slowdown_under_5_pct"])),
        ("  idle private dirty", fmt(out["idle_private_dirty_mb"], "MB")),
        ("  plugins CPU", fmt(out["plugins_cpu_pct"], "%")),
        ("  agent with plugins", f"{fmt(out['plugins_agent_rss_mb'], 'MB')}, "
         f"{fmt(out['plugins_agent_cpu_pct'], '%')}"),
        ("  load: records/s on NATS", fmt(out["load_records_per_s"], "")),
        ("  load: loadgen CPU", fmt(out["load_loadgen_cpu_pct"], "%")),
        ("  slowdown, raw wall time", fmt(out["business_slowdown_wall_pct"], "%")),
        ("  slowdown, breaker disabled", fmt(out["business_slowdown_breaker_disabled_pct"], "%")),
        ("  slowdown, unprotected", fmt(out["business_slowdown_unprotected_pct"], "%")),
        ("  slowdown, agent idle", fmt(out["business_slowdown_agent_idle_pct"], "%")),
        ("  drill stopped at (breaker on)", fmt(out["business_drill_stopped_at_s"], "s")),
    ]  # fmt: skip
    print_rows("hidsd agent footprint (one agent, this machine)", rows, out["quick"])
    biz = out.get("business") or {}
    if biz.get("median_wall_s"):
        print("business medians: " + ", ".join(
            f"{c} {v:.2f} s" for c, v in biz["median_wall_s"].items()))  # fmt: skip
    if out["cut"]:
        print(f"cut by the time budget: {', '.join(out['cut'])}")


OPTIONS: list[Option] = [
    ("--max-other-pct", float, 15.0, "a job during which the rest of the host used more than "
     "this share of one core is run again"),
    ("--budget-s", float, 540.0, "phases and rounds that would end later than this are cut"),
]  # fmt: skip
#: option: (help, full run, --quick)
SIZED: dict[str, tuple[str, Any, Any]] = {
    "idle_s": ("idle window", 40.0, 5.0),
    "warmup_s": ("settling after the agent is up, before the idle window", 5.0, 2.0),
    "phase_s": ("plugins and load windows", 20.0, 5.0),
    "settle_s": ("after the built-ins started, before their window", 15.0, 3.0),
    "load_warmup_s": ("after loadgen's records flow, before the load window", 5.0, 2.0),
    "business_reps": ("rounds of the business conditions (medians reported)", 3, 1),
    "business_work": ("million loop iterations per business process (320: ~15 s here)", 320, 80),
    "business_retries": ("reruns of a busy-host job", 1, 0),
    "quiet_timeout_s": ("longest wait for a quiet host before each business run", 10.0, 3.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_args(p, RESULTS / "footprint.json")
    for key, (text, full, quick) in SIZED.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(full),
                       help=f"{text} ({full}; {quick} with --quick)")  # fmt: skip
    p.add_argument("--conditions", type=lambda s: [c for c in s.split(",") if c],
                   help=f"business conditions ({','.join(CONDITIONS)}; alone,breaker,"
                   "unprotected with --quick)")  # fmt: skip
    add_options(p, OPTIONS)
    p.add_argument("--skip-business", action="store_true", help="skip the business phase")
    args = p.parse_args(argv)
    quick_defaults(args, {k: v[1] for k, v in SIZED.items()} | {"conditions": list(CONDITIONS)},
                   {k: v[2] for k, v in SIZED.items()}
                   | {"conditions": ["alone", "breaker", "unprotected"]})  # fmt: skip
    if unknown := set(args.conditions) - set(CONDITIONS):
        p.error(f"unknown conditions {sorted(unknown)}")
    if "alone" not in args.conditions:
        p.error("--conditions must include alone (the reference)")
    if min(args.idle_s, args.phase_s) <= 0 or args.business_reps < 1 or args.business_work < 1:
        p.error("--idle-s, --phase-s, --business-reps and --business-work must be positive")
    return args


if __name__ == "__main__":
    sys.exit(run_benchmark("footprint", parse_args(), run, print_summary))
