"""The agent survives its host (issue 11): real agents, real filesystems, real limits.

Each condition with a fleet stop and resume across it, an agent restart with etcd down while
it lasts (the stop must hold: no escape), and recovery when it ends. The data dir is a 2 MB
tmpfs, filled to the last byte or remounted read-only; descriptors run out through prlimit on
the running agent; the clock is skewed by libfaketime.
"""

from __future__ import annotations

import asyncio
import glob
import os
import resource
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from support import Observer, Proc, Stack, can_mount, fill, remount, tmpfs, wait_for

from hidsd.agent.statefile import StateFile
from hidsd.wire.heartbeat import plugin_map
from hidsd.wire.record import encode

needs_mount = pytest.mark.skipif(bool(can_mount()), reason=can_mount() or "-")
LOADGEN = "[plugins.loadgen]\nenabled = true\nparams = { rate = 200, size = 200 }\n"


async def set_config(stack: Stack, text: str) -> None:
    f = stack.workdir / f"cfg-{secrets.token_hex(3)}.toml"
    f.write_text(text)
    code, res = await stack.hidsctl_json("config", "set", str(f), "--scope", "fleet", "-m", "t")
    assert code == 0, res


def storage(obs: Observer, host: str) -> dict[str, Any]:
    hb = obs.heartbeats.get(host)
    return encode(hb.storage) if hb is not None and hb.storage is not None else {}


def plugin(obs: Observer, host: str, name: str) -> dict[str, Any]:
    hb = obs.heartbeats.get(host)
    return dict(plugin_map(hb, name)) if hb is not None else {}


async def show(stack: Stack, host: str) -> dict[str, Any]:
    code, res = await stack.hidsctl_json("agents", "show", host)
    assert code == 0, res
    return dict(res)


async def fleet(stack: Stack, verb: str) -> dict[str, Any]:
    code, res = await stack.hidsctl_json("fleet", verb)
    assert code == 0, res
    return dict(res)


async def restart_with_etcd_down(stack: Stack, agent: Proc, host: str, obs: Observer,
                                 **extra: Any) -> Proc:  # fmt: skip
    """SIGKILL the agent, stop etcd, start the agent again: it must come back stopped."""
    agent.signal(signal.SIGKILL)
    await asyncio.to_thread(agent.popen.wait, 10)
    stack.etcd.stop()
    obs.heartbeats.pop(host, None)
    again = await stack.start_agent(host, ["web"], **extra)
    await wait_for(lambda: obs.mode(host) is not None, 30, "heartbeat after the restart")
    hb = obs.heartbeats[host]
    assert hb.mode.value == "stopped", f"escaped the stop after a restart: {hb.mode}"
    assert not hb.plugins, hb.plugins  # no plugin started
    assert hb.facts.store_ok is False
    await asyncio.sleep(1.0)  # still stopped a while later
    assert obs.mode(host) == "stopped" and not obs.heartbeats[host].plugins
    assert again.popen.poll() is None
    return again


async def start_with_loadgen(s: Stack, obs: Observer, host: str, data_dir: Path) -> Proc:
    """A controller, loadgen enabled by config, and an agent whose data dir is `data_dir`."""
    s.start_controller()  # it creates the telemetry stream
    await set_config(s, LOADGEN)
    agent = await s.start_agent(host, ["web"], data_dir=str(data_dir))
    await wait_for(lambda: plugin(obs, host, "loadgen").get("state") == "running", 30,
                   "loadgen running")  # fmt: skip
    return agent


async def resume_once_healthy(s: Stack, obs: Observer, host: str) -> None:
    """Storage ok and etcd back, then a resume brings loadgen back."""
    await wait_for(lambda: storage(obs, host).get("status") == "ok", 15, "storage ok")
    await wait_for(lambda: obs.heartbeats[host].facts.store_ok, 30, "etcd back")
    res = await fleet(s, "resume")
    assert res["acked_hosts"] == [host]
    await wait_for(lambda: plugin(obs, host, "loadgen").get("state") == "running", 30,
                   "loadgen running again")  # fmt: skip


