"""Footprint benchmark: the agent's RSS and CPU, and what it costs the host's real work.

Usage::

    .venv/bin/python benchmarks/footprint.py [--idle-s 60] [--phase-s 30] [--out PATH]
        [--skip-business] [--business-reps 5] [--business-work 320] [--max-other-pct 15]
        [--keep-workdir]

The script starts its own stack (`hidsd.dev.devstack`: one nats-server with JetStream, one etcd
member, no auth) in a temp dir, creates the telemetry stream as the controller does, and runs
ONE real agent process (`python -m hidsd.agent.main -c agent.toml`, cgroups = "auto" with a
cgroup name of its own) that it measures from outside with psutil: RSS, and CPU as the delta
of the process's user+system time over the phase's wall time, in percent of one core (all the
agent's threads, not its children). Plugins are the agent's descendant processes. The dynamic
config is written into etcd as `hidsctl config set --scope fleet` writes it
(`hidsd.ctl.configplane.set_config`), so the agent hot-applies each phase's config.
The hidsd package is byte-compiled first, as an installed package is (this environment sets
PYTHONDONTWRITEBYTECODE, and compiling our modules at every start costs the agent ~2 MB).

Phases:

1. idle (`--idle-s`, 60): no plugins; after `--warmup-s` of settling. `idle_rss_mb` is the
   largest RSS sampled (every second), `idle_cpu_pct` the CPU over the window.
2. plugins: the built-ins procmon, inventory, fim (on a temp dir) and authlog (on a temp file),
   measured for `--phase-s` after `--settle-s` (their start-up scans). `plugins_rss_mb` is the
   median over the samples of the sum of the plugin processes' RSS.
3. load: the `loadgen` built-in at 1,000 records/s of 200 B (params `{rate = 1000, size =
   200}`, token bucket 5,000/s so the bucket is not what limits it), alone, for `--phase-s`
   after a warmup. `load_cpu_pct` is the agent's CPU; loadgen's own CPU is reported apart, and
   the records that really reached NATS are counted from the telemetry subject (batch header
   counts) and from the heartbeat's pipeline counters.
4. business: a fixed CPU-bound job (`_footprint_business.py`: one process per core, each
   `--business-work` million iterations of a pure-Python loop); its wall time, in rounds of
   interleaved conditions (`--business-reps`): alone (no agent), agent idle, agent with a
   misbehaving plugin (`drill`, mode burn, starting to burn 2 s into the job) and the circuit
   breaker on with short windows (interval 0.5 s, window 2 s, grace 1 s), the same with the
   breaker disabled (cgroup limits still on), and unprotected (breaker disabled, cgroups off).
   Each agent run is a fresh agent (new data dir: no denylist carried over).
   `business_slowdown_pct` is the job's time corrected for the machine's speed drift (from
   the share of its wall time the job's processes were on a CPU: CPU time / processes / wall),
   median(alone) / median(breaker on) - 1; the raw wall-time figure is reported beside it.
   The rest of the host's CPU use is accounted per job (/proc/stat minus the job, the agent,
   its plugins and this process); a job during which it exceeded `--max-other-pct` of a core
   (someone else's work on the machine) is run again, up to `--business-retries` times; before
   every run the script waits (up to 10 min) until the host has been that quiet for 3 s.

Writes JSON to `benchmarks/results/footprint.json` (or `--out`) and prints a table with the
targets. Ctrl-C or SIGTERM stops the agent, its plugins, the job and the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import math
import os
import platform
import resource
import secrets
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

import psutil
import uvloop
from _common import BenchError, warn
from _footprint_business import JobResult, run_job

from hidsd.base import logging as hidsd_logging
from hidsd.base.errors import HidsError, ProtocolError
from hidsd.base.proc import with_pdeathsig
from hidsd.bus.store import Store
from hidsd.ctl import configplane
from hidsd.dev.devstack import EtcdCluster, NatsServer
from hidsd.wire import frames
from hidsd.wire.heartbeat import Heartbeat, decode_heartbeat, plugin_map
from hidsd.wire.names import KeyLayout, Subjects, parse_scope
from hidsd.wire.rpc import decode_event
from hidsd.wire.signing import OperatorKey, encode_public_key

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "footprint.json"
HOST = "footprint-1"
MB = 1 << 20

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
DRILL_AFTER_S = 2.0
CONDITIONS = ("alone", "agent_idle", "breaker", "no_breaker", "unprotected")
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: quiet time before a job (the previous agent's teardown, an agent's start-up)
SETTLE_BEFORE_JOB_S = 2.0


# --------------------------------------------------------------------------- process facts


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def plugin_name(p: psutil.Process) -> str:
    """`hidsd.plugins.builtin.NAME` from the command line, else the process name."""
    try:
        for arg in p.cmdline():
            if arg.startswith("hidsd.plugins.builtin."):
                return str(arg.rsplit(".", 1)[1])
        return str(p.name())
    except psutil.Error:
        return "?"


def smaps_rollup(pid: int) -> dict[str, float]:
    """MB of the rollup's Rss, Pss, Private_Dirty, Private_Clean and Shared_Clean."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Private_Dirty", "Private_Clean", "Shared_Clean"):
                    out[key.lower() + "_mb"] = round(int(rest.split()[0]) / 1024, 2)
    except (OSError, ValueError, IndexError):
        pass
    return out


@dataclass
class KidTrack:
    proc: psutil.Process
    name: str
    cpu0: float
    cpu1: float
    rss: list[int] = field(default_factory=list)


