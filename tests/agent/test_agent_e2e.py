"""End to end: real agent processes, a real controller, hidsctl, nats-server and etcd."""

from __future__ import annotations

import asyncio
import signal

from support import Stack, wait_for


async def start_fleet(stack: Stack) -> None:
    stack.start_controller()
    await stack.start_agent("web-1", ["web"])
    await stack.start_agent("web-2", ["web"])
    await stack.start_agent("db-1", ["db"])
    await stack.wait_online("web-1", "web-2", "db-1")


async def test_kill_switch_full_ack_accounting(stack: Stack) -> None:
    await start_fleet(stack)
    obs = await stack.observer()
    try:
        code, res = await stack.hidsctl_json("fleet", "stop")
        assert code == 0, res
        assert res["recorded"] and res["broadcast"] and res["complete"]
        assert res["expected"] == 3
        assert res["acked_hosts"] == ["db-1", "web-1", "web-2"]
        assert res["missing_hosts"] == [] and res["rejected_hosts"] == []
        assert res["rev"] > 0
        await wait_for(
            lambda: all(obs.mode(h) == "stopped" for h in ("web-1", "web-2", "db-1")),
            what="all agents report stopped in their heartbeat",
        )
        assert all(obs.heartbeats[h].applied_rev == res["rev"] for h in obs.heartbeats)

        code, status = await stack.hidsctl_json("fleet", "status")
        assert code == 0
        assert status["by_mode"] == {"stopped": 3}
        assert status["not_converged"] == []

        code, res2 = await stack.hidsctl_json("fleet", "resume")
        assert code == 0 and res2["acked"] == 3 and res2["rev"] > res["rev"]
        await wait_for(
            lambda: all(obs.mode(h) == "running" for h in ("web-1", "web-2", "db-1")),
            what="all agents running again",
        )
    finally:
        await obs.close()


async def test_group_and_host_targeting(stack: Stack) -> None:
    await start_fleet(stack)
    obs = await stack.observer()
    try:
        code, res = await stack.hidsctl_json("fleet", "stop", "--group", "web")
        assert code == 0, res
        assert res["expected_hosts"] == ["web-1", "web-2"]
        assert res["acked_hosts"] == ["web-1", "web-2"]
        await wait_for(lambda: obs.mode("web-1") == obs.mode("web-2") == "stopped")
        await asyncio.sleep(1.0)  # a heartbeat period or two: db-1 must stay untouched
        assert obs.mode("db-1") == "running"
        assert not any(a.host == "db-1" for a in obs.acks)

        code, res = await stack.hidsctl_json("fleet", "stop", "--host", "db-1")
        assert code == 0 and res["acked_hosts"] == ["db-1"], res
        await wait_for(lambda: obs.mode("db-1") == "stopped")

        # A host-level resume written after the group stop wins for that host only.
        code, res = await stack.hidsctl_json("fleet", "resume", "--host", "web-2")
        assert code == 0 and res["acked_hosts"] == ["web-2"]
        await wait_for(lambda: obs.mode("web-2") == "running")
        await asyncio.sleep(1.0)
        assert obs.mode("web-1") == "stopped" and obs.mode("db-1") == "stopped"
    finally:
        await obs.close()


async def test_agent_started_while_fleet_stopped_comes_up_stopped(stack: Stack) -> None:
    stack.start_controller()
    await stack.wait_controller()
    code, res = await stack.hidsctl_json("fleet", "stop")
    # No agent is online: the expected set is known and empty, so the stop is complete.
    assert code == 0, res
    assert res["expected"] == 0 and res["recorded"]
    obs = await stack.observer()
    try:
        await stack.start_agent("late-1", ["web"])
        await wait_for(lambda: obs.heartbeats.get("late-1"), 20, "late agent heartbeat")
        await wait_for(lambda: obs.mode("late-1") == "stopped", 10, "late agent stopped")
        assert obs.heartbeats["late-1"].applied_rev == res["rev"]
        # It acks the stop it converged to, so the controller's ledger has it.
        await wait_for(lambda: any(a.cmd_id == res["cmd_id"] for a in obs.acks))
    finally:
        await obs.close()


