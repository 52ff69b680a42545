"""Plugins and the telemetry path end to end: real agent, real plugin processes, JetStream."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import msgpack
import nats
import psutil
from support import Stack, wait_for

from hidsd.wire import frames
from hidsd.wire.heartbeat import plugin_map


async def _set(stack: Stack, scope: str, text: str) -> None:
    f = stack.workdir / f"cfg-{abs(hash(text))}.toml"
    f.write_text(text)
    code, res = await stack.hidsctl_json("config", "set", str(f), "--scope", scope, "-m", "t")
    assert code == 0, res


async def _stream_records(stack: Stack, host: str, plugin: str) -> list[tuple[int, int, int]]:
    """Every record stored for host/plugin, in stream order: (epoch, seq, n)."""
    nc = await nats.connect(stack.nats.url)
    out: list[tuple[int, int, int]] = []
    try:
        js = nc.jetstream()
        sub = await js.subscribe(stack.subjects.telemetry(host, plugin), ordered_consumer=True)
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                break
            h = msg.headers or {}
            epoch, seq = int(h[frames.H_EPOCH]), int(h[frames.H_SEQ])
            for i, (_, payload) in enumerate(frames.iter_frames(msg.data)):
                out.append((epoch, seq + i, msgpack.unpackb(payload)["n"]))
        await sub.unsubscribe()
    finally:
        await nc.close()
    return out


LOADGEN = "[plugins.loadgen]\nenabled = true\nparams = {{ {params} }}\n{extra}"


async def test_records_flow_once_in_order_and_kill_switch_stops_plugins(stack: Stack) -> None:
    stack.start_controller()
    await stack.start_agent("tel-1", ["web"])
    obs = await stack.observer()
    try:
        await stack.wait_online("tel-1")
        conf = LOADGEN.format(params="rate = 4000, size = 100, count = 3000", extra="")
        await _set(stack, "host:tel-1", conf)
        await wait_for(
            lambda: plugin_map(obs.heartbeats["tel-1"], "loadgen").get("tel.records_out", 0)
            == 3000, 30, "3000 records published",
        )  # fmt: skip
        recs = await _stream_records(stack, "tel-1", "loadgen")
        assert [n for _, _, n in recs] == list(range(3000))  # exactly once, in order
        pl = plugin_map(obs.heartbeats["tel-1"], "loadgen")
        assert pl["state"] == "running" and pl["records"] == 3000 and pl["bad_frames"] == 0
        pid = pl["pid"]
        assert psutil.pid_exists(pid)

        code, out, err = await stack.hidsctl("events", "tail", "--host", "tel-1", "--plugin",
                                             "loadgen", "--since", "1h", "--count", "5",
                                             "--json")  # fmt: skip
        assert code == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert [e["record"]["n"] for e in lines] == [0, 1, 2, 3, 4]
        assert all(e["host"] == "tel-1" and e["type"] == 900 for e in lines)
        code, rows = await stack.hidsctl_json("plugins", "status", "--host", "tel-1")
        assert code == 0 and rows[0]["plugin"] == "loadgen" and rows[0]["state"] == "running"
        assert rows[0]["tel.records_out"] == 3000 and rows[0]["drops"] == 0

        code, res = await stack.hidsctl_json("fleet", "stop", "--host", "tel-1")
        assert code == 0, res
        await wait_for(lambda: "loadgen" not in obs.heartbeats["tel-1"].plugins, 15,
                       "plugin stopped by the kill switch")  # fmt: skip
        await wait_for(lambda: not psutil.pid_exists(pid), 5, "plugin process gone")
        code, res = await stack.hidsctl_json("fleet", "resume", "--host", "tel-1")
        assert code == 0
        await wait_for(lambda: plugin_map(obs.heartbeats["tel-1"], "loadgen")
                       .get("state") == "running", 15, "plugin back after resume")  # fmt: skip
    finally:
        await obs.close()


async def test_nats_outage_spools_and_drains_exactly_once(private_stack: Stack) -> None:
    s = private_stack
    s.start_controller()
    await s.start_agent("sp-1", ["web"])
    obs = await s.observer()
    await s.wait_online("sp-1")
    await _set(s, "host:sp-1",
               LOADGEN.format(params="rate = 400, size = 100, count = 3200", extra=""))  # fmt: skip
    await wait_for(lambda: plugin_map(obs.heartbeats["sp-1"], "loadgen")
                   .get("tel.records_out", 0) > 300, 20, "telemetry flowing")  # fmt: skip
    await obs.close()
    s.nats.stop()
    await asyncio.sleep(3.0)  # the plugin keeps producing; the agent spools
    s.nats.start()
    obs = await s.observer()
    try:

        def drained() -> bool:
            pl = plugin_map(obs.heartbeats.get("sp-1"), "loadgen")
            return (pl.get("tel.records_out", 0) >= 3200 and pl.get("tel.spool_batches") == 0
                    and pl.get("records") == 3200)  # fmt: skip

        await wait_for(drained, 40, "all produced and the spool drained")
        pl = plugin_map(obs.heartbeats["sp-1"], "loadgen")
        assert pl["tel.spooled_records"] > 0, pl  # the outage was real
        recs = await _stream_records(s, "sp-1", "loadgen")
        assert [n for _, _, n in recs] == list(range(3200))
        assert pl.get("tel.dropped_spool_full", 0) == 0
    finally:
        await obs.close()


async def test_spool_bound_is_counted(private_stack: Stack) -> None:
    s = private_stack
    await s.start_agent("sb-1", ["web"])
    obs = await s.observer()
    await wait_for(lambda: "sb-1" in obs.heartbeats, 20)
    await _set(s, "host:sb-1", LOADGEN.format(
        params="rate = 1000, size = 200, count = 4000, batch = 50",
        extra="[telemetry]\nspool_max_bytes = 60000\nbatch_max_records = 50\n"))  # fmt: skip
    await obs.close()
    # No stream exists (no controller): every publish fails and goes to the bounded spool.
    obs = await s.observer()
    try:
        await wait_for(lambda: obs.heartbeats.get("sb-1") is not None
                       and plugin_map(obs.heartbeats["sb-1"], "loadgen").get("records") == 4000,
                       30, "plugin done")  # fmt: skip
        await asyncio.sleep(1.0)
        pl = plugin_map(obs.heartbeats["sb-1"], "loadgen")
        spooled, dropped = pl["tel.spooled_records"], pl["tel.dropped_spool_full"]
        assert dropped > 0 and spooled > 0
        assert spooled + dropped == 4000  # nothing lost silently
        assert pl["tel.spool_bytes"] <= 60000
    finally:
        await obs.close()


async def test_garbage_crash_loop_is_parked_and_other_plugins_keep_running(stack: Stack) -> None:
    await stack.start_agent("gb-1", ["web"])
    obs = await stack.observer()
    try:
        await wait_for(lambda: "gb-1" in obs.heartbeats, 20)
        await _set(stack, "host:gb-1", LOADGEN.format(
            params="rate = 0, size = 50, garbage_after = 64", extra="")
            + "[plugins.procmon]\nenabled = true\nparams = { interval_s = 0.5 }\n")  # fmt: skip
        await wait_for(lambda: plugin_map(obs.heartbeats["gb-1"], "loadgen")
                       .get("state") == "parked", 45, "garbage plugin parked")  # fmt: skip
        pl = plugin_map(obs.heartbeats["gb-1"], "loadgen")
        assert pl["bad_frames"] >= 4 and pl["starts"] >= 5 and pl["parked"] == 1
        assert obs.heartbeats["gb-1"].mode.value == "running"  # the agent is fine
        other = plugin_map(obs.heartbeats["gb-1"], "procmon")  # and so is the other plugin
        assert other["state"] == "running" and other["starts"] == 1 and other["bad_frames"] == 0
    finally:
        await obs.close()


async def test_plugin_dying_mid_frame_is_counted_and_restarted(stack: Stack) -> None:
    await stack.start_agent("dm-1", ["web"])
    obs = await stack.observer()
    try:
        await wait_for(lambda: "dm-1" in obs.heartbeats, 20)
        await _set(stack, "host:dm-1", LOADGEN.format(
            params="rate = 0, size = 50, die_mid_frame = 100", extra=""))  # fmt: skip
        await wait_for(lambda: plugin_map(obs.heartbeats["dm-1"], "loadgen")
                       .get("starts", 0) >= 2, 20, "restarted")  # fmt: skip
        pl = plugin_map(obs.heartbeats["dm-1"], "loadgen")
        assert pl["truncated_frames"] >= 1 and "exit code 4" in pl["last_exit"]
    finally:
        await obs.close()


async def test_no_orphan_survives_sigkill_of_the_agent(stack: Stack) -> None:
    agent = await stack.start_agent("or-1", ["web"])
    obs = await stack.observer()
    try:
        await wait_for(lambda: "or-1" in obs.heartbeats, 20)
        await _set(stack, "host:or-1", LOADGEN.format(params="rate = 10, size = 50", extra=""))
        await wait_for(lambda: plugin_map(obs.heartbeats["or-1"], "loadgen").get("pid"), 15)
        pid = plugin_map(obs.heartbeats["or-1"], "loadgen")["pid"]
        assert psutil.pid_exists(pid)
        os.kill(agent.popen.pid, signal.SIGKILL)
        await wait_for(lambda: not psutil.pid_exists(pid)
                       or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5,
                       "plugin killed with its parent")  # fmt: skip
    finally:
        await obs.close()


async def test_rate_limit_drop_policy_counts_and_block_policy_pushes_back(stack: Stack) -> None:
    await stack.start_agent("rl-1", ["web"])
    await stack.start_agent("rl-2", ["web"])
    obs = await stack.observer()
    try:
        await wait_for(lambda: "rl-1" in obs.heartbeats and "rl-2" in obs.heartbeats, 20)
        await _set(stack, "host:rl-1", LOADGEN.format(
            params="rate = 0, size = 50, count = 2000",
            extra='rate_per_s = 200\nburst = 100\npolicy = "drop"\n'))  # fmt: skip
        await _set(stack, "host:rl-2", LOADGEN.format(
            params="rate = 0, size = 50, count = 100000",
            extra='rate_per_s = 300\nburst = 100\npolicy = "block"\n'))  # fmt: skip
        await wait_for(lambda: plugin_map(obs.heartbeats["rl-1"], "loadgen")
                       .get("records") == 2000, 20)  # fmt: skip
        await wait_for(lambda: plugin_map(obs.heartbeats["rl-2"], "loadgen")
                       .get("records", 0) > 0, 20)  # fmt: skip
        await asyncio.sleep(3.0)
        pl = plugin_map(obs.heartbeats["rl-1"], "loadgen")
        dropped = pl.get("tel.dropped_rate_limit", 0) + pl.get("tel.dropped_queue_full", 0)
        assert dropped > 0
        assert pl["tel.records_out"] + dropped + pl["tel.queued"] <= 2000
        pl = plugin_map(obs.heartbeats["rl-2"], "loadgen")
        # the plugin wanted 100000 records as fast as possible; pushback held it near the rate
        assert pl["records"] < 20_000, sorted(pl.items())
        assert pl.get("tel.dropped_rate_limit", 0) == 0 and pl.get("tel.dropped_queue_full", 0) == 0

        # Limits hot-reload in place: no plugin restart.
        await _set(stack, "host:rl-2", LOADGEN.format(
            params="rate = 0, size = 50, count = 100000",
            extra='rate_per_s = 5000\nburst = 1000\npolicy = "block"\n'))  # fmt: skip
        await wait_for(lambda: plugin_map(obs.heartbeats["rl-2"], "loadgen")["records"] > 20_000,
                       20, "faster after the new rate")  # fmt: skip
        assert plugin_map(obs.heartbeats["rl-2"], "loadgen")["starts"] == 1
    finally:
        await obs.close()


async def test_events_tail_skips_and_counts_a_malformed_batch(stack: Stack) -> None:
    """Anyone on the bus can store a batch; a truncated one or one with a garbage sequence
    header is skipped and counted, and the records around it are still shown (exit 0)."""
    stack.start_controller()
    await stack.wait_controller()
    nc = await nats.connect(stack.nats.url)
    try:
        js = nc.jetstream()
        subject = stack.subjects.telemetry("raw-1", "loadgen")

        def batch(first: int, n: int) -> bytes:
            return b"".join(frames.frame(900, msgpack.packb({"n": first + i}), 1) for i in range(n))

        def headers(seq: str) -> dict[str, str]:
            return {frames.H_HOST: "raw-1", frames.H_PLUGIN: "loadgen", frames.H_SEQ: seq}

        async def stored() -> bool:
            try:
                await js.publish(subject, batch(0, 2), headers=headers("1"))
            except Exception:  # the controller has not made the stream yet
                return False
            return True

        deadline = asyncio.get_running_loop().time() + 15
        while not await stored():
            assert asyncio.get_running_loop().time() < deadline, "no telemetry stream"
            await asyncio.sleep(0.2)
        await js.publish(subject, batch(2, 2)[:-3], headers=headers("3"))  # truncated
        await js.publish(subject, batch(4, 1), headers=headers("not-a-number"))
        await js.publish(subject, batch(5, 2), headers=headers("6"))
    finally:
        await nc.close()
    code, out, err = await stack.hidsctl("events", "tail", "--host", "raw-1", "--since", "1h",
                                         "--idle-exit", "1.5", "--json")  # fmt: skip
    assert code == 0, err
    assert [json.loads(line)["record"]["n"] for line in out.splitlines()] == [0, 1, 2, 5, 6]
    assert "2 malformed batch(es) skipped" in err
    assert "truncated frame payload" in err and "bad sequence header" in err