async def measure(agent: psutil.Process, seconds: float, every: float = 1.0) -> dict[str, Any]:
    """The agent's and its descendants' RSS (sampled) and CPU (delta over the window)."""
    kids: dict[int, KidTrack] = {}

    def look() -> int:
        total = 0
        for k in agent.children(recursive=True):
            try:
                tr = kids.get(k.pid)
                if tr is None:
                    c = cpu_s(k)
                    tr = kids[k.pid] = KidTrack(k, plugin_name(k), c, c)
                tr.cpu1 = cpu_s(k)
                tr.rss.append(k.memory_info().rss)
                total += tr.rss[-1]
            except psutil.Error:
                continue
        return total

    t0 = time.monotonic()
    a0 = cpu_s(agent)
    look()
    rss: list[int] = []
    kid_rss: list[int] = []
    while (elapsed := time.monotonic() - t0) < seconds:
        await asyncio.sleep(min(every, seconds - elapsed))
        rss.append(agent.memory_info().rss)
        kid_rss.append(look())
    wall = time.monotonic() - t0
    a1 = cpu_s(agent)
    plugins: dict[str, dict[str, Any]] = {}
    for tr in kids.values():
        p = plugins.setdefault(tr.name, {"pids": 0, "cpu_s": 0.0, "rss": []})
        p["pids"] += 1
        p["cpu_s"] += tr.cpu1 - tr.cpu0
        p["rss"].append(statistics.median(tr.rss) if tr.rss else 0)
    return {
        "seconds": round(wall, 2),
        "agent_rss_mb": round(max(rss) / MB, 2),
        "agent_rss_mb_median": round(statistics.median(rss) / MB, 2),
        "agent_rss_mb_last": round(rss[-1] / MB, 2),
        "agent_cpu_pct": round(100 * (a1 - a0) / wall, 3),
        "agent_threads": agent.num_threads(),
        "agent_smaps": smaps_rollup(agent.pid),
        "plugins_rss_mb": round(statistics.median(kid_rss) / MB, 2),
        "plugins_cpu_pct": round(100 * sum(p["cpu_s"] for p in plugins.values()) / wall, 3),
        "per_plugin": {
            name: {
                "processes": p["pids"],
                "cpu_pct": round(100 * p["cpu_s"] / wall, 3),
                "rss_mb": round(sum(p["rss"]) / MB, 2),
            }
            for name, p in sorted(plugins.items())
        },
    }


# --------------------------------------------------------------------------- NATS observer


@dataclass
class Observer:
    """Heartbeats, events and telemetry batches of our one host, with arrival times."""

    subjects: Subjects
    nc: Any = None
    heartbeats: list[tuple[float, Heartbeat]] = field(default_factory=list)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    #: per plugin: (arrival, records in the batch)
    batches: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    garbage: int = 0

    async def start(self, url: str) -> Observer:
        import nats

        self.nc = await nats.connect(url, name="footprint-observer")

        async def on_hb(msg: Any) -> None:
            try:
                self.heartbeats.append((time.monotonic(), decode_heartbeat(msg.data)))
            except ProtocolError:
                self.garbage += 1

        async def on_evt(msg: Any) -> None:
            try:
                self.events.append((time.monotonic(), decode_event(msg.data)))
            except ProtocolError:
                self.garbage += 1

        async def on_tel(msg: Any) -> None:
            headers = msg.headers or {}
            plugin = headers.get(frames.H_PLUGIN, msg.subject.rsplit(".", 1)[-1])
            try:
                count = int(headers.get(frames.H_COUNT, "0"))
            except ValueError:
                self.garbage += 1
                return
            self.batches.setdefault(plugin, []).append((time.monotonic(), count))

        await self.nc.subscribe(self.subjects.heartbeat(HOST), cb=on_hb)
        await self.nc.subscribe(self.subjects.event(HOST), cb=on_evt)
        await self.nc.subscribe(f"{self.subjects.prefix}.tel.{HOST}.>", cb=on_tel)
        await asyncio.sleep(0)  # nats-py: let the SUBs out before flush (docs/ARCHITECTURE.md)
        await self.nc.flush()
        return self

    def last(self) -> Heartbeat | None:
        return self.heartbeats[-1][1] if self.heartbeats else None

    def records(self, plugin: str, t0: float, t1: float) -> int:
        return sum(n for at, n in self.batches.get(plugin, []) if t0 <= at < t1)

    def breaker_events(self, since: float) -> list[tuple[float, dict[str, Any]]]:
        return [(at, e) for at, e in self.events if at >= since and e.get("kind") == "breaker"]

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


async def wait_for(cond: Any, timeout: float, what: str, agent: AgentProc | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if agent is not None and agent.popen is not None and agent.popen.poll() is not None:
            raise BenchError(f"the agent exited ({agent.popen.returncode}) while waiting for "
                             f"{what}; log: {agent.log}")  # fmt: skip
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- the agent


@dataclass
class AgentProc:
    """One real agent process, started through the pdeathsig shim (which execs it)."""

    workdir: Path
    nats_url: str
    etcd_endpoints: list[str]
    prefix: str
    trusted_key: str
    run: str
    cgroups: str = "auto"
    popen: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None

    @property
    def cgroup_name(self) -> str:
        return f"hidsd-footprint-{os.getpid()}-{self.run}"

    @property
    def log(self) -> Path:
        return self.workdir / f"agent-{self.run}.log"

    def write_config(self) -> Path:
        settings: dict[str, Any] = {
            "host_id": HOST,
            "groups": ["footprint"],
            "trusted_keys": [self.trusted_key],
            "data_dir": str(self.workdir / f"data-{self.run}"),
            "runtime_dir": str(self.workdir / f"run-{self.run}"),
            "subject_prefix": self.prefix,
            "key_prefix": f"/{self.prefix}/",
            "log_format": "json",
            "log_level": "info",
            "cgroups": self.cgroups,
            "cgroup_name": self.cgroup_name,
        }
        lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        lines += ["[nats]", f"servers = {json.dumps([self.nats_url])}"]
        lines += ["[etcd]", f"endpoints = {json.dumps(self.etcd_endpoints)}"]
        path = self.workdir / f"agent-{self.run}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> psutil.Process:
        compile_package()  # others may have edited a module since: no stale .pyc
        cfg = self.write_config()
        argv = [sys.executable, "-m", "hidsd.agent.main", "-c", str(cfg)]
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                with_pdeathsig(argv, os.getpid()), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=str(ROOT),
            )  # fmt: skip
        self.ps = psutil.Process(self.popen.pid)  # the shim execs: same pid
        return self.ps

    async def stop(self) -> int | None:
        """SIGTERM (the agent stops its plugins and removes its cgroups), then SIGKILL."""
        p = self.popen
        if p is None:
            return None
        for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            if p.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            deadline = time.monotonic() + wait_s
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if p.returncode not in (0, None):
            warn(f"agent {self.run} exited with {p.returncode} (log: {self.log})")
        left = remove_cgroups(self.cgroup_name)
        if left:
            warn(f"agent {self.run} left cgroups behind (removed them): {left}")
        return p.returncode

    def plugin_procs(self, name: str) -> list[psutil.Process]:
        if self.ps is None:
            return []
        try:
            kids = self.ps.children(recursive=True)
        except psutil.Error:
            return []
        return [k for k in kids if plugin_name(k) == name]