@needs_mount
async def test_full_disk_stop_holds_across_a_restart_with_etcd_down(
    private_stack: Stack,
) -> None:
    s = private_stack
    obs = await s.observer()
    with tmpfs(s.workdir / "fs", "2m") as fs:
        agent = await start_with_loadgen(s, obs, "full-1", fs / "data")
        assert storage(obs, "full-1")["status"] == "ok"
        filler = fill(fs)
        await wait_for(lambda: storage(obs, "full-1").get("status") == "full", 10,
                       "storage full in the heartbeat")  # fmt: skip

        res = await fleet(s, "stop")
        assert res["acked_hosts"] == ["full-1"] and res["complete"]
        await wait_for(lambda: obs.mode("full-1") == "stopped", 10, "stopped")
        await asyncio.sleep(1.0)
        assert agent.popen.poll() is None, agent.output()[-3000:]  # the crash: gone
        assert "Traceback" not in agent.output()
        view = await show(s, "full-1")
        assert view["storage"]["status"] == "full" and str(fs) in view["storage"]["path"]
        code, out, _ = await s.hidsctl("agents", "show", "full-1")
        assert code == 0 and "storage" in out and "full" in out
        code, st = await s.hidsctl_json("fleet", "status")
        assert st["storage_not_ok"]["full-1"]["status"] == "full", st
        assert StateFile(fs / "data").load().mode.value == "stopped"  # type: ignore[union-attr]

        agent = await restart_with_etcd_down(s, agent, "full-1", obs, data_dir=str(fs / "data"))
        s.etcd.restart()
        filler.unlink()
        await resume_once_healthy(s, obs, "full-1")
        assert agent.popen.poll() is None
        agent.stop()
    await obs.close()


@needs_mount
async def test_nats_outage_with_a_full_spool_disk_counts_drops(private_stack: Stack) -> None:
    s = private_stack
    obs = await s.observer()
    with tmpfs(s.workdir / "fs", "2m") as fs:
        s.start_controller()  # it creates the telemetry stream
        await set_config(s, LOADGEN)
        agent = await s.start_agent("spool-1", ["web"], data_dir=str(fs / "data"))
        await wait_for(lambda: plugin(obs, "spool-1", "loadgen").get("tel.records_out", 0) > 0,
                       30, "records flowing")  # fmt: skip
        filler = fill(fs)
        s.nats.stop()  # the outage: batches go to the spool, which cannot take them
        await asyncio.sleep(2.5)
        assert agent.popen.poll() is None, agent.output()[-3000:]
        s.nats.start()
        await wait_for(lambda: plugin(obs, "spool-1", "loadgen").get("tel.dropped_spool_full", 0)
                       > 0, 30, "dropped_spool_full counted")  # fmt: skip
        st = storage(obs, "spool-1")
        assert st["status"] == "full" and "spool:loadgen" in st["failing"], st
        filler.unlink()
        await wait_for(lambda: storage(obs, "spool-1").get("status") == "ok", 30, "recovered")
        before = plugin(obs, "spool-1", "loadgen")["tel.records_out"]
        await wait_for(lambda: plugin(obs, "spool-1", "loadgen")["tel.records_out"] > before, 20,
                       "records flowing again")  # fmt: skip
        p = plugin(obs, "spool-1", "loadgen")
        # nothing accepted is lost without being counted: in = out + dropped + still queued
        dropped = sum(v for k, v in p.items() if k.startswith("tel.dropped_"))
        assert p["tel.frames_in"] >= p["tel.records_out"] + dropped
        assert "Traceback" not in agent.output()
        agent.stop()
    await obs.close()


