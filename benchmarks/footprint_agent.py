"""The agent side of `benchmarks/footprint.py`: one real agent process, what it says on NATS,
and its footprint measured from outside.

* `AgentProc`: `python -m hidsd.agent.main -c agent.toml` (the installed entry point's module,
  started through the pdeathsig shim, which execs it: same pid), its own data dir, runtime dir
  and cgroup name; stopped with SIGTERM as an init system does, then SIGKILL; cgroups it left
  behind are removed.
* `Observer`: the host's heartbeats, events and telemetry batches as they arrive on the
  coordinator's connection (decoded with the wire's own decoders).
* `measure`: RSS (sampled every second) and CPU (the delta of user+system time over the
  window) of the agent and of its descendants (its plugins), from psutil and /proc.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from harness.report import ROOT, BenchError, warn
from nats.aio.msg import Msg

from hidsd.base.errors import ProtocolError
from hidsd.base.proc import with_pdeathsig
from hidsd.bus.store import Store
from hidsd.bus.transport import Bus
from hidsd.ctl import configplane
from hidsd.wire import frames
from hidsd.wire.heartbeat import Heartbeat, decode_heartbeat
from hidsd.wire.names import KeyLayout, Subjects, parse_scope
from hidsd.wire.rpc import decode_event

HOST = "footprint-1"
MB = 1 << 20


def compile_package() -> None:
    """Byte-compile hidsd as `pip install` does, so the agent loads .pyc files (this
    environment sets PYTHONDONTWRITEBYTECODE; compiling at every start costs ~2 MB)."""
    if not compileall.compile_dir(str(ROOT / "hidsd"), quiet=1):
        warn("some hidsd modules did not byte-compile")


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
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(f"/proc/{pid}/smaps_rollup") as f,
    ):
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Dirty", "Private_Clean", "Shared_Clean"):
                out[key.lower() + "_mb"] = round(int(rest.split()[0]) / 1024, 2)
    return out


def remove_cgroups(name: str) -> list[str]:
    """Cgroup directories named `name` left behind (an agent killed hard), deepest first.
    The name is ours alone (our pid and the run are in it)."""
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


@dataclass
class AgentProc:
    """One real agent process."""

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
            "host_id": HOST, "groups": ["footprint"], "trusted_keys": [self.trusted_key],
            "data_dir": str(self.workdir / f"data-{self.run}"),
            "runtime_dir": str(self.workdir / f"run-{self.run}"),
            "subject_prefix": self.prefix, "key_prefix": f"/{self.prefix}/",
            "log_format": "json", "log_level": "info",
            "cgroups": self.cgroups, "cgroup_name": self.cgroup_name,
        }  # fmt: skip
        lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        lines += ["[nats]", f"servers = {json.dumps([self.nats_url])}"]
        lines += ["[etcd]", f"endpoints = {json.dumps(self.etcd_endpoints)}"]
        path = self.workdir / f"agent-{self.run}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> psutil.Process:
        compile_package()  # a module may have changed since: no stale .pyc
        argv = [sys.executable, "-m", "hidsd.agent.main", "-c", str(self.write_config())]
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                with_pdeathsig(argv, os.getpid()), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=str(ROOT),
            )  # fmt: skip
        self.ps = psutil.Process(self.popen.pid)
        return self.ps

    def exited(self) -> bool:
        return self.popen is not None and self.popen.poll() is not None

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


async def wait_for(cond: Callable[[], Any], timeout: float, what: str,
                   agent: AgentProc | None = None) -> Any:  # fmt: skip
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if agent is not None and agent.exited():
            raise BenchError(f"the agent exited while waiting for {what}; log: {agent.log}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)
    return value


@dataclass
class Observer:
    """Heartbeats, events and telemetry batches of our one host, with arrival times."""

    subjects: Subjects
    heartbeats: list[tuple[float, Heartbeat]] = field(default_factory=list)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    #: per plugin: (arrival, records in the batch)
    batches: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    garbage: int = 0

    async def start(self, bus: Bus) -> Observer:
        async def on_hb(msg: Msg) -> None:
            try:
                self.heartbeats.append((time.monotonic(), decode_heartbeat(msg.data)))
            except ProtocolError:
                self.garbage += 1

        async def on_evt(msg: Msg) -> None:
            try:
                self.events.append((time.monotonic(), decode_event(msg.data)))
            except ProtocolError:
                self.garbage += 1

        async def on_tel(msg: Msg) -> None:
            headers = msg.headers or {}
            plugin = headers.get(frames.H_PLUGIN, msg.subject.rsplit(".", 1)[-1])
            try:
                count = int(headers.get(frames.H_COUNT, "0"))
            except ValueError:
                self.garbage += 1
                return
            self.batches.setdefault(plugin, []).append((time.monotonic(), count))

        await bus.subscribe(self.subjects.heartbeat(HOST), on_hb)
        await bus.subscribe(self.subjects.event(HOST), on_evt)
        await bus.subscribe(f"{self.subjects.prefix}.tel.{HOST}.>", on_tel)
        return self

    def last(self) -> Heartbeat | None:
        return self.heartbeats[-1][1] if self.heartbeats else None

    def records(self, plugin: str, t0: float, t1: float) -> int:
        return sum(n for at, n in self.batches.get(plugin, []) if t0 <= at < t1)

    def breaker_events(self, since: float) -> list[tuple[float, dict[str, Any]]]:
        return [(at, e) for at, e in self.events if at >= since and e.get("kind") == "breaker"]


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
            name: {"processes": p["pids"], "cpu_pct": round(100 * p["cpu_s"] / wall, 3),
                   "rss_mb": round(sum(p["rss"]) / MB, 2)}
            for name, p in sorted(plugins.items())
        },
    }  # fmt: skip


@dataclass
class Host:
    """The coordinator's handle on the one host: its agents (one at a time), its config."""

    workdir: Path
    nats_url: str
    etcd_endpoints: list[str]
    store: Store
    obs: Observer
    prefix: str
    trusted_key: str
    runs: int = 0
    config_versions: list[int] = field(default_factory=list)

    def agent(self, cgroups: str = "auto") -> AgentProc:
        self.runs += 1
        return AgentProc(self.workdir, self.nats_url, self.etcd_endpoints, self.prefix,
                         self.trusted_key, f"r{self.runs}", cgroups)  # fmt: skip

    async def set_config(self, text: str, message: str) -> int:
        """What `hidsctl config set FILE --scope fleet -m MESSAGE` writes."""
        scope, target = parse_scope("fleet")
        cv = await configplane.set_config(self.store, KeyLayout(f"/{self.prefix}/"), scope,
                                          target, text, message, "footprint-benchmark")  # fmt: skip
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

    async def wait_heartbeat(self, agent: AgentProc, since: float) -> None:
        await wait_for(lambda: any(at >= since for at, _ in self.obs.heartbeats), 40,
                       "the agent's first heartbeat", agent)  # fmt: skip

    async def wait_plugins(self, agent: AgentProc, names: tuple[str, ...],
                           gone: tuple[str, ...] = ()) -> None:  # fmt: skip
        await wait_for(lambda: all(agent.plugin_procs(n) for n in names)
                       and not any(agent.plugin_procs(n) for n in gone), 60,
                       f"plugins {names} running and {gone} stopped", agent)  # fmt: skip

    async def start_agent(self, agent: AgentProc, text: str, message: str) -> float:
        """Write the config, start the agent, wait until it runs that config; its start."""
        since = time.monotonic()
        version = await self.set_config(text, message)
        agent.start()
        await self.wait_heartbeat(agent, since)
        await self.wait_applied(version, agent, since)
        return since


def breaker_summary(hb: Heartbeat | None) -> dict[str, Any]:
    b = hb.breaker if hb is not None else None
    if b is None:
        return {"state": None, "accounting": None}
    return {"state": b.state, "accounting": b.accounting.to_wire(),
            **({"limits_error": b.limits_error} if b.limits_error else {})}  # fmt: skip
