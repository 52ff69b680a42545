"""A local stack for one benchmark run: nats-server (JetStream on) and one etcd member in a
temp dir, the coordinator's NATS connection, and a teardown that runs every step even when
one fails (a Ctrl-C reaches the whole process group, so servers may already be gone)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from hidsd.bus.transport import Bus, BusOptions
from hidsd.dev.devstack import EtcdCluster, NatsServer

from .report import warn


@dataclass
class Stack:
    workdir: Path
    nats: NatsServer
    etcd: EtcdCluster
    bus: Bus

    @property
    def nats_url(self) -> str:
        return self.nats.url

    @property
    def etcd_endpoints(self) -> tuple[str, ...]:
        return tuple(self.etcd.endpoints)


@contextlib.asynccontextmanager
async def local_stack(name: str, keep: bool = False, quiet: bool = False) -> AsyncIterator[Stack]:
    """Start the servers, connect, yield; tear down in order. SIGTERM stops it like Ctrl-C."""
    workdir = Path(tempfile.mkdtemp(prefix=f"hidsd-{name}-"))
    nats_srv = NatsServer(workdir / "stack")
    etcd = EtcdCluster(workdir / "stack")
    bus = Bus(BusOptions(servers=("nats://127.0.0.1:1",), name=f"bench-{name}"))
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        t0 = time.perf_counter()
        nats_srv.start()
        etcd.start()
        bus = Bus(BusOptions(servers=(nats_srv.url,), name=f"bench-{name}"))
        await bus.connect(attempts=3)
        if not quiet:
            print(f"stack up in {time.perf_counter() - t0:.1f}s: {nats_srv.url}, "
                  f"etcd {etcd.endpoints[0]}; workdir {workdir}", flush=True)  # fmt: skip
        yield Stack(workdir, nats_srv, etcd, bus)
    finally:
        if bus.connected:
            try:
                await bus.close(timeout=2.0)
            except Exception as exc:  # nats-py raises RuntimeError if the server is gone
                warn(f"closing the coordinator's NATS connection: {exc!r}")
        for server in (nats_srv, etcd):
            try:
                server.stop()
            except Exception as exc:
                warn(f"stopping {type(server).__name__}: {exc!r}")
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
