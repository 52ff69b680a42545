"""The config plane end to end with etcd auth on: hidsctl, real agents, real etcd."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import Stack, wait_for

from hidsd.base.errors import StoreAuthError, StoreConflict, StorePermissionDenied
from hidsd.bus.store import Store
from hidsd.ctl import configplane
from hidsd.dev.devstack import find_binary
from hidsd.wire.names import Scope


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


async def _set(stack: Stack, scope: str, text: str, msg: str = "test") -> dict[str, object]:
    f = _write(stack.workdir, f"cfg-{abs(hash(text))}.toml", text)
    code, res = await stack.hidsctl_json("config", "set", str(f), "--scope", scope, "-m", msg)
    assert code == 0, res
    return res  # type: ignore[no-any-return]


async def test_set_get_history_diff_rollback_effective(stack: Stack) -> None:
    v1 = await _set(stack, "fleet", 'log_level = "info"\n[telemetry]\nrate_per_s = 500\n', "base")
    v2 = await _set(
        stack, "fleet", 'log_level = "warning"\n[telemetry]\nrate_per_s = 800\n', "tune"
    )
    await _set(stack, "group:web", "heartbeat_s = 2.5\n", "web beats faster")
    await _set(stack, "host:h-1", "[plugins.procmon]\nenabled = false\n", "noisy host")
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v2["author"] == stack.operator[0]  # type: ignore[index]

    code, hist = await stack.hidsctl_json("config", "history", "--scope", "fleet")
    assert code == 0 and [h["version"] for h in hist] == [1, 2]
    assert [h["message"] for h in hist] == ["base", "tune"]

    code, out, _ = await stack.hidsctl("config", "diff", "--scope", "fleet", "1", "2")
    assert code == 0
    assert '-log_level = "info"' in out and '+log_level = "warning"' in out

    code, rb = await stack.hidsctl_json("config", "rollback", "--scope", "fleet", "1", "-m", "undo")
    assert code == 0 and rb["version"] == 3 and rb["rollback_of"] == 1
    code, cur = await stack.hidsctl_json("config", "get", "--scope", "fleet")
    assert cur["version"] == 3 and "rate_per_s = 500" in cur["content"]
    code, old = await stack.hidsctl_json("config", "get", "--scope", "fleet", "--version", "2")
    assert old["version"] == 2 and "800" in old["content"]
    code, hist = await stack.hidsctl_json("config", "history", "--scope", "fleet")
    assert [h["version"] for h in hist] == [1, 2, 3]  # history never rewritten

    code, eff = await stack.hidsctl_json("config", "effective", "--host", "h-1", "--groups", "web")
    assert code == 0
    assert eff["effective"]["telemetry"]["rate_per_s"] == 500
    assert eff["sources"]["telemetry.rate_per_s"] == "fleet"
    assert eff["effective"]["heartbeat_s"] == 2.5 and eff["sources"]["heartbeat_s"] == "group:web"
    assert eff["effective"]["plugins"]["procmon"]["enabled"] is False
    assert eff["sources"]["plugins.procmon.enabled"] == "host:h-1"
    assert eff["sources"]["telemetry.burst"] == "default"
    assert eff["versions"] == {"fleet": 3, "group:web": 1, "host:h-1": 1}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("heartbeat_s = -1\n", "heartbeat_s"),
        ('log_level = "loud"\n', "log_level"),
        ("[telemetry]\nrate_per_s = 1.5\n", "telemetry.rate_per_s"),
        ("[plugins.procmon]\nenabld = true\n", "plugins.procmon.enabld"),
        ("colour = 1\n", "colour"),
        ("this is = not toml [", "TOML"),
    ],
)
async def test_invalid_config_is_refused_with_the_field(
    stack: Stack, text: str, field: str
) -> None:
    f = _write(stack.workdir, "bad.toml", text)
    code, out, err = await stack.hidsctl("config", "set", str(f), "--scope", "fleet", "-m", "x")
    assert code == 9, out + err
    assert field in err
    code, _, err = await stack.hidsctl("config", "get", "--scope", "fleet")
    assert code == 7 and "no config yet" in err  # nothing was written


async def test_concurrent_writers_cannot_lose_each_others_change(stack: Stack) -> None:
    op = stack.operator
    assert op is not None
    stores = [Store(stack.etcd.endpoints, op[0], op[1]) for _ in range(2)]
    for st in stores:
        await st.open()
    try:
        for round_ in range(5):
            results = await asyncio.gather(
                *(
                    configplane.set_config(
                        st,
                        stack.keys,
                        Scope.FLEET,
                        "*",
                        f"heartbeat_s = {i + 1 + round_ * 2}\n",
                        f"w{i}",
                        "t",
                    )
                    for i, st in enumerate(stores)
                ),
                return_exceptions=True,
            )
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, BaseException)]
            # Either both went in one after the other, or exactly one lost and was told so.
            assert len(won) >= 1
            assert all(isinstance(e, StoreConflict) for e in lost), lost
        hist = await configplane.history(stores[0], stack.keys, Scope.FLEET, "*")
        versions = [h.version for h in hist]
        assert versions == list(range(1, len(versions) + 1))  # no gap, no overwrite
    finally:
        for st in stores:
            await st.close()
    # A stale read-modify-write is refused with a clear conflict and exit code 8.
    f = _write(stack.workdir, "next.toml", "heartbeat_s = 9\n")
    code, out, err = await stack.hidsctl("config", "set", str(f), "--scope", "fleet", "-m", "late",
                                         "--expect-version", "1")  # fmt: skip
    assert code == 8, out + err
    assert "someone else changed it" in err


async def test_agents_hot_reload_and_report_versions(stack: Stack) -> None:
    stack.start_controller()
    a = await stack.start_agent("hr-1", ["web"], log_level="info")
    await stack.start_agent("hr-2", ["db"], log_level="info")
    obs = await stack.observer()
    try:
        await stack.wait_online("hr-1", "hr-2")
        assert '"level": "debug"' not in a.output()
        await _set(stack, "group:web", 'log_level = "debug"\nheartbeat_s = 0.3\n')
        await wait_for(lambda: obs.heartbeats["hr-1"].config.versions == {"group:web": 1},
                       10, "hr-1 reports group:web v1")  # fmt: skip
        assert obs.heartbeats["hr-1"].interval_s == 0.3
        await wait_for(lambda: '"level": "debug"' in a.output(), 10, "debug lines after reload")
        assert "config_hot_reloaded" in a.output()
        assert obs.heartbeats["hr-2"].config.versions == {}
        assert obs.heartbeats["hr-2"].interval_s == 0.5  # untouched: not in group web

        code, st = await stack.hidsctl_json("config", "status")
        rows = {r["host"]: r for r in st["agents"]}
        assert rows["hr-1"]["converged"] is True and rows["hr-1"]["status"] == "ok"
        assert rows["hr-2"]["converged"] is True
        assert code == 0
    finally:
        await obs.close()


async def test_corrupt_value_in_etcd_is_rejected_and_last_good_kept(stack: Stack) -> None:
    stack.start_controller()
    await stack.start_agent("cv-1", ["web"], log_level="info")
    obs = await stack.observer()
    try:
        await stack.wait_online("cv-1")
        await _set(stack, "host:cv-1", "heartbeat_s = 0.4\n")
        await wait_for(lambda: obs.heartbeats["cv-1"].config.versions == {"host:cv-1": 1})
        # Someone writes garbage straight into etcd, around hidsctl's validation.
        key = stack.keys.config_current(Scope.HOST, "cv-1")
        proc = await asyncio.create_subprocess_exec(
            find_binary("etcdctl", "HIDSD_ETCDCTL_BIN"), "--endpoints", stack.etcd.endpoints[0],
            "--user", f"root:{stack.root_password}", "put", key, "{not json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr
        await wait_for(lambda: obs.heartbeats["cv-1"].config.status == "rejected", 10)
        cfg = obs.heartbeats["cv-1"].config
        assert cfg.rejected is not None and cfg.rejected.scope == "host:cv-1"
        assert "corrupt" in cfg.rejected.error
        assert cfg.versions == {"host:cv-1": 1}  # the last good stays in force
        assert obs.heartbeats["cv-1"].interval_s == 0.4

        code, st = await stack.hidsctl_json("config", "status")
        assert code == 1
        row = next(a for a in st["agents"] if a["host"] == "cv-1")
        assert row["status"] == "rejected" and row["rejected"]["scope"] == "host:cv-1"
        code, show = await stack.hidsctl_json("agents", "show", "cv-1")
        assert any(e["kind"] == "config_rejected" for e in show["events"])

        # A valid version repairs it.
        await _set(stack, "host:cv-1", "heartbeat_s = 0.6\n")
        await wait_for(lambda: obs.heartbeats["cv-1"].config.status == "ok", 10)
        assert obs.heartbeats["cv-1"].interval_s == 0.6
    finally:
        await obs.close()


async def test_etcd_down_agents_keep_last_good_and_converge_when_back(
    private_stack: Stack,
) -> None:
    s = private_stack
    obs = await s.observer()
    try:
        a = await s.start_agent("ed-1", ["web"], resync_s=1.0)
        await wait_for(lambda: "ed-1" in obs.heartbeats, 20)
        await _set(s, "fleet", "heartbeat_s = 0.3\n")
        await wait_for(lambda: obs.heartbeats["ed-1"].config.versions == {"fleet": 1})
        s.etcd.stop()
        # The agent keeps working on its config; restarted while etcd is down, it starts
        # from the last good config on disk.
        assert a.stop() == 0
        obs.heartbeats.clear()
        await s.start_agent("ed-1", ["web"], resync_s=1.0)
        await wait_for(
            lambda: "ed-1" in obs.heartbeats and not obs.heartbeats["ed-1"].bye
            and obs.heartbeats["ed-1"].config.status == "last_good",
            20, "restarted agent reports its last good config",
        )  # fmt: skip
        hb = obs.heartbeats["ed-1"]
        assert hb.config.versions == {"fleet": 1}
        assert hb.interval_s == 0.3 and hb.facts.store_ok is False
        s.etcd.restart()
        await _set(s, "fleet", "heartbeat_s = 0.35\n")
        await wait_for(lambda: obs.heartbeats["ed-1"].config.versions == {"fleet": 2},
                       20, "converged after etcd came back")  # fmt: skip
        assert obs.heartbeats["ed-1"].config.status == "ok"
    finally:
        await obs.close()


async def test_history_survives_compaction(stack: Stack) -> None:
    for i in range(3):
        await _set(stack, "fleet", f"heartbeat_s = {i + 1}\n", f"v{i + 1}")
    root = await stack.root_store()
    try:
        await root.compact(await root.revision())
    finally:
        await root.close()
    code, hist = await stack.hidsctl_json("config", "history", "--scope", "fleet")
    assert code == 0 and [h["message"] for h in hist] == ["v1", "v2", "v3"]
    code, v1 = await stack.hidsctl_json("config", "get", "--scope", "fleet", "--version", "1")
    assert code == 0 and v1["content"] == "heartbeat_s = 1\n"


async def test_rbac_viewer_and_agent_cannot_write_wrong_password_fails(stack: Stack) -> None:
    f = _write(stack.workdir, "c.toml", "heartbeat_s = 5\n")
    assert stack.viewer is not None
    env_viewer = ("--user", stack.viewer[0], "--password", stack.viewer[1])
    code, out, err = await stack.hidsctl(*env_viewer, "config", "set", str(f), "--scope",
                                         "fleet", "-m", "x")  # fmt: skip
    assert code == 6 and "denied" in err, out + err
    code, _, err = await stack.hidsctl(*env_viewer, "fleet", "stop")
    assert code == 6 and "denied" in err
    code, _ = await stack.hidsctl_json(*env_viewer, "config", "history", "--scope", "fleet")
    assert code == 0  # a viewer reads

    code, _, err = await stack.hidsctl("--user", stack.viewer[0], "--password", "wrong-pass",
                                       "config", "history", "--scope", "fleet")  # fmt: skip
    assert code == 6 and "credentials" in err
    assert "wrong-pass" not in err

    creds = await stack.add_agent_user("rb-1", ["web"])
    assert creds is not None
    agent_store = Store(stack.etcd.endpoints, *creds)
    await agent_store.open()
    try:
        # reads its own keys ...
        await agent_store.get_many(stack.keys.applicable("rb-1", ("web",)))
        # ... but cannot write them, nor read another host's or group's
        with pytest.raises(StorePermissionDenied):
            await agent_store.put(stack.keys.desired(Scope.HOST, "rb-1"), b"x")
        with pytest.raises(StorePermissionDenied):
            await agent_store.get(stack.keys.desired(Scope.HOST, "someone-else"))
        with pytest.raises(StorePermissionDenied):
            await agent_store.get(stack.keys.config_current(Scope.GROUP, "db"))
    finally:
        await agent_store.close()
    bad = Store(stack.etcd.endpoints, creds[0], "not-the-password")
    await bad.open()
    try:
        with pytest.raises(StoreAuthError):
            await bad.get(stack.keys.desired(Scope.FLEET, "*"))
    finally:
        await bad.close()


async def test_expired_token_is_refreshed(tmp_path: Path) -> None:
    from hidsd.dev.devstack import EtcdCluster, bootstrap_auth

    e = EtcdCluster(tmp_path, auth_token_ttl_s=1).start()
    try:
        await bootstrap_auth(e.endpoints, "root-pw-123", "/hidsd/")
        store = Store(e.endpoints, "root", "root-pw-123", token_refresh_s=3600)
        await store.open()
        try:
            await store.put("/hidsd/x", b"1")
            assert store.reauths == 0
            await asyncio.sleep(3)  # the token expired on the server
            kv = await store.get("/hidsd/x")
            assert kv is not None and kv.value == b"1"
            assert store.reauths == 1
        finally:
            await store.close()
    finally:
        e.stop()


def test_credentials_file_must_be_private(tmp_path: Path) -> None:
    import os

    from hidsd.base.errors import ConfigError
    from hidsd.ctl.common import read_credentials

    p = tmp_path / "credentials.toml"
    p.write_text(json.dumps({"user": "u"}).replace("{", "").replace("}", "").replace(":", " =")
                 + '\npassword = "pw-123456"\n')  # fmt: skip
    os.chmod(p, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_credentials(p)
    os.chmod(p, 0o600)
    assert read_credentials(p) == ("u", "pw-123456")