def remove_cgroups(name: str) -> list[str]:
    """Whatever cgroup directories named `name` are left (an agent killed hard); deepest first.
    The name is ours alone (pid and run in it)."""
    found: list[str] = []
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return found
    for hier in root.iterdir():
        with contextlib.suppress(OSError):
            for top in hier.rglob(name):
                found.append(str(top))
                dirs = [d for d in [top, *top.rglob("*")] if d.is_dir()]
                for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        d.rmdir()
    return found


# --------------------------------------------------------------------------- the bench


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    nats_srv: NatsServer
    etcd: EtcdCluster
    store: Store
    obs: Observer
    prefix: str
    trusted_key: str
    runs: int = 0
    config_versions: list[int] = field(default_factory=list)

    @property
    def keys(self) -> KeyLayout:
        return KeyLayout(f"/{self.prefix}/")

    def agent(self, cgroups: str = "auto") -> AgentProc:
        self.runs += 1
        return AgentProc(self.workdir, self.nats_srv.url, self.etcd.endpoints, self.prefix,
                         self.trusted_key, f"r{self.runs}", cgroups)  # fmt: skip

    async def set_config(self, text: str, message: str) -> int:
        """What `hidsctl config set FILE --scope fleet -m MESSAGE` writes."""
        scope, target = parse_scope("fleet")
        cv = await configplane.set_config(self.store, self.keys, scope, target, text, message,
                                          "footprint-benchmark")  # fmt: skip
        self.config_versions.append(cv.version)
        return cv.version

    async def wait_applied(self, version: int, agent: AgentProc, since: float) -> None:
        """Until a heartbeat sent after `since` reports the fleet config at `version`."""

        def applied() -> bool:
            for at, hb in reversed(self.obs.heartbeats):
                if at < since:
                    return False
                if hb.config.versions.get("fleet") == version:
                    return True
            return False

        await wait_for(applied, 40, f"the agent to apply config version {version}", agent)

    async def wait_heartbeat(self, agent: AgentProc, since: float) -> Heartbeat:
        await wait_for(lambda: any(at >= since for at, _ in self.obs.heartbeats), 40,
                       "the agent's first heartbeat", agent)  # fmt: skip
        hb = self.obs.last()
        assert hb is not None
        return hb

    async def wait_plugins(self, agent: AgentProc, names: tuple[str, ...], gone: tuple[str, ...]
                           ) -> None:  # fmt: skip
        await wait_for(lambda: all(agent.plugin_procs(n) for n in names)
                       and not any(agent.plugin_procs(n) for n in gone), 60,
                       f"plugins {names} running and {gone} stopped", agent)  # fmt: skip


def breaker_summary(hb: Heartbeat | None) -> dict[str, Any]:
    b = hb.breaker if hb is not None else None
    if b is None:
        return {"state": None, "accounting": None}
    return {"state": b.state, "accounting": {"mode": b.accounting_mode,
                                             "detail": b.accounting_detail},
            **({"limits_error": b.limits_error} if b.limits_error else {})}  # fmt: skip


async def phase_idle(bench: Bench, agent: AgentProc) -> dict[str, Any]:
    a = bench.args
    version = await bench.set_config(IDLE_TOML, "footprint: idle")
    since = time.monotonic()
    ps = agent.start()
    await bench.wait_heartbeat(agent, since)
    await bench.wait_applied(version, agent, since)
    print(f"agent up (pid {ps.pid}); idle: settling {a.warmup_s:.0f} s, then {a.idle_s:.0f} s",
          flush=True)  # fmt: skip
    await asyncio.sleep(a.warmup_s)
    ev0 = time.monotonic()
    m = await measure(ps, a.idle_s)
    m["breaker"] = breaker_summary(bench.obs.last())
    m["breaker_events"] = [e for _, e in bench.obs.breaker_events(ev0)]
    m["uss_mb"] = round(ps.memory_full_info().uss / MB, 2)
    print(f"  idle: RSS {m['agent_rss_mb']} MB (max), CPU {m['agent_cpu_pct']:.3f} % of a core, "
          f"{m['agent_threads']} threads", flush=True)  # fmt: skip
    return m


