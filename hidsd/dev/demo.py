"""`make demo`: a local embedded stack and the kill switch, end to end, for a human.

Starts nats-server and etcd (from their pip wheels) on free loopback ports, two
hidsd-controllers (dividing the work) and three hidsd agents (different host ids and groups),
then runs the real `hidsctl` commands an operator would: list agents, pull the emergency kill
switch (live ack progress and summary), show the stopped fleet, resume, versioned config,
plugins and telemetry, a fleet vulnerability query, a circuit-breaker drill, and tear
everything down. Every child
dies with this process (PR_SET_PDEATHSIG), and Ctrl-C at any point tears down the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from hidsd.dev.devstack import EtcdCluster, NatsServer, spawn, stop_process
from hidsd.wire.signing import OperatorKey, encode_public_key

ROOT_PW = "root-demo-password"
AGENTS = (("demo-web-1", ["web"]), ("demo-web-2", ["web"]), ("demo-db-1", ["db", "pci"]))

console = Console()


def _agent_config(work: Path, host: str, groups: list[str], pub: str, nats: str,
                  etcd: list[str], etcd_creds: tuple[str, str]) -> Path:  # fmt: skip
    path = work / f"{host}.toml"
    path.write_text(
        f'host_id = "{host}"\ngroups = {groups!r}\n'.replace("'", '"')
        + f'trusted_keys = ["{pub}"]\n'
        f'data_dir = "{work / ("data-" + host)}"\n'
        f'runtime_dir = "{work / ("run-" + host)}"\n'
        'heartbeat_s = 1.0\nresync_s = 15.0\nlog_format = "json"\n'
        # its own cgroup subtree per demo agent (when root; else psutil accounting)
        f'cgroup_name = "{work.name}-{host}"\n'
        f'[nats]\nservers = ["{nats}"]\n'
        f'[etcd]\nendpoints = ["{etcd[0]}"]\nuser = "{etcd_creds[0]}"\n'
        f'password = "{etcd_creds[1]}"\n'
    )
    path.chmod(0o600)
    return path


def _hidsctl(env: dict[str, str], *args: str, stdin: str | None = None) -> int:
    console.print(f"[bold cyan]$ hidsctl {' '.join(args)}[/]")
    cmd = [sys.executable, "-m", "hidsd.ctl.main", *args]
    return subprocess.run(cmd, env=env, check=False, input=stdin, text=True).returncode


def _hidsctl_json(env: dict[str, str], *args: str) -> Any:
    import json

    cmd = [sys.executable, "-m", "hidsd.ctl.main", *args, "--json"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"demo: hidsctl {' '.join(args)} failed: {r.stderr}")
    return json.loads(r.stdout)


def _wait_online(env: dict[str, str], n: int, timeout: float = 30.0) -> None:
    import json

    deadline = time.monotonic() + timeout
    cmd = [sys.executable, "-m", "hidsd.ctl.main", "agents", "list", "--json"]
    while time.monotonic() < deadline:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if r.returncode == 0:
            agents = json.loads(r.stdout)["agents"]
            if sum(a["liveness"] == "online" for a in agents) >= n:
                return
        time.sleep(0.3)
    raise SystemExit(f"demo: agents did not come online within {timeout:.0f}s")


DRILL = """\
[breaker]
interval_s = 0.5
window_s = 2.0
grace_s = 0.0
cooldown_s = 2.0
cooldown_max_s = 8.0
host_cpu_pressure_pct = 100.0

