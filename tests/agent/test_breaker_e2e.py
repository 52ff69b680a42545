"""The circuit breaker end to end: real agents, real misbehaving plugins, real cgroups here.

Each test drives the breaker through its states with one kind of misbehaviour (CPU, memory,
records) and back to normal, watching the state-change events and heartbeats on NATS. The
psutil path runs everywhere; the cgroup tests skip, saying why, where cgroups are not writable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import Observer, Stack, wait_for

from hidsd.base.proc import with_pdeathsig
from hidsd.wire.heartbeat import plugin_map

FAST = """\
[breaker]
interval_s = 0.5
window_s = 2.0
grace_s = 1.0
cooldown_s = 2.0
cooldown_max_s = 8.0
denylist_s = 600.0
host_cpu_pressure_pct = 100.0
host_mem_available_min_pct = 0.0
"""
BURN = '[plugins.drill]\nenabled = true\npriority = {priority}\nparams = {{ mode = "burn" }}\n'
CALM_PLUGIN = "[plugins.procmon]\nenabled = true\npriority = 80\nparams = { scan_interval_s = 5 }\n"


def breaker_toml(extra: str = "", plugins: str = "", window_s: float = 2.0) -> str:
    fast = FAST.replace("window_s = 2.0", f"window_s = {window_s}")
    return fast + extra + "\n" + CALM_PLUGIN + plugins


async def set_config(stack: Stack, text: str) -> None:
    f = stack.workdir / f"cfg-{secrets.token_hex(3)}.toml"
    f.write_text(text)
    code, res = await stack.hidsctl_json("config", "set", str(f), "--scope", "fleet", "-m", "drill")
    assert code == 0, res


def states(obs: Observer, host: str) -> list[str]:
    return [e["state"] for e in obs.events if e["host"] == host and e.get("kind") == "breaker"]


def has_sequence(seen: list[str], want: list[str]) -> bool:
    """`want` appears in `seen` in order (other states may come between)."""
    it = iter(seen)
    return all(any(s == w for s in it) for w in want)


def breaker(obs: Observer, host: str) -> dict[str, Any]:
    hb = obs.heartbeats.get(host)
    return {} if hb is None or hb.breaker is None else hb.breaker.to_wire()


def plugin(obs: Observer, host: str, name: str) -> dict[str, Any]:
    hb = obs.heartbeats.get(host)
    return {} if hb is None else plugin_map(hb, name)


# --------------------------------------------------------------------------- psutil path


async def test_cpu_burner_throttled_shed_denylisted_then_normal(stack: Stack) -> None:
    """psutil accounting: a plugin burning a core is throttled, shed, restored once (half-open),
    shed again and denylisted; the calm plugin runs throughout; an operator clears it."""
    stack.start_controller()
    await stack.start_agent("br-cpu", ["web"])
    obs = await stack.observer()
    try:
        await stack.wait_online("br-cpu")
        await set_config(stack, breaker_toml(
            "cpu_throttle_pct = 30.0\ncpu_shed_pct = 60.0\ncpu_trip_pct = 100000.0\n",
            BURN.format(priority=10)))  # fmt: skip
        await wait_for(lambda: has_sequence(states(obs, "br-cpu"),
                                            ["throttled", "shedding", "recovering", "shedding",
                                             "normal"]), 60, "the whole ladder")  # fmt: skip
        b = breaker(obs, "br-cpu")
        assert b["accounting"] == {"mode": "psutil", "detail": "cgroups off by config"}
        await wait_for(lambda: breaker(obs, "br-cpu").get("state") == "normal", 10)
        b = breaker(obs, "br-cpu")
        assert "drill" in b["denylist"] and "breached again" in b["denylist"]["drill"]["reason"]
        assert plugin(obs, "br-cpu", "drill") == {}  # not running
        assert plugin(obs, "br-cpu", "procmon")["starts"] == 1  # the calm one never stopped
        shed = [e for e in obs.events if e.get("state") == "shedding"]
        assert shed[0]["offender"] == "drill" and "shed drill: offender (cpu)" in shed[0]["reason"]

        # visible to operators
        code, show = await stack.hidsctl_json("agents", "show", "br-cpu")
        assert code == 0 and show["breaker"]["state"] == "normal"
        assert [e["state"] for e in show["events"] if e["kind"] == "breaker"][:2] == [
            "throttled", "shedding"]  # fmt: skip
        code, fleet = await stack.hidsctl_json("fleet", "status")
        assert code == 0 and fleet["by_breaker"] == {"normal": 1}
        code, out, _ = await stack.hidsctl("agents", "show", "br-cpu")
        assert "breaker.denylist.drill" in out

        # the operator clears it: it runs again (and the breaker would catch it again)
        code, res = await stack.hidsctl_json("plugins", "clear", "drill", "--host", "br-cpu")
        assert code == 0 and res["acked_hosts"] == ["br-cpu"], res
        await wait_for(lambda: plugin(obs, "br-cpu", "drill").get("state") == "running", 15,
                       "drill running again after clear")  # fmt: skip
        assert "drill" not in breaker(obs, "br-cpu")["denylist"]

        # each state change is also a durable record in the telemetry stream, sent through the
        # agent's own spooled pipeline (its counters in the heartbeat's outputs)
        await wait_for(lambda: obs.heartbeats["br-cpu"].outputs["events"].counters.get(
            "records_out", 0) >= 5, 10, "the transitions counted out")  # fmt: skip
        code, out, err = await stack.hidsctl("events", "tail", "--host", "br-cpu", "--plugin",
                                             "agent", "--since", "5m", "--count", "5",
                                             "--idle-exit", "3", "--json")  # fmt: skip
        assert code == 0, err
        recs = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert [r["record"]["state"] for r in recs][:2] == ["throttled", "shedding"], recs
        assert recs[0]["type"] == 3 and recs[0]["record"]["offender"] == "drill"
    finally:
        await obs.close()


async def test_leak_trips_and_exits_and_the_denylist_survives_a_restart(stack: Stack) -> None:
    """on_trip = "exit": a leaking plugin trips the breaker, the agent exits with its distinct
    code (12); restarted, it keeps the offender off (the denylist is on disk)."""
    await set_config(stack, breaker_toml(
        'mem_throttle_mb = 180.0\nmem_shed_mb = 200.0\nmem_trip_mb = 220.0\non_trip = "exit"\n'
        "cpu_throttle_pct = 1000.0\ncpu_shed_pct = 2000.0\ncpu_trip_pct = 3000.0\n",
        '[plugins.drill]\nenabled = true\nparams = { mode = "leak", mb_per_s = 80, '
        "max_mb = 400 }\n"))  # fmt: skip
    agent = await stack.start_agent("br-exit", [])
    obs = await stack.observer()
    try:
        code = await _wait_exit(agent.popen, 60)
        assert code == 12, agent.output()[-3000:]
        assert "breaker_exit" in agent.output()
        assert states(obs, "br-exit")[-1:] == ["tripped"]
        assert not any(p.name() == "python" and "drill" in " ".join(p.cmdline())
                       for p in psutil.Process().children(recursive=True))  # fmt: skip
        obs.heartbeats.pop("br-exit", None)
        await stack.start_agent("br-exit", [])
        await wait_for(lambda: plugin(obs, "br-exit", "procmon").get("state") == "running", 20)
        b = breaker(obs, "br-exit")
        assert "drill" in b["denylist"] and plugin(obs, "br-exit", "drill") == {}
    finally:
        await obs.close()


async def _wait_exit(p: subprocess.Popen[bytes], timeout: float) -> int | None:
    await wait_for(lambda: p.poll() is not None, timeout, "agent exit")
    return p.returncode


async def test_flood_throttled_then_shed_then_normal(stack: Stack) -> None:
    """A plugin writing records as fast as it can (drop policy): flood -> throttled (its
    telemetry rate cut) -> shed -> restored -> caught again, denylisted -> normal."""
    stack.start_controller()
    await stack.start_agent("br-flood", [])
    obs = await stack.observer()
    try:
        await set_config(stack, breaker_toml(
            "flood_records_per_s = 3000.0\n"
            "cpu_throttle_pct = 1000.0\ncpu_shed_pct = 2000.0\ncpu_trip_pct = 3000.0\n",
            '[plugins.loadgen]\nenabled = true\npriority = 5\npolicy = "drop"\n'
            "params = { rate = 0, size = 60 }\n"))  # fmt: skip
        await wait_for(lambda: has_sequence(states(obs, "br-flood"),
                                            ["throttled", "shedding", "recovering", "shedding",
                                             "normal"]), 60, "flood ladder")  # fmt: skip
        first = next(e for e in obs.events if e.get("state") == "throttled")
        assert first["resource"] == "flood" and first["offender"] == "loadgen"
        assert "loadgen" in breaker(obs, "br-flood")["denylist"]
        tel = plugin(obs, "br-flood", "procmon")
        assert tel["state"] == "running"
    finally:
        await obs.close()


# --------------------------------------------------------------------------- cgroups


def _cgroup_writable() -> str | None:
    """None if we can create v1/v2 cgroups here, else why not."""
    from hidsd.plugins.cgroups import Accounting, open_resource_control

    name = f"hidsd-test-probe-{secrets.token_hex(3)}"
    try:
        rc = open_resource_control("auto", name)
    except Exception as exc:
        return f"cgroups unusable: {exc}"
    if rc.mode is Accounting.PSUTIL:
        return f"cgroups not writable here: {rc.detail}"
    return None


@pytest.fixture
def cgroup_name() -> Iterator[str]:
    why = _cgroup_writable()
    if why is not None:
        pytest.skip(why)
    name = f"hidsd-test-{secrets.token_hex(4)}"
    yield name
    _remove_cgroups(name)


def _remove_cgroups(name: str) -> None:
    """Whatever an agent killed by the test left behind (its own teardown removes the rest)."""
    for root in Path("/sys/fs/cgroup").iterdir():
        for found in root.rglob(name):
            for d in sorted((p for p in [found, *found.rglob("*")] if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True):  # fmt: skip
                with contextlib.suppress(OSError):
                    d.rmdir()


def _cgroup_dirs(name: str) -> list[Path]:
    out = []
    for root in Path("/sys/fs/cgroup").iterdir():
        out.extend(root.rglob(name))
    return out


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _business(n: int) -> list[subprocess.Popen[bytes]]:
    """The host's real work: CPU-bound processes outside the agent's cgroup, one per core."""
    code = "while True:\n    pass\n"
    return [subprocess.Popen(with_pdeathsig([sys.executable, "-c", code], os.getpid()))
            for _ in range(n)]  # fmt: skip


async def test_cgroup_memory_leak_trips_then_recovers(stack: Stack, cgroup_name: str) -> None:
    """cgroup accounting: the plugin runs in its own cgroup; a leak trips the breaker (every
    plugin stopped, the leaker denylisted), then recovery brings the others back: normal."""
    stack.start_controller()
    agent = await stack.start_agent("br-cg-mem", [], cgroups="auto", cgroup_name=cgroup_name)
    obs = await stack.observer()
    try:
        await set_config(stack, breaker_toml(
            "mem_throttle_mb = 200.0\nmem_shed_mb = 230.0\nmem_trip_mb = 260.0\n"
            "cpu_throttle_pct = 1000.0\ncpu_shed_pct = 2000.0\ncpu_trip_pct = 3000.0\n"
            "plugin_memory_max_mb = 1024\nmemory_max_mb = 2048\nmemory_high_mb = 1536\n",
            '[plugins.drill]\nenabled = true\nparams = { mode = "leak", mb_per_s = 60, '
            "max_mb = 500, after_s = 1.0 }\n"))  # fmt: skip
        await wait_for(lambda: plugin(obs, "br-cg-mem", "drill").get("pid"), 20, "drill up")
        b = breaker(obs, "br-cg-mem")
        assert b["accounting"]["mode"].startswith("cgroup-v"), b
        pid = plugin(obs, "br-cg-mem", "drill")["pid"]
        procs = [d / "plugins" / "drill" / "cgroup.procs" for d in _cgroup_dirs(cgroup_name)]
        assert any(str(pid) in p.read_text().split() for p in procs if p.exists())
        agent_procs = [d / "agent" / "cgroup.procs" for d in _cgroup_dirs(cgroup_name)]
        assert any(str(agent.popen.pid) in p.read_text().split()
                   for p in agent_procs if p.exists())  # fmt: skip

        await wait_for(lambda: has_sequence(states(obs, "br-cg-mem"),
                                            ["tripped", "recovering", "normal"]), 60,
                       "trip and recovery")  # fmt: skip
        trip = next(e for e in obs.events if e.get("state") == "tripped")
        assert trip["resource"] == "memory" and trip["offender"] == "drill"
        await wait_for(lambda: plugin(obs, "br-cg-mem", "procmon").get("state") == "running", 10)
        assert "drill" in breaker(obs, "br-cg-mem")["denylist"]
        assert plugin(obs, "br-cg-mem", "drill") == {}
    finally:
        await obs.close()
    assert agent.stop() == 0
    assert _cgroup_dirs(cgroup_name) == [], "the agent removes its cgroups on exit"


async def test_cgroup_cpu_burner_capped_and_shed_business_keeps_its_share(
    stack: Stack, cgroup_name: str
) -> None:
    """A plugin burning CPU is held to its quota by the kernel at once and shed by the breaker;
    the business (one CPU-bound process per core, outside our cgroup) keeps its share."""
    stack.start_controller()
    await stack.start_agent("br-cg-cpu", [], cgroups="auto", cgroup_name=cgroup_name)
    obs = await stack.observer()
    ncpu = os.cpu_count() or 1
    business = _business(ncpu)
    try:
        pids = [p.pid for p in business]
        await set_config(stack, breaker_toml(
            "cpu_quota_pct = 20.0\ncpu_throttle_pct = 8.0\ncpu_shed_pct = 15.0\n"
            "cpu_trip_pct = 100000.0\n",
            BURN.format(priority=1), window_s=4.0))  # fmt: skip
        await wait_for(lambda: plugin(obs, "br-cg-cpu", "drill").get("pid"), 20, "drill up")
        drill = psutil.Process(plugin(obs, "br-cg-cpu", "drill")["pid"])
        t0, b0 = time.monotonic(), _cpu_s(pids)
        d0 = sum(drill.cpu_times()[:2])
        await asyncio.sleep(1.5)
        d1, b1 = sum(drill.cpu_times()[:2]), _cpu_s(pids)
        d_share = (d1 - d0) / (time.monotonic() - t0)
        assert d_share < 0.3, f"the kernel quota (20 %) let the plugin use {d_share:.0%}"
        # throttled first: the plugin is reniced, its CPU weight and telemetry rate cut
        await wait_for(lambda: breaker(obs, "br-cg-cpu").get("state") == "throttled", 20)
        await wait_for(lambda: plugin(obs, "br-cg-cpu", "drill").get("nice") == 10, 5)
        assert plugin(obs, "br-cg-cpu", "drill")["rate_factor"] == 0.25
        assert drill.nice() == 10
        cpu = [d / "plugins" / "drill" for d in _cgroup_dirs(cgroup_name)
               if (d / "plugins" / "drill" / "cpu.shares").exists()]  # fmt: skip
        assert [(d / "cpu.shares").read_text().strip() for d in cpu] == ["256"]
        # and its own kernel cap: the plugins' 20 % x throttle_rate_factor 0.25 = 5 %
        assert [(d / "cpu.cfs_quota_us").read_text().strip() for d in cpu] == ["5000"]
        await wait_for(lambda: "shedding" in states(obs, "br-cg-cpu"), 30, "drill shed")
        await wait_for(lambda: not drill.is_running(), 10, "drill stopped")
        for e in obs.events:
            if e.get("state") == "throttled":
                assert e["offender"] == "drill" and e["resource"] == "cpu"
        # CPU accounting, not wall-clock speed: over the same 1.5 s the business (one process
        # per core) got far more than the plugin. In a fair fight with an uncapped burner it
        # would get ncpu/(ncpu+1) of what they use together (2/3 here); capped, ~0.9.
        share = (b1 - b0) / ((b1 - b0) + (d1 - d0))
        assert share > ncpu / (ncpu + 1) + 0.05, f"business {share:.0%} vs the plugin"
        await wait_for(lambda: has_sequence(states(obs, "br-cg-cpu"),
                                            ["throttled", "shedding", "recovering", "shedding",
                                             "normal"]), 60, "back to normal")  # fmt: skip
    finally:
        for p in business:
            p.send_signal(signal.SIGKILL)
            p.wait()
        await obs.close()


async def test_cgroups_that_cannot_be_set_up_fall_back_to_psutil_and_say_so(stack: Stack) -> None:
    """Asked for a cgroup version the host cannot give (v2 has no cpu/memory controllers on a
    v1 machine; or not root): the agent runs on psutil accounting and the heartbeat says why."""
    from hidsd.plugins.cgroups import Accounting, open_resource_control

    try:
        if open_resource_control("cgroup-v2", f"hidsd-test-{secrets.token_hex(3)}").mode is (
            Accounting.CGROUP_V2
        ):
            pytest.skip("this host has a usable cgroup v2: nothing to fall back from")
    except Exception:
        pass
    await stack.start_agent("br-fallback", [], cgroups="cgroup-v2", cgroup_name="hidsd-test-fb")
    obs = await stack.observer()
    try:
        await wait_for(lambda: breaker(obs, "br-fallback"), 20, "a heartbeat")
        acc = breaker(obs, "br-fallback")["accounting"]
        assert acc["mode"] == "psutil"
        assert acc["detail"].startswith("cgroup setup failed, psutil accounting: "), acc
    finally:
        await obs.close()
