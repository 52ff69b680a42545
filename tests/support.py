"""Test support: a real stack (nats-server + etcd from the venv), real agent and controller
processes, hidsctl as a subprocess, and a NATS observer that records heartbeats and acks.

Each test gets its own subject and key prefix, so tests can share one server pair safely.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from hidsd.base.errors import ProtocolError
from hidsd.base.proc import with_pdeathsig
from hidsd.dev.devstack import EtcdCluster, NatsServer
from hidsd.wire.commands import Ack, decode_ack
from hidsd.wire.heartbeat import Heartbeat, decode_heartbeat
from hidsd.wire.names import KeyLayout, Subjects
from hidsd.wire.rpc import decode_event
from hidsd.wire.signing import OperatorKey, encode_public_key

PY = sys.executable


async def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `cond` until truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


@dataclass
class Observer:
    """A plain NATS client that records every heartbeat and ack under a prefix."""

    subjects: Subjects
    nc: Any = None
    heartbeats: dict[str, Heartbeat] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    garbage: int = 0

    async def start(self, url: str) -> Observer:
        self.nc = await nats.connect(url, name="test-observer")

        async def on_hb(msg: Msg) -> None:
            try:
                hb = decode_heartbeat(msg.data)
            except ProtocolError:
                self.garbage += 1  # tests publish garbage on these subjects too
                return
            self.heartbeats[hb.host] = hb

        async def on_ack(msg: Msg) -> None:
            try:
                self.acks.append(decode_ack(msg.data))
            except ProtocolError:
                self.garbage += 1

        async def on_event(msg: Msg) -> None:
            try:
                self.events.append(decode_event(msg.data))
            except ProtocolError:
                self.garbage += 1

        await self.nc.subscribe(self.subjects.heartbeat_all(), cb=on_hb)
        await self.nc.subscribe(self.subjects.event_all(), cb=on_event)
        await self.nc.subscribe(self.subjects.ack_all(), cb=on_ack)
        await asyncio.sleep(0)
        await self.nc.flush()
        return self

    def mode(self, host: str) -> str | None:
        hb = self.heartbeats.get(host)
        return hb.mode.value if hb else None

    async def publish(self, subject: str, data: bytes) -> None:
        await self.nc.publish(subject, data)
        await self.nc.flush()

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


@dataclass
class Stack:
    """One test's view of a running stack, with helpers to run the real programs."""

    nats: NatsServer
    etcd: EtcdCluster
    workdir: Path
    key: OperatorKey
    key_path: Path
    prefix: str = field(default_factory=lambda: f"t{secrets.token_hex(4)}")
    procs: list[Proc] = field(default_factory=list)
    #: etcd root password when auth is on (it is, in every fixture)
    root_password: str | None = None
    operator: tuple[str, str] | None = None
    viewer: tuple[str, str] | None = None
    agent_creds: dict[str, tuple[str, str]] = field(default_factory=dict)

    async def root_store(self) -> Any:
        from hidsd.bus.store import Store

        store = Store(self.etcd.endpoints, "root" if self.root_password else None,
                      self.root_password, timeout_s=3.0)  # fmt: skip
        await store.open()
        return store

    async def setup_auth(self) -> None:
        """Roles for this test's prefix, an operator (hidsctl) and a viewer (controller)."""
        if self.root_password is None:
            return
        from hidsd.ctl import rbac

        store = await self.root_store()
        try:
            for name, grants in rbac.standard_roles(self.keys).items():
                await store.ensure_role(name, grants)
            self.operator = (f"op-{self.prefix}", f"op-pw-{self.prefix}")
            self.viewer = (f"view-{self.prefix}", f"view-pw-{self.prefix}")
            await store.ensure_user(*self.operator, [rbac.role_name(self.keys, "operator")])
            await store.ensure_user(*self.viewer, [rbac.role_name(self.keys, "viewer")])
        finally:
            await store.close()

    async def add_agent_user(self, host: str, groups: list[str]) -> tuple[str, str] | None:
        if self.root_password is None:
            return None
        from hidsd.ctl import rbac

        role, grants = rbac.host_role(self.keys, host, tuple(groups))
        user = rbac.agent_user(self.keys, host)
        creds = (user, f"agent-pw-{host}")
        store = await self.root_store()
        try:
            await store.ensure_role(role, grants)
            await store.ensure_user(*creds, [role])
        finally:
            await store.close()
        self.agent_creds[host] = creds
        return creds

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    @property
    def keys(self) -> KeyLayout:
        return KeyLayout(f"/{self.prefix}/")

    @property
    def pub(self) -> str:
        return encode_public_key(self.key.public_key)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            p = subprocess.Popen(
                with_pdeathsig(args, os.getpid()), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
            )  # fmt: skip
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def agent_config(self, host: str, groups: list[str], **extra: Any) -> Path:
        nats_servers = extra.pop("nats_servers", [self.nats.url])
        etcd_endpoints = extra.pop("etcd_endpoints", self.etcd.endpoints)
        settings: dict[str, Any] = {
            "host_id": host,
            "groups": groups,
            "trusted_keys": [self.pub],
            "data_dir": str(self.workdir / f"data-{host}"),
            # the control state's second copy: per test, never the machine's /run/hidsd
            "runtime_dir": str(self.workdir / f"run-{host}"),
            "subject_prefix": self.prefix,
            "key_prefix": f"/{self.prefix}/",
            "heartbeat_s": 0.5,
            "resync_s": 30.0,
            "log_format": "json",
            "log_level": "debug",
            # tests share one machine: only the breaker's cgroup tests ask for cgroups
            "cgroups": "off",
            **extra,
        }
        lines = []
        for k, v in settings.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines += ["[nats]", f"servers = {json.dumps(nats_servers)}", "reconnect_base_s = 0.1",
                  "reconnect_max_s = 1.0"]  # fmt: skip
        lines += ["[etcd]", f"endpoints = {json.dumps(etcd_endpoints)}", "timeout_s = 1.0"]
        creds = self.agent_creds.get(host)
        if creds is not None:
            lines += [f"user = {json.dumps(creds[0])}", f"password = {json.dumps(creds[1])}"]
        path = self.workdir / f"agent-{host}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    async def start_agent(
        self, host: str, groups: list[str], env: dict[str, str] | None = None, **extra: Any
    ) -> Proc:
        """A real agent process; `env` adds to its environment (libfaketime, say)."""
        if host not in self.agent_creds:
            await self.add_agent_user(host, groups)
        cfg = self.agent_config(host, groups, **extra)
        return self._spawn(f"agent-{host}", [PY, "-m", "hidsd.agent.main", "-c", str(cfg)], env)

    def start_controller(self, name: str = "c1", env: dict[str, str] | None = None) -> Proc:
        # JetStream reserves each stream's max bytes: many tests share one server
        env = {"HIDSD_CONTROLLER_STREAM_MAX_BYTES": str(64 << 20),
               "HIDSD_CONTROLLER_INVENTORY_MAX_BYTES": str(16 << 20), **(env or {})}  # fmt: skip
        if self.viewer is not None:
            env.update({"HIDSD_CONTROLLER_ETCD_USER": self.viewer[0],
                        "HIDSD_CONTROLLER_ETCD_PASSWORD": self.viewer[1]})  # fmt: skip
        return self._spawn(
            f"controller-{name}",
            [PY, "-m", "hidsd.controller.main", "--nats", self.nats.url, "--sys-nats",
             self.nats.sys_url, "--etcd", ",".join(self.etcd.endpoints), "--name", name,
             "--subject-prefix", self.prefix, "--key-prefix", f"/{self.prefix}/",
             "--log-format", "json"],
            env,
        )  # fmt: skip

    def ctl_env(self) -> dict[str, str]:
        cfg = self.workdir / "hidsctl.toml"
        cfg.write_text(
            f'subject_prefix = "{self.prefix}"\nkey_prefix = "/{self.prefix}/"\ntimeout_s = 1.0\n'
        )
        return {
            **os.environ,
            "HIDSCTL_CONFIG": str(cfg),
            "HIDSCTL_NATS": self.nats.url,
            "HIDSCTL_ETCD": ",".join(self.etcd.endpoints),
            "HIDSCTL_KEY": str(self.key_path),
            "COLUMNS": "200",
            **(
                {"HIDSCTL_ETCD_USER": self.operator[0], "HIDSCTL_ETCD_PASSWORD": self.operator[1]}
                if self.operator
                else {}
            ),
        }

    async def hidsctl(self, *args: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run hidsctl; returns (exit code, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            PY, "-m", "hidsd.ctl.main", *args, env=self.ctl_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def hidsctl_json(self, *args: str) -> tuple[int, Any]:
        """Run hidsctl with --json. Errors without JSON come back as {"stderr": ...}."""
        code, out, err = await self.hidsctl(*args, "--json")
        if not out.strip() and code != 0:
            return code, {"stderr": err}
        try:
            return code, json.loads(out)
        except json.JSONDecodeError as exc:
            msg = f"hidsctl {args} gave no JSON (code {code}): {out}\n{err}"
            raise AssertionError(msg) from exc

    async def wait_controller(self, timeout: float = 20.0) -> None:
        """Until a controller answers (it starts slower than the test goes on)."""
        deadline = time.monotonic() + timeout
        while True:
            code, res = await self.hidsctl_json("agents", "list")
            if code == 0:
                return
            assert time.monotonic() < deadline, f"no controller answered: {res}"
            await asyncio.sleep(0.2)

    async def wait_online(self, *hosts: str, timeout: float = 20.0) -> None:
        """Until a controller reports all `hosts` online."""
        deadline = time.monotonic() + timeout
        while True:
            code, res = await self.hidsctl_json("agents", "list")
            if code == 0:
                online = {a["host"] for a in res["agents"] if a["liveness"] == "online"}
                if set(hosts) <= online:
                    return
            assert time.monotonic() < deadline, f"agents {hosts} not online: {res}"
            await asyncio.sleep(0.2)

    async def observer(self) -> Observer:
        return await Observer(self.subjects).start(self.nats.url)

    async def agents(self) -> dict[str, dict[str, Any]]:
        code, res = await self.hidsctl_json("agents", "list")
        assert code == 0, res
        return {a["host"]: a for a in res["agents"]}

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A real small filesystem at `path` (root only: the caller skips otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def remount(path: Path, mode: str) -> None:
    """`mount -o remount,ro|rw` of a tmpfs made by `tmpfs`."""
    r = subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], capture_output=True,
                       check=False)  # fmt: skip
    if r.returncode != 0:
        raise AssertionError(f"remount,{mode} {path}: {r.stderr.decode().strip()}")


def fill(path: Path) -> Path:
    """Fill the filesystem of `path` to the last byte; returns the filler file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (64 << 10, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def can_mount() -> str:
    """'' if this process can mount a tmpfs, else why not (the reason a test skips with)."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    return ""