async def phase_plugins(bench: Bench, agent: AgentProc) -> dict[str, Any]:
    a = bench.args
    fim_dir = bench.workdir / "fim"
    fim_dir.mkdir(exist_ok=True)
    for i in range(20):
        (fim_dir / f"file-{i}.txt").write_text(f"footprint {i}\n" * 50)
    auth_log = bench.workdir / "auth.log"
    auth_log.write_text("")
    text = PLUGINS_TOML.format(fim_dir=json.dumps(str(fim_dir)),
                               auth_log=json.dumps(str(auth_log)))  # fmt: skip
    since = time.monotonic()
    version = await bench.set_config(text, "footprint: built-in plugins")
    await bench.wait_applied(version, agent, since)
    await bench.wait_plugins(agent, BUILTINS, ())
    print(f"plugins {', '.join(BUILTINS)} running; settling {a.settle_s:.0f} s, then "
          f"{a.phase_s:.0f} s", flush=True)  # fmt: skip
    await asyncio.sleep(a.settle_s)
    assert agent.ps is not None
    ev0 = time.monotonic()
    m = await measure(agent.ps, a.phase_s)
    m["breaker"] = breaker_summary(bench.obs.last())
    m["breaker_events"] = [e for _, e in bench.obs.breaker_events(ev0)]
    hb = bench.obs.last()
    m["heartbeat_plugins"] = {
        n: {k: v for k, v in (plugin_map(hb, n)).items()
            if k in ("state", "starts", "records", "cpu_pct", "rss_bytes")}
        for n in BUILTINS
    } if hb is not None else {}  # fmt: skip
    print(f"  plugins: {m['plugins_rss_mb']} MB RSS together, {m['plugins_cpu_pct']:.2f} % CPU; "
          f"agent {m['agent_rss_mb']} MB, {m['agent_cpu_pct']:.3f} %", flush=True)  # fmt: skip
    return m


def pipeline(hb: Heartbeat | None, plugin: str) -> dict[str, Any]:
    return dict(plugin_map(hb, plugin)) if hb is not None else {}


async def phase_load(bench: Bench, agent: AgentProc) -> dict[str, Any]:
    a = bench.args
    since = time.monotonic()
    version = await bench.set_config(LOAD_TOML, "footprint: loadgen at 1000 records/s")
    await bench.wait_applied(version, agent, since)
    await bench.wait_plugins(agent, ("loadgen",), BUILTINS)
    await wait_for(lambda: bench.obs.records("loadgen", since, time.monotonic()) > 0, 20,
                   "loadgen records on NATS", agent)  # fmt: skip
    print(f"loadgen running; warmup {a.load_warmup_s:.0f} s, then {a.phase_s:.0f} s", flush=True)
    await asyncio.sleep(a.load_warmup_s)
    assert agent.ps is not None
    t0 = time.monotonic()
    hb0 = bench.obs.heartbeats[-1] if bench.obs.heartbeats else None
    m = await measure(agent.ps, a.phase_s)
    t1 = time.monotonic()
    # one more heartbeat after the window, for the pipeline counters
    n_hb = len(bench.obs.heartbeats)
    await wait_for(lambda: len(bench.obs.heartbeats) > n_hb, 30, "a heartbeat", agent)
    hb1 = bench.obs.heartbeats[-1]
    got = bench.obs.records("loadgen", t0, t1)
    m["records_on_nats"] = got
    m["records_per_s_on_nats"] = round(got / (t1 - t0), 1)
    if hb0 is not None:
        p0, p1 = pipeline(hb0[1], "loadgen"), pipeline(hb1[1], "loadgen")
        dt = hb1[1].sent_at - hb0[1].sent_at
        out = p1.get("tel.records_out", 0) - p0.get("tel.records_out", 0)
        m["heartbeat_records_out_per_s"] = round(out / dt, 1) if dt > 0 else None
        m["heartbeat_window_s"] = round(dt, 2)
        m["drops"] = {k: p1.get(k, 0) for k in p1 if k.startswith("tel.dropped")}
        m["publish_failures"] = p1.get("tel.publish_failures", 0)
    lg = m["per_plugin"].get("loadgen", {})
    m["loadgen_cpu_pct"] = lg.get("cpu_pct")
    m["loadgen_rss_mb"] = lg.get("rss_mb")
    m["rate_ok"] = abs(m["records_per_s_on_nats"] - LOAD_RATE) <= 0.05 * LOAD_RATE
    if not m["rate_ok"]:
        warn(f"loadgen delivered {m['records_per_s_on_nats']} records/s, not ~{LOAD_RATE}")
    m["breaker"] = breaker_summary(bench.obs.last())
    m["breaker_events"] = [e for _, e in bench.obs.breaker_events(t0)]
    print(f"  load: agent CPU {m['agent_cpu_pct']:.2f} % ({m['records_per_s_on_nats']:,.0f} "
          f"records/s on NATS, heartbeat says {m.get('heartbeat_records_out_per_s')}); loadgen "
          f"{m['loadgen_cpu_pct']} %; agent RSS {m['agent_rss_mb']} MB", flush=True)  # fmt: skip
    return m


# --------------------------------------------------------------------------- business


def business_config(cond: str) -> str:
    if cond == "agent_idle":
        return "# footprint business: agent idle, no plugins\n"
    enabled = "true" if cond == "breaker" else "false"
    return (
        f"# footprint business: {cond}, drill burning, breaker enabled = {enabled}\n"
        + BREAKER_FAST.format(enabled=enabled)
        + DRILL_TOML.format(after_s=DRILL_AFTER_S)
    )