async def test_agent_converges_after_nats_outage_without_watch(private_stack: Stack) -> None:
    """NATS is down while the stop is issued: hidsctl records it in etcd only. The agent runs
    without an etcd watch and with a long resync period, so only its reconnect resync can
    bring it to the stop."""
    s = private_stack
    s.start_controller()
    agent = await s.start_agent("edge-1", ["edge"], watch=False, resync_s=600.0)
    obs = await s.observer()
    await wait_for(lambda: obs.mode("edge-1") == "running", 20, "agent running")
    await obs.close()

    s.nats.stop()
    code, res = await s.hidsctl_json("fleet", "stop")
    assert code == 4, res  # Exit.BUS: recorded but not broadcast
    assert res["recorded"] is True and res["broadcast"] is False

    s.nats.start()  # same port: the agent's reconnect loop finds it
    obs = await s.observer()
    try:
        await wait_for(lambda: obs.mode("edge-1") == "stopped", 20, "converged after reconnect")
        assert obs.heartbeats["edge-1"].applied_rev == res["rev"]
        assert '"why": "trigger"' in agent.output() or "nats_reconnected" in agent.output()
    finally:
        await obs.close()


async def test_paused_agent_missing_broadcast_is_reported_then_converges(stack: Stack) -> None:
    """An agent that is frozen during the broadcast is named as missing (exit 1); when it
    thaws it processes the stop and the fleet converges."""
    await start_fleet(stack)
    agents = {p.name: p for p in stack.procs}
    frozen = agents["agent-db-1"]
    frozen.signal(signal.SIGSTOP)
    obs = await stack.observer()
    try:
        code, res = await stack.hidsctl_json("fleet", "stop", "--wait", "1.5")
        assert code == 1, res
        assert res["missing_hosts"] == ["db-1"]
        assert res["acked_hosts"] == ["web-1", "web-2"]
        frozen.signal(signal.SIGCONT)
        await wait_for(lambda: obs.mode("db-1") == "stopped", 20, "thawed agent stopped")
    finally:
        frozen.signal(signal.SIGCONT)
        await obs.close()


async def test_agent_restart_never_goes_back(stack: Stack) -> None:
    """The applied state is persisted: a restarted agent starts stopped even before etcd."""
    stack.start_controller()
    a = await stack.start_agent("solo-1", ["web"])
    obs = await stack.observer()
    try:
        await wait_for(lambda: obs.mode("solo-1") == "running", 20)
        await stack.wait_online("solo-1")
        code, res = await stack.hidsctl_json("fleet", "stop", "--host", "solo-1")
        assert code == 0, res
        assert a.stop() == 0
        assert '"event": "stopped"' in a.output()
        obs.heartbeats.clear()
        # Restart with etcd pointed at a dead endpoint: only the state file can say "stopped".
        b = await stack.start_agent("solo-1", ["web"], etcd_endpoints=["127.0.0.1:1"])
        await wait_for(lambda: obs.mode("solo-1") == "stopped", 20, "restarted agent stopped")
        assert obs.heartbeats["solo-1"].applied_rev == res["rev"]
        assert obs.heartbeats["solo-1"].facts.store_ok is False
        b.stop()
    finally:
        await obs.close()


async def test_agent_without_nats_still_converges_from_etcd(stack: Stack) -> None:
    """No agent escapes control: with its NATS unreachable, it still applies etcd's state."""
    from hidsd.agent.statefile import StateFile

    _code, res = await stack.hidsctl_json("fleet", "stop")
    assert res["recorded"], res
    a = await stack.start_agent("island-1", ["web"], nats_servers=["nats://127.0.0.1:1"])
    state_file = StateFile(stack.workdir / "data-island-1")
    state = await wait_for(
        lambda: (st := state_file.load()) is not None and st.applied_rev and st,
        20,
        "state file written",
    )
    assert state.mode.value == "stopped" and state.applied_rev == res["rev"]
    assert "nats_connect_failed" in a.output()
    assert a.stop() == 0
