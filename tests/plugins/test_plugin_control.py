"""Operator control of plugins: signed start/stop recorded in etcd, restart, ack accounting."""

from __future__ import annotations

from support import Stack, wait_for

from hidsd.wire.heartbeat import plugin_map

LOADGEN = "[plugins.loadgen]\nenabled = true\nparams = { rate = 20, size = 50 }\n"


async def test_stop_start_restart_with_acks_and_convergence(stack: Stack) -> None:
    stack.start_controller()
    agent = await stack.start_agent("pc-1", ["web"])
    await stack.start_agent("pc-2", ["web"])
    obs = await stack.observer()
    try:
        await stack.wait_online("pc-1", "pc-2")
        f = stack.workdir / "lg.toml"
        f.write_text(LOADGEN)
        code, res = await stack.hidsctl_json("config", "set", str(f), "--scope", "fleet", "-m", "x")
        assert code == 0, res

        def state(host: str) -> str | None:
            hb = obs.heartbeats.get(host)
            return None if hb is None else plugin_map(hb, "loadgen").get("state")

        await wait_for(lambda: state("pc-1") == state("pc-2") == "running", 20, "both running")

        code, res = await stack.hidsctl_json("plugins", "stop", "loadgen", "--host", "pc-1")
        assert code == 0, res
        assert res["acked_hosts"] == ["pc-1"] and res["recorded"]
        await wait_for(lambda: state("pc-1") is None, 15, "pc-1 stopped loadgen")
        assert state("pc-2") == "running"

        # The stop is desired state: a restarted agent keeps it (from etcd).
        assert agent.stop() == 0
        obs.heartbeats.pop("pc-1", None)
        await stack.start_agent("pc-1", ["web"])
        await wait_for(lambda: "pc-1" in obs.heartbeats and not obs.heartbeats["pc-1"].bye, 20)
        await wait_for(lambda: obs.heartbeats["pc-1"].uptime_s > 2.0, 20)
        assert state("pc-1") is None

        # A group-wide start written later wins over the older host-level stop.
        code, res = await stack.hidsctl_json("plugins", "start", "loadgen", "--group", "web")
        assert code == 0 and res["acked_hosts"] == ["pc-1", "pc-2"], res
        await wait_for(lambda: state("pc-1") == "running", 15, "pc-1 running again")

        starts = plugin_map(obs.heartbeats["pc-2"], "loadgen")["starts"]
        code, res = await stack.hidsctl_json("plugins", "restart", "loadgen", "--host", "pc-2")
        assert code == 0 and res["acked_hosts"] == ["pc-2"], res
        await wait_for(lambda: plugin_map(obs.heartbeats["pc-2"], "loadgen")
                       .get("starts", 0) > starts, 15, "restarted")  # fmt: skip

        code, _out, err = await stack.hidsctl("plugins", "stop", "nosuch")
        assert code == 2 and "unknown plugin" in err
    finally:
        await obs.close()