@needs_mount
async def test_read_only_data_dir_behaves_like_a_full_disk(private_stack: Stack) -> None:
    s = private_stack
    obs = await s.observer()
    with tmpfs(s.workdir / "fs", "2m") as fs:
        agent = await start_with_loadgen(s, obs, "ro-1", fs / "data")
        # no plugin holds a file in the data dir open for writing, so the remount succeeds
        remount(fs, "ro")
        await wait_for(lambda: storage(obs, "ro-1").get("status") == "read-only", 10,
                       "read-only in the heartbeat")  # fmt: skip
        res = await fleet(s, "stop")
        assert res["acked_hosts"] == ["ro-1"]
        await wait_for(lambda: obs.mode("ro-1") == "stopped", 10, "stopped")
        await asyncio.sleep(0.5)
        assert agent.popen.poll() is None, agent.output()[-3000:]
        st = storage(obs, "ro-1")
        assert "state" in st["failing"] and "read-only" in st["failing"]["state"], st
        _code, status = await s.hidsctl_json("fleet", "status")
        assert status["storage_not_ok"]["ro-1"]["status"] == "read-only"

        # the runtime-dir copy holds the stop the data dir could not take
        agent = await restart_with_etcd_down(s, agent, "ro-1", obs, data_dir=str(fs / "data"))
        s.etcd.restart()
        remount(fs, "rw")
        await wait_for(lambda: storage(obs, "ro-1").get("status") == "ok", 15, "storage ok")
        # the primary caught up by itself: the stop is in the data dir now
        assert StateFile(fs / "data").load().mode.value == "stopped"  # type: ignore[union-attr]
        await resume_once_healthy(s, obs, "ro-1")
        agent.stop()
    await obs.close()


def _lowest_free_fd(pid: int) -> int:
    used = {int(n) for n in os.listdir(f"/proc/{pid}/fd")}
    return next(i for i in range(len(used) + 1) if i not in used)


async def test_out_of_descriptors_reported_and_recovered(private_stack: Stack) -> None:
    s = private_stack
    obs = await s.observer()
    s.start_controller()
    agent = await s.start_agent("fd-1", ["web"])
    await wait_for(lambda: obs.mode("fd-1") == "running", 30, "agent up")
    pid = agent.popen.pid
    limit = _lowest_free_fd(pid)
    # the soft limit only: raising a hard limit again needs CAP_SYS_RESOURCE
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, old[1]))  # no descriptor left
    try:
        await set_config(s, LOADGEN)  # the plugin cannot be spawned now
        await wait_for(lambda: plugin(obs, "fd-1", "loadgen").get("start_failed", 0) >= 2, 30,
                       "start failures counted")  # fmt: skip
        p = plugin(obs, "fd-1", "loadgen")
        assert p["state"] == "backoff" and p["parked"] == 0, p  # not a crash loop
        assert "EMFILE" in p["last_exit"]
        st = storage(obs, "fd-1")
        assert st["status"] == "error" and "EMFILE" in st["failing"]["plugin:loadgen"], st
        assert st["fds_limit"] == limit

        res = await fleet(s, "stop")  # the control channel keeps working
        assert res["acked_hosts"] == ["fd-1"]
        await wait_for(lambda: obs.mode("fd-1") == "stopped", 10, "stopped")
        # persisted through the spare descriptor
        state = StateFile(s.workdir / "data-fd-1").load()
        assert state is not None and state.mode.value == "stopped"
        res = await fleet(s, "resume")
        assert res["acked_hosts"] == ["fd-1"]
        seq = obs.heartbeats["fd-1"].seq
        await wait_for(lambda: obs.heartbeats["fd-1"].seq > seq + 2, 10, "heartbeats go on")
        assert agent.popen.poll() is None
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
    await wait_for(lambda: plugin(obs, "fd-1", "loadgen").get("state") == "running", 40,
                   "plugin started once descriptors are back")  # fmt: skip
    await wait_for(lambda: storage(obs, "fd-1").get("status") == "ok", 15,
                   f"storage ok: {storage(obs, 'fd-1')}")  # fmt: skip
    # and a restart with etcd down keeps a stop made meanwhile
    res = await fleet(s, "stop")
    assert res["acked_hosts"] == ["fd-1"]
    await restart_with_etcd_down(s, agent, "fd-1", obs)
    s.etcd.restart()
    await obs.close()


async def test_a_plugin_that_leaks_descriptors_hurts_only_itself(stack: Stack) -> None:
    """The plugin fills its own descriptor table; the agent's stays small, its control channel
    and storage are fine, and the leak is visible per plugin."""
    obs = await stack.observer()
    stack.start_controller()
    await set_config(stack, '[plugins.drill]\nenabled = true\nparams = { mode = "fds" }\n')
    agent = await stack.start_agent("fdleak-1", ["web"])
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # the agent's, and so the plugin's
    await wait_for(lambda: plugin(obs, "fdleak-1", "drill").get("fds", 0) > soft - 10, 30,
                   "the drill's descriptor table full")  # fmt: skip
    st = storage(obs, "fdleak-1")
    assert st["status"] == "ok" and st["fds_open"] < 100, st
    for verb, mode in (("stop", "stopped"), ("resume", "running")):
        res = await fleet(stack, verb)
        assert res["acked_hosts"] == ["fdleak-1"], res
        await wait_for(lambda m=mode: obs.mode("fdleak-1") == m, 10, mode)
    await wait_for(lambda: plugin(obs, "fdleak-1", "drill").get("fds", 0) > soft - 10, 30,
                   "leaking again after the resume")  # fmt: skip
    assert agent.popen.poll() is None
    await obs.close()