[plugins.drill]
enabled = true
priority = 1
params = { mode = "burn" }
"""


def _fleet_query(env: dict[str, str]) -> int:
    """Which hosts run an affected openssl: answered from the controllers' inventory index
    (the inventory plugin enabled in step 6 reports this machine's dpkg database)."""
    console.print(Rule("7. fleet query (R5) over two controllers (R13)"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the first inventories take a moment
        st = _hidsctl_json(env, "controllers", "list")["controllers"]
        if st and all(c.get("inventory_hosts", 0) >= len(AGENTS) for c in st):
            break
        time.sleep(0.5)
    _hidsctl(env, "controllers", "list")
    # every demo agent runs this machine's openssl: pick a range that covers it
    rc = _hidsctl(env, "query", "package", "openssl", "--affected", "vers:deb/<99")
    if rc not in (0, 10):  # 10 = complete, affected hosts found
        return rc
    return 0


def _breaker_drill(env: dict[str, str], work: Path) -> int:
    """A plugin burning a core on one host: throttled, shed, restored (half-open), caught
    again and denylisted, back to normal; the other plugins keep running."""
    console.print(Rule("8. circuit breaker drill (E5)"))
    drill_file = work / "drill.toml"
    drill_file.write_text(DRILL)
    rc = _hidsctl(env, "config", "set", str(drill_file), "--scope", "host:demo-db-1",
                  "-m", "breaker drill: a plugin that burns a core")  # fmt: skip
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        b = _hidsctl_json(env, "agents", "show", "demo-db-1").get("breaker", {})
        if b.get("state") == "normal" and "drill" in b.get("denylist", {}):
            break
        time.sleep(0.5)
    else:
        console.print("[red]the breaker did not finish the drill in 45 s[/]")
        rc = rc or 1
    _hidsctl(env, "agents", "show", "demo-db-1")
    _hidsctl(env, "fleet", "status")
    return rc


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="hidsd-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    nats = NatsServer(work)
    etcd = EtcdCluster(work)
    code = 1
    try:
        console.print(Rule("hidsd demo: local embedded stack"))
        nats.start()
        etcd.start()
        console.print(f"nats-server {nats.url}   etcd {etcd.endpoints[0]}   workdir {work}")

        key = OperatorKey.generate()
        key_path = work / "operator.key"
        key.save(key_path)
        pub = encode_public_key(key.public_key)
        console.print(f"operator key {key.key_id} (agents trust only this key)")

        base_env = {
            **os.environ,
            "HIDSCTL_NATS": nats.url,
            "HIDSCTL_ETCD": etcd.endpoints[0],
            "HIDSCTL_KEY": str(key_path),
            "HIDSCTL_CONFIG": str(work / "hidsctl.toml"),
        }
        console.print(Rule("etcd auth (R7): roles admin, operator, viewer, one per agent"))
        root_env = {**base_env, "HIDSCTL_ETCD_USER": "root", "HIDSCTL_ETCD_PASSWORD": ROOT_PW}
        _hidsctl(base_env, "auth", "bootstrap", "--password-stdin", stdin=ROOT_PW + "\n")
        _hidsctl(root_env, "auth", "user-add", "alice", "--role", "operator",
                 "--password-stdin", stdin="alice-demo-pw\n")  # fmt: skip
        _hidsctl(root_env, "auth", "user-add", "controller", "--role", "viewer",
                 "--password-stdin", stdin="controller-demo-pw\n")  # fmt: skip
        agent_pw = {}
        for host, groups in AGENTS:
            args = ["auth", "agent-add", host, "--generate"]
            for g in groups:
                args += ["--group", g]
            created = _hidsctl_json(root_env, *args)
            agent_pw[host] = (created["user"], created["password"])
        console.print(f"agent users: {', '.join(u for u, _ in agent_pw.values())} "
                      "(each reads only the keys that govern it)")  # fmt: skip
        env = {**base_env, "HIDSCTL_ETCD_USER": "alice", "HIDSCTL_ETCD_PASSWORD": "alice-demo-pw"}
        for cname in ("demo-controller-1", "demo-controller-2"):  # they divide the work
            procs.append(
                spawn(
                    [sys.executable, "-m", "hidsd.controller.main", "--nats", nats.url,
                     "--sys-nats", nats.sys_url, "--etcd", etcd.endpoints[0], "--name", cname,
                     "--log-format", "json"],
                    work / f"{cname}.log",
                    env={**os.environ, "HIDSD_CONTROLLER_ETCD_USER": "controller",
                         "HIDSD_CONTROLLER_ETCD_PASSWORD": "controller-demo-pw",
                         "HIDSD_CONTROLLER_STREAM_MAX_BYTES": str(256 << 20),
                         "HIDSD_CONTROLLER_INVENTORY_MAX_BYTES": str(64 << 20)},
                )
            )  # fmt: skip
        for host, groups in AGENTS:
            cfg = _agent_config(work, host, groups, pub, nats.url, etcd.endpoints, agent_pw[host])
            procs.append(
                spawn(
                    [sys.executable, "-m", "hidsd.agent.main", "-c", str(cfg)], work / f"{host}.log"
                )
            )
        console.print("started 2 hidsd-controllers and 3 hidsd agents; waiting for them")
        _wait_online(env, len(AGENTS))

        console.print(Rule("1. the fleet"))
        _hidsctl(env, "agents", "list")
        console.print(Rule("2. emergency kill switch"))
        stop_rc = _hidsctl(env, "fleet", "stop")
        console.print(f"exit code {stop_rc}")
        time.sleep(0.5)
        console.print(Rule("3. every agent is stopped (control channel still listening)"))
        _hidsctl(env, "agents", "list")
        _hidsctl(env, "fleet", "status")
        console.print(Rule("4. resume"))
        resume_rc = _hidsctl(env, "fleet", "resume")
        time.sleep(0.5)
        _hidsctl(env, "fleet", "status")
        console.print(Rule("5. versioned config, hot reload (R8, R12)"))
        cfg_file = work / "web.toml"
        cfg_file.write_text('log_level = "debug"\nheartbeat_s = 2.0\n')
        set_rc = _hidsctl(env, "config", "set", str(cfg_file), "--scope", "group:web",
                          "-m", "debug the web tier")  # fmt: skip
        time.sleep(1.5)
        _hidsctl(env, "config", "status")
        _hidsctl(env, "config", "effective", "--host", "demo-web-1")
        console.print(Rule("6. plugins and telemetry (R4, R14, E2)"))
        fleet_file = work / "fleet.toml"
        fleet_file.write_text(
            "[plugins.procmon]\nenabled = true\nparams = { interval_s = 1.0 }\n"
            "[plugins.inventory]\nenabled = true\n"
        )
        plug_rc = _hidsctl(env, "config", "set", str(fleet_file), "--scope", "fleet",
                           "-m", "turn on process and package monitoring")  # fmt: skip
        time.sleep(3.0)
        _hidsctl(env, "plugins", "status")
        _hidsctl(env, "events", "tail", "--plugin", "procmon", "--since", "1m", "--count", "3",
                 "--idle-exit", "5")  # fmt: skip
        query_rc = _fleet_query(env)
        drill_rc = _breaker_drill(env, work)
        rcs = (stop_rc, resume_rc, set_rc, plug_rc, query_rc, drill_rc)
        code = 0 if all(rc == 0 for rc in rcs) else 1
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted: tearing down[/]")
        code = 130
    finally:
        console.print(Rule("teardown"))
        for p in reversed(procs):
            stop_process(p)
        etcd.stop()
        nats.stop()
        left = [p.pid for p in procs if p.poll() is None]
        console.print("all processes stopped" if not left else f"[red]still running: {left}[/]")
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