def host_busy_s() -> float:
    """CPU seconds the whole host spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class DrillWatch:
    """The drill's CPU over the job (sampled 5 times a second), and when it stopped. Its
    processes are looked up among the agent's children at most once a second (a scan of
    /proc), so watching costs the job little."""

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


async def timed_job(bench: Bench, agent: AgentProc | None, drill: bool) -> dict[str, Any]:
    """One business job, with what else used the CPU meanwhile (the agent and its plugins,
    this process, and the rest of the host: nats-server, etcd, anything else running)."""
    a = bench.args
    procs = os.cpu_count() or 1
    a0 = cpu_s(agent.ps) if agent is not None and agent.ps is not None else 0.0
    t0 = time.monotonic()
    watch = DrillWatch(agent, t0) if agent is not None and drill else None
    if watch is not None:
        watch.look()
    watcher = asyncio.create_task(watch.run()) if watch is not None else None
    h0, s0 = host_busy_s(), self_cpu_s()
    try:
        job: JobResult = await run_job(procs, a.business_work)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    h1, s1 = host_busy_s(), self_cpu_s()
    if watch is not None:
        watch.look()
    agent_cpu = cpu_s(agent.ps) - a0 if agent is not None and agent.ps is not None else 0.0
    drill_cpu = watch.cpu_s() if watch is not None else 0.0
    other = (h1 - h0) - job.cpu_s - agent_cpu - drill_cpu - (s1 - s0)
    out: dict[str, Any] = {
        "wall_s": round(job.wall_s, 3),
        "cpu_s": round(job.cpu_s, 2),
        #: the share of the job's wall time its processes were on a CPU (1.0: never waited)
        "on_cpu": round(job.cpu_s / procs / job.wall_s, 4),
        "agent_cpu_s": round(agent_cpu, 2),
        "other_cpu_s": round(other, 2),
        "bench_cpu_s": round(s1 - s0, 2),
    }
    if watch is not None:
        out["drill_cpu_s"] = round(drill_cpu, 2)
        out["drill_stopped_at_s"] = None if watch.gone_at is None else round(watch.gone_at, 2)
        out["_watch"] = watch
    return out


def drill_shares(watch: DrillWatch, events: list[dict[str, Any]], end: float) -> dict[str, Any]:
    """The drill's CPU (cores) in each stretch: burning before the breaker acted, then in each
    breaker state until the next one (or the job's end)."""
    marks = [(DRILL_AFTER_S + 0.3, "burning")] + [
        (e["at_s"], e["state"]) for e in events if e["at_s"] >= DRILL_AFTER_S
    ]
    out: dict[str, Any] = {}
    for i, (t, label) in enumerate(marks):
        t_next = marks[i + 1][0] if i + 1 < len(marks) else end
        if watch.gone_at is not None:
            t_next = min(t_next, watch.gone_at)
        share = watch.share(t, t_next)
        if share is not None:
            out[label] = share
    return out  # fmt: skip


async def business_run(bench: Bench, cond: str) -> dict[str, Any]:
    waited = await wait_quiet(bench.args.max_other_pct)
    if waited > 10:
        print(f"  (waited {waited:.0f} s for the host to be quiet)", flush=True)
    if cond == "alone":
        await asyncio.sleep(SETTLE_BEFORE_JOB_S)
        return {"condition": cond, **await timed_job(bench, None, drill=False)}
    agent = bench.agent("off" if cond == "unprotected" else "auto")
    since = time.monotonic()
    version = await bench.set_config(business_config(cond), f"footprint business: {cond}")
    drill = cond != "agent_idle"
    try:
        agent.start()
        await bench.wait_heartbeat(agent, since)
        await bench.wait_applied(version, agent, since)
        if drill:  # it idles for DRILL_AFTER_S, then burns: the job starts now
            await bench.wait_plugins(agent, ("drill",), ())
        else:
            await asyncio.sleep(SETTLE_BEFORE_JOB_S)
        t0 = time.monotonic()
        r = await timed_job(bench, agent, drill)
        r["breaker_events"] = [
            {"at_s": round(at - t0, 2), "state": e.get("state"), "resource": e.get("resource"),
             "offender": e.get("offender")}
            for at, e in bench.obs.breaker_events(since)
        ]  # fmt: skip
        watch = r.pop("_watch", None)
        if watch is not None:
            r["drill_cores_by_stretch"] = drill_shares(watch, r["breaker_events"], r["wall_s"])
        r["breaker"] = breaker_summary(bench.obs.last())
        return {"condition": cond, **r}
    finally:
        await agent.stop()


def stretches(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r.get("drill_cores_by_stretch", {}).items():
            out.setdefault(k, []).append(v)
    return out


async def wait_quiet(max_pct: float, need_s: float = 3.0, give_up_s: float = 600.0) -> float:
    """Until the host (everything: other people's work, nats-server, etcd) has used less than
    `max_pct` of one core for `need_s` seconds in a row; returns the seconds waited. Gives up
    after `give_up_s` (the job's own accounting still flags a busy run)."""
    started = time.monotonic()
    calm_since: float | None = None
    prev = host_busy_s()
    while time.monotonic() - started < give_up_s:
        await asyncio.sleep(1.0)
        now = host_busy_s()
        busy_pct, prev = 100 * (now - prev), now
        if busy_pct <= max_pct:
            calm_since = calm_since or time.monotonic()
            if time.monotonic() - calm_since >= need_s:
                break
        else:
            calm_since = None
    return time.monotonic() - started


def quiet(r: dict[str, Any], max_other_pct: float) -> bool:
    """Whether the rest of the host stayed under `max_other_pct` of one core during the job."""
    return bool(100 * r["other_cpu_s"] / r["wall_s"] <= max_other_pct)


async def phase_business(bench: Bench) -> dict[str, Any]:
    a = bench.args
    procs = os.cpu_count() or 1
    print(f"business: {procs} processes x {a.business_work}M iterations; {a.business_reps} "
          f"rounds of {', '.join(CONDITIONS)}", flush=True)  # fmt: skip
    warm = await run_job(procs, a.business_work)
    print(f"  warm-up run (not counted): {warm.wall_s:.2f} s", flush=True)
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    for rep in range(a.business_reps):
        k = rep % len(CONDITIONS)  # rotate the order: no condition always follows the same one
        for cond in CONDITIONS[k:] + CONDITIONS[:k]:
            for attempt in range(a.business_retries + 1):
                r = await business_run(bench, cond)
                r["round"], r["attempt"] = rep, attempt
                ok = quiet(r, a.max_other_pct)
                extra = ""
                if cond not in ("alone", "agent_idle"):
                    states = [e["state"] for e in r["breaker_events"]]
                    extra = (f"  drill {r['drill_cpu_s']} CPU s, stopped at "
                             f"{r['drill_stopped_at_s']} s; breaker {states}; drill cores "
                             f"{r['drill_cores_by_stretch']}")  # fmt: skip
                print(f"  round {rep} {cond:<11} {r['wall_s']:7.2f} s  on CPU {r['on_cpu']:.3f}"
                      f"  others {r['other_cpu_s']:5.2f} s{extra}"
                      + ("" if ok else "  [busy host: discarded]"), flush=True)  # fmt: skip
                if ok or attempt == a.business_retries:
                    r["quiet"] = ok
                    runs.append(r)
                    break
                discarded.append(r)
    by = {c: [r for r in runs if r["condition"] == c] for c in CONDITIONS}
    med = {c: statistics.median(r["wall_s"] for r in rs) for c, rs in by.items()}
    alone = {r["round"]: r for r in by["alone"]}
    paired = {
        c: statistics.median(r["wall_s"] / alone[r["round"]]["wall_s"] for r in by[c])
        for c in CONDITIONS if c != "alone"
    }  # fmt: skip
    on_cpu = {c: statistics.median(r["on_cpu"] for r in rs) for c, rs in by.items()}
    return {
        "procs": procs,
        "work_millions_per_proc": a.business_work,
        "rounds": a.business_reps,
        #: the main figure: the job's time corrected for the machine's speed, i.e. from the
        #: share of the job's time its processes were on a CPU (which does not move with the
        #: speed): median(on_cpu alone) / median(on_cpu) - 1
        "slowdown_pct": {
            c: round(100 * (on_cpu["alone"] / on_cpu[c] - 1), 2) for c in CONDITIONS if c != "alone"
        },
        #: raw wall time: median over rounds of (wall / the same round's alone wall) - 1
        "slowdown_wall_pct": {c: round(100 * (v - 1), 2) for c, v in paired.items()},
        #: median(wall) / median(alone wall) - 1
        "slowdown_of_medians_pct": {
            c: round(100 * (med[c] / med["alone"] - 1), 2) for c in CONDITIONS if c != "alone"
        },
        "median_wall_s": {c: round(v, 3) for c, v in med.items()},
        "median_on_cpu": {c: round(v, 4) for c, v in on_cpu.items()},
        "median_drill_cpu_s": {
            c: round(statistics.median(r["drill_cpu_s"] for r in by[c]), 2)
            for c in ("breaker", "no_breaker", "unprotected")
        },
        "median_drill_stopped_at_s": round(statistics.median(
            r["drill_stopped_at_s"] if r["drill_stopped_at_s"] is not None else math.inf
            for r in by["breaker"]), 2),
        #: the drill's CPU in cores: burning before the breaker acted, then per breaker state
        "median_drill_cores_by_stretch": {
            c: {k: round(statistics.median(v), 3) for k, v in stretches(by[c]).items()}
            for c in ("breaker", "no_breaker", "unprotected")
        },
        "noisy_runs_kept": sum(1 for r in runs if not r["quiet"]),
        "warmup_wall_s": round(warm.wall_s, 3),
        "runs": runs,
        "discarded_busy_host": discarded,
    }  # fmt: skip


# --------------------------------------------------------------------------- main


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / (1 << 30), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "psi": Path("/proc/pressure/cpu").exists(),
    }


def source_state() -> dict[str, Any]:
    """The commit measured, and which agent files differed from it (others' work in progress)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "hidsd"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "uncommitted": [line[3:] for line in dirty.splitlines()]}  # fmt: skip


def compile_package() -> None:
    """Byte-compile hidsd as `pip install` does, so the agent loads .pyc files."""
    if not compileall.compile_dir(str(ROOT / "hidsd"), quiet=1):
        warn("some hidsd modules did not byte-compile")


NOTES = (
    "One real agent process (python -m hidsd.agent.main, uvloop, log_format json, cgroups "
    "auto with a cgroup name of its own, breaker at its defaults unless said otherwise), "
    "measured from outside with psutil every second. RSS is resident memory including the "
    "shared clean pages of the libraries it maps (agent_smaps splits it: private_dirty is "
    "what the agent alone costs). CPU = (user+system time delta of the process, all threads) "
    "/ wall time, in percent of one core; plugins are the agent's descendants, measured the "
    "same way. The hidsd package is byte-compiled before each agent start (as an installed "
    "package is). Idle = no plugins, heartbeat 10 s, resync 60 s, breaker sampling every 2 "
    "s. The load phase runs loadgen alone (the built-ins off); records_per_s_on_nats counts "
    "the records in the batches that arrived on the telemetry subject during the window. The "
    "business job is {procs} processes (one per core) of {work}M iterations of a pure-Python "
    "loop, in {reps} rounds interleaving the conditions. This machine's speed drifts by up "
    "to ~15 % between runs (the same job's CPU time varies that much, and no steal time is "
    "reported), more than the effect measured, so business_slowdown_pct is the job's time "
    "corrected for that drift: from on_cpu, the share of the job's wall time its processes "
    "were on a CPU (job CPU time / processes / wall), as median(on_cpu alone) / "
    "median(on_cpu with the agent) - 1; it counts the time the job waited for a CPU, not a "
    "slowdown through shared caches. business_slowdown_wall_pct is the raw figure: the "
    "median over rounds of wall / wall(alone, same round) - 1. Jobs during which the rest of "
    "the host (other work on the machine, nats-server, etcd) used more than {max_other}% of "
    "a core are run again, and every run waits for 3 quiet seconds first. In the drill "
    "conditions the drill plugin (mode burn, one busy loop) starts to burn {after} s into "
    "the job, so each run includes the breaker's detection (interval 0.5 s, window 2 s, "
    "grace 1 s, other thresholds at their defaults: it throttles after a window above "
    "cpu_throttle_pct, sheds after another above cpu_shed_pct); with cgroups the kernel's "
    "cpu quota (cpu_quota_pct) holds the plugins at once. no_breaker = [breaker] enabled = "
    "false, cgroups auto (the quota still applies); unprotected = breaker disabled and "
    "cgroups off. Each agent run is a fresh agent."
)


def summarize(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    idle, plug, load = results.get("idle"), results.get("plugins"), results.get("load")
    biz = results.get("business")
    out: dict[str, Any] = {
        "idle_rss_mb": idle["agent_rss_mb"] if idle else None,
        "idle_cpu_pct": idle["agent_cpu_pct"] if idle else None,
        "plugins_rss_mb": plug["plugins_rss_mb"] if plug else None,
        "load_cpu_pct": load["agent_cpu_pct"] if load else None,
        "business_slowdown_pct": biz["slowdown_pct"]["breaker"] if biz else None,
        # extras
        "idle_private_dirty_mb": (idle["agent_smaps"].get("private_dirty_mb") if idle else None),
        "plugins_cpu_pct": plug["plugins_cpu_pct"] if plug else None,
        "plugins_agent_rss_mb": plug["agent_rss_mb"] if plug else None,
        "plugins_agent_cpu_pct": plug["agent_cpu_pct"] if plug else None,
        "load_records_per_s": load["records_per_s_on_nats"] if load else None,
        "load_loadgen_cpu_pct": load["loadgen_cpu_pct"] if load else None,
        "load_agent_rss_mb": load["agent_rss_mb"] if load else None,
        "business_slowdown_wall_pct": biz["slowdown_wall_pct"]["breaker"] if biz else None,
        "business_slowdown_breaker_disabled_pct": (
            biz["slowdown_pct"]["no_breaker"] if biz else None),
        "business_slowdown_unprotected_pct": biz["slowdown_pct"]["unprotected"] if biz else None,
        "business_slowdown_agent_idle_pct": biz["slowdown_pct"]["agent_idle"] if biz else None,
        "business_drill_cpu_s": biz["median_drill_cpu_s"] if biz else None,
        "business_drill_stopped_at_s": biz["median_drill_stopped_at_s"] if biz else None,
        "business_drill_cores_by_stretch": (
            biz["median_drill_cores_by_stretch"]["breaker"] if biz else None),
    }  # fmt: skip
    targets = {
        "idle_rss_under_50_mb": None if out["idle_rss_mb"] is None
        else out["idle_rss_mb"] < TARGET_IDLE_RSS_MB,
        "idle_cpu_under_0.5_pct": None if out["idle_cpu_pct"] is None
        else out["idle_cpu_pct"] < TARGET_IDLE_CPU_PCT,
        "business_slowdown_under_5_pct": None if out["business_slowdown_pct"] is None
        else out["business_slowdown_pct"] < TARGET_SLOWDOWN_PCT,
    }  # fmt: skip
    notes = NOTES.format(procs=os.cpu_count(), work=args.business_work, reps=args.business_reps,
                         after=DRILL_AFTER_S, max_other=args.max_other_pct)  # fmt: skip
    if biz is None:
        notes += (" The business phase was skipped (--skip-business): business_slowdown_pct is "
                  "null.")  # fmt: skip
    return {**out, "targets": targets, **results, "notes": notes}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    if task is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        warn(f"load average is {load_before[0]:.1f} before starting: other work shares the CPUs")
    workdir = Path(tempfile.mkdtemp(prefix="hidsd-footprint-"))
    nats_srv = NatsServer(workdir / "stack")
    etcd = EtcdCluster(workdir / "stack")
    store: Store | None = None
    obs: Observer | None = None
    agent: AgentProc | None = None
    prefix = f"fp{secrets.token_hex(3)}"
    try:
        nats_srv.start()
        etcd.start()
        store = Store(etcd.endpoints, timeout_s=5.0)
        await store.open()
        subjects = Subjects(prefix)
        obs = await Observer(subjects).start(nats_srv.url)
        await ensure_stream(obs.nc, subjects)
        key = OperatorKey.generate()
        bench = Bench(args, workdir, nats_srv, etcd, store, obs, prefix,
                      encode_public_key(key.public_key))  # fmt: skip
        print(f"stack up: nats {nats_srv.url}, etcd {etcd.endpoints[0]}; workdir {workdir}",
              flush=True)  # fmt: skip
        results: dict[str, Any] = {}
        agent = bench.agent()
        results["idle"] = await phase_idle(bench, agent)
        results["plugins"] = await phase_plugins(bench, agent)
        results["load"] = await phase_load(bench, agent)
        results["agent_exit_code"] = await agent.stop()
        agent = None
        if not args.skip_business:
            results["business"] = await phase_business(bench)
        out = summarize(results, args)
        out["params"] = {
            "idle_s": args.idle_s, "warmup_s": args.warmup_s, "phase_s": args.phase_s,
            "settle_s": args.settle_s, "load_warmup_s": args.load_warmup_s,
            "load_rate": LOAD_RATE, "load_size": LOAD_SIZE,
            "business_reps": args.business_reps, "business_work": args.business_work,
            "drill_after_s": DRILL_AFTER_S, "skip_business": args.skip_business,
            "max_other_pct": args.max_other_pct, "business_retries": args.business_retries,
        }  # fmt: skip
        out["machine"] = {**machine_info(),
                          "loadavg_before": [round(x, 2) for x in load_before],
                          "loadavg_after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
        out["source"] = source_state()
        out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return out
    finally:
        if agent is not None:
            with contextlib.suppress(Exception):
                await agent.stop()
        if obs is not None:
            with contextlib.suppress(Exception):
                await obs.close()
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()
        for name, srv in (("etcd", etcd), ("nats-server", nats_srv)):
            try:
                srv.stop()
            except Exception as exc:
                warn(f"stopping {name}: {exc!r}")
        if args.keep_workdir:
            print(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def ensure_stream(nc: Any, subjects: Subjects) -> None:
    """The telemetry stream as the controller makes it (bounded here: 256 MiB, 10 min)."""
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig

    js = nc.jetstream(timeout=10)
    await js.add_stream(StreamConfig(
        name=subjects.telemetry_stream(), subjects=[subjects.telemetry_all()],
        max_bytes=256 << 20, max_age=600.0, discard=DiscardPolicy.OLD,
        storage=StorageType.FILE, duplicate_window=120.0,
    ))  # fmt: skip


# --------------------------------------------------------------------------- output


def print_table(out: dict[str, Any]) -> None:
    def f(v: Any, unit: str) -> str:
        return "n/a" if v is None else f"{v:,.2f} {unit}"

    rows = [
        ("idle_rss_mb", f(out["idle_rss_mb"], "MB"), f"< {TARGET_IDLE_RSS_MB:g} MB",
         out["targets"]["idle_rss_under_50_mb"]),
        ("idle_cpu_pct", f(out["idle_cpu_pct"], "%"), f"< {TARGET_IDLE_CPU_PCT:g} %",
         out["targets"]["idle_cpu_under_0.5_pct"]),
        ("plugins_rss_mb", f(out["plugins_rss_mb"], "MB"), "", None),
        ("load_cpu_pct", f(out["load_cpu_pct"], "%"), "", None),
        ("business_slowdown_pct", f(out["business_slowdown_pct"], "%"),
         f"< {TARGET_SLOWDOWN_PCT:g} %", out["targets"]["business_slowdown_under_5_pct"]),
        ("  idle private dirty", f(out["idle_private_dirty_mb"], "MB"), "", None),
        ("  plugins CPU", f(out["plugins_cpu_pct"], "%"), "", None),
        ("  agent with plugins", f"{f(out['plugins_agent_rss_mb'], 'MB')}, "
         f"{f(out['plugins_agent_cpu_pct'], '%')}", "", None),
        ("  load: records/s on NATS", f(out["load_records_per_s"], ""), f"~{LOAD_RATE}", None),
        ("  load: loadgen CPU", f(out["load_loadgen_cpu_pct"], "%"), "", None),
        ("  load: agent RSS", f(out["load_agent_rss_mb"], "MB"), "", None),
        ("  slowdown, raw wall time", f(out["business_slowdown_wall_pct"], "%"), "", None),
        ("  slowdown, breaker disabled", f(out["business_slowdown_breaker_disabled_pct"], "%"),
         "", None),
        ("  slowdown, no breaker, no cgroups", f(out["business_slowdown_unprotected_pct"], "%"),
         "", None),
        ("  slowdown, agent idle", f(out["business_slowdown_agent_idle_pct"], "%"), "", None),
        ("  drill stopped at (breaker on)", f(out["business_drill_stopped_at_s"], "s"), "", None),
    ]  # fmt: skip
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print("\nhidsd agent footprint (one agent, this machine)")
    for name, value, target, met in rows:
        verdict = "" if met is None else ("met" if met else "NOT met")
        print(f"  {name:<{w0}}  {value:>{w1}}  {target:<9} {verdict}")
    plug = out.get("plugins")
    if plug:
        print(
            "  per plugin: "
            + ", ".join(
                f"{n} {p['rss_mb']} MB {p['cpu_pct']:.2f} %" for n, p in plug["per_plugin"].items()
            )
        )
    biz = out.get("business")
    if biz:
        print("  drill CPU during the job: " + ", ".join(
            f"{c} {v} s" for c, v in biz["median_drill_cpu_s"].items()))  # fmt: skip
        print("  business medians: " + ", ".join(
            f"{c} {v:.2f} s" for c, v in biz["median_wall_s"].items()))  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    p.add_argument("--idle-s", type=float, default=60.0, help="idle window (60)")
    p.add_argument(
        "--warmup-s",
        type=float,
        default=10.0,
        help="settling after the agent is up, before the idle window (10)",
    )
    p.add_argument("--phase-s", type=float, default=30.0, help="plugins and load windows (30)")
    p.add_argument(
        "--settle-s",
        type=float,
        default=20.0,
        help="after the built-ins started, before their window (20)",
    )
    p.add_argument(
        "--load-warmup-s",
        type=float,
        default=5.0,
        help="after loadgen's records flow, before the load window (5)",
    )
    p.add_argument("--skip-business", action="store_true", help="skip the business phase")
    p.add_argument(
        "--business-reps",
        type=int,
        default=5,
        help="rounds of the business conditions; medians are reported (5)",
    )
    p.add_argument(
        "--business-work",
        type=int,
        default=320,
        help="million loop iterations per business process (320: ~15 s here)",
    )
    p.add_argument(
        "--max-other-pct",
        type=float,
        default=15.0,
        help="a job during which the rest of the host used more than this share of one core "
        "(other work on the machine) is run again (15)",
    )
    p.add_argument("--business-retries", type=int, default=2, help="reruns of a busy-host job (2)")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and data")
    args = p.parse_args(argv)
    if min(args.idle_s, args.phase_s) <= 0 or args.business_reps < 1 or args.business_work < 1:
        p.error("--idle-s, --phase-s, --business-reps and --business-work must be positive")
    return args  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hidsd_logging.configure("warning")
    try:
        out = uvloop.run(run(args))
    except (BenchError, HidsError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; agent, plugins, job and servers stopped", file=sys.stderr)
        return 130
    print_table(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