def _libfaketime() -> str | None:
    """libfaketime itself: preloaded into the agent (the `faketime` command would fork and
    leave the agent a grandchild of the test)."""
    if shutil.which("faketime") is None:
        return None
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


FAKETIME = _libfaketime()


def skewed(offset: str) -> dict[str, str]:
    assert FAKETIME is not None
    return {"LD_PRELOAD": FAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1"}  # fmt: skip


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime not installed (Debian: faketime)")
async def test_skewed_clocks_obey_the_kill_switch(stack: Stack) -> None:
    """Hosts 10 minutes ahead and behind: the broadcast is refused by their clocks (named in
    the summary), they re-read etcd at once and apply the recorded stop; the skew shows."""
    obs = await stack.observer()
    stack.start_controller()
    ahead = await stack.start_agent("ahead-1", ["web"], env=skewed("+600"))
    behind = await stack.start_agent("behind-1", ["web"], env=skewed("-600"))
    await stack.start_agent("ontime-1", ["web"])
    await stack.wait_online("ahead-1", "behind-1", "ontime-1", timeout=30)
    for verb, mode in (("stop", "stopped"), ("resume", "running")):
        res = await fleet(stack, verb)
        assert res["complete"] and sorted(res["acked_hosts"]) == ["ahead-1", "behind-1",
                                                                  "ontime-1"], res  # fmt: skip
        refused = res["clock_refused_hosts"]
        assert refused["ahead-1"].startswith("expired") and refused["behind-1"].startswith(
            "not_yet_valid"), refused  # fmt: skip
        assert "ontime-1" not in refused
        skews = res["clock_skewed_hosts"]
        assert set(skews) == {"ahead-1", "behind-1"} and skews["ahead-1"] > 595, skews
        assert res["elapsed_ms"] < 1000, res  # within a second of the broadcast
        await wait_for(lambda m=mode: obs.mode("ahead-1") == obs.mode("behind-1") == m, 10,
                       f"both {mode}")  # fmt: skip
    code, out, _ = await stack.hidsctl("fleet", "stop")
    assert code == 0 and "clock refused on ahead-1" in out and "then applied from etcd" in out
    a, b = await show(stack, "ahead-1"), await show(stack, "behind-1")
    assert 595 < a["clock_skew_s"] < 605 and -605 < b["clock_skew_s"] < -595
    assert 595 < a["clock"]["command_skew_s"] < 605 and a["clock"]["refused_expired"] >= 2
    assert b["clock"]["refused_not_yet_valid"] >= 2
    code, st = await stack.hidsctl_json("fleet", "status")
    assert set(st["clock_skewed"]) == {"ahead-1", "behind-1"}, st
    assert ahead.popen.poll() is None and behind.popen.poll() is None
    await obs.close()


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime not installed (Debian: faketime)")
async def test_skewed_clock_converges_from_etcd_after_missing_the_broadcast(
    private_stack: Stack,
) -> None:
    """The other half: a skewed host that was away applies the stop on its next etcd read,
    where no clock is consulted, and keeps it across a restart with etcd down."""
    s = private_stack
    obs = await s.observer()
    res = await s.hidsctl_json("fleet", "stop")
    assert res[1]["recorded"], res
    agent = await s.start_agent("late-1", ["web"], env=skewed("+600"))
    await wait_for(lambda: obs.mode("late-1") == "stopped", 20, "stopped from etcd")
    hb = obs.heartbeats["late-1"]
    assert hb.sent_at - time.time() > 595  # it really runs 10 minutes ahead
    await restart_with_etcd_down(s, agent, "late-1", obs, env=skewed("+600"))
    s.etcd.restart()
    await obs.close()
