"""hidsctl against real servers: exit codes, and the emergency path with the controller or
etcd down."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from support import Stack, wait_for

from hidsd.wire.commands import CommandKind, decode_audit_entry
from hidsd.wire.names import Scope

PY = sys.executable


def run_ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "hidsd.ctl.main", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_keys_init_show_and_refuse_overwrite(tmp_path: Path) -> None:
    env = {"HIDSCTL_KEY": str(tmp_path / "k" / "operator.key"), "COLUMNS": "200"}
    r = run_ctl(env, "keys", "init")
    assert r.returncode == 0, r.stderr
    assert "trusted_keys = [" in r.stdout
    assert (tmp_path / "k" / "operator.key").stat().st_mode & 0o777 == 0o600
    r2 = run_ctl(env, "keys", "show", "--json")
    assert r2.returncode == 0
    assert r2.stdout.count("public_key") == 1
    r3 = run_ctl(env, "keys", "init")
    assert r3.returncode == 2 and "exists" in r3.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    env = {"HIDSCTL_KEY": str(tmp_path / "missing.key"), "HIDSCTL_NATS": "nats://127.0.0.1:1"}
    r = run_ctl(env, "fleet", "stop", "--group", "a", "--host", "b")
    assert r.returncode == 2 and "not both" in r.stderr
    r = run_ctl(env, "fleet", "stop", "--group", "bad.name")
    assert r.returncode == 2 and "invalid group" in r.stderr
    r = run_ctl(env, "fleet", "stop")
    assert r.returncode == 2 and "hidsctl keys init" in r.stderr
    r = run_ctl({**env, "HIDSCTL_CONFIG": str(tmp_path / "nope.toml")}, "--config",
                str(tmp_path / "nope.toml"), "agents", "list")  # fmt: skip
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_nats_unreachable_read_exits_4(tmp_path: Path) -> None:
    r = run_ctl({"HIDSCTL_NATS": "nats://127.0.0.1:1"}, "agents", "list")
    assert r.returncode == 4 and "no NATS server reachable" in r.stderr


async def test_controller_down_read_exits_5_and_show_unknown_exits_7(stack: Stack) -> None:
    code, _out, err = await stack.hidsctl("agents", "list")
    assert code == 5 and "no hidsd-controller answered" in err
    stack.start_controller()
    await stack.start_agent("show-1", ["web"])
    await stack.wait_online("show-1")
    code, _out, err = await stack.hidsctl("agents", "show", "nobody")
    assert code == 7 and "unknown agent" in err
    code, res = await stack.hidsctl_json("agents", "show", "show-1")
    assert code == 0
    assert res["facts"]["hostname"] and res["groups"] == ["web"]
    assert set(res["rejections"]) >= {"unsigned", "bad_signature", "replayed"}


async def test_stop_with_controller_down_counts_acks_and_says_expected_unknown(
    stack: Stack,
) -> None:
    obs = await stack.observer()
    try:
        for h in ("nc-1", "nc-2"):
            await stack.start_agent(h, ["web"])
        await wait_for(lambda: len(obs.heartbeats) == 2, 20, "agents up")
        code, res = await stack.hidsctl_json("fleet", "stop", "--wait", "2")
        assert code == 1, res  # cannot claim completeness without the expected set
        assert res["recorded"] and res["broadcast"]
        assert res["expected_known"] is False and res["missing_hosts"] is None
        assert res["acked_hosts"] == ["nc-1", "nc-2"]
        store = await stack.root_store()  # the audit entry, recorded with the desired state
        try:
            kv = await store.get(stack.keys.command_log(res["cmd_id"]))
        finally:
            await store.close()
        entry = decode_audit_entry(kv.value)
        assert (entry.kind, entry.scope, entry.target) == (CommandKind.STOP, Scope.FLEET, "*")
        code, out, _err = await stack.hidsctl("fleet", "resume", "--wait", "2")
        assert code == 1
        assert "UNKNOWN" in out and "no controller answered" in out
    finally:
        await obs.close()


async def test_etcd_down_refuses_then_unrecorded_stop_is_held_until_newer_state(
    private_stack: Stack,
) -> None:
    s = private_stack
    s.start_controller()
    obs = await s.observer()
    try:
        for h in ("e-1", "e-2"):
            await s.start_agent(h, ["web"], resync_s=1.0)
        await wait_for(lambda: len(obs.heartbeats) == 2, 20, "agents up")
        await wait_for(lambda: all(hb.facts.store_ok for hb in obs.heartbeats.values()))
        s.etcd.stop()

        # Refused by default: nothing broadcast, agents keep running.
        code, res = await s.hidsctl_json("fleet", "stop")
        assert code == 3, res
        assert res["recorded"] is False and res["broadcast"] is False
        assert "--allow-unrecorded" in res["message"]
        await asyncio.sleep(1.0)
        assert obs.mode("e-1") == obs.mode("e-2") == "running"

        # Forced: broadcast, acked, held; hidsctl says it was not recorded and exits 3.
        code, out, err = await s.hidsctl("fleet", "stop", "--allow-unrecorded")
        assert code == 3, out + err
        assert "NOT recorded" in err and "acked" in out
        await wait_for(lambda: all(hb.held and hb.mode.value == "stopped"
                                   for hb in obs.heartbeats.values()), 10, "held stop")  # fmt: skip

        # etcd comes back; agents resync (every ~1 s) against the older desired state and keep
        # the hold.
        s.etcd.restart()
        await wait_for(lambda: all(hb.facts.store_ok for hb in obs.heartbeats.values()), 20)
        await asyncio.sleep(2.5)
        assert all(hb.held and hb.mode.value == "stopped" for hb in obs.heartbeats.values())

        # A newer desired state releases it.
        code, res = await s.hidsctl_json("fleet", "resume")
        assert code == 0, res
        await wait_for(lambda: all(not hb.held and hb.mode.value == "running"
                                   for hb in obs.heartbeats.values()), 10, "released")  # fmt: skip
    finally:
        await obs.close()
