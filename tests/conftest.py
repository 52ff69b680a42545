"""Fixtures: real nats-server and etcd on free loopback ports, from the venv's binaries.

`stack` shares one server pair across tests (isolated by a per-test prefix); `private_stack`
gives a test servers of its own, for fault tests that stop or restart them.
"""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import Stack

from hidsd.dev.devstack import EtcdCluster, NatsServer, bootstrap_auth
from hidsd.wire.signing import OperatorKey

ROOT_PASSWORD = "root-test-password"


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.fixture(scope="session")
def operator_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[OperatorKey, Path]:
    key = OperatorKey.generate()
    path = tmp_path_factory.mktemp("keys") / "operator.key"
    key.save(path)
    return key, path


@pytest.fixture(scope="session")
def shared_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NatsServer, EtcdCluster]]:
    _raise_nofile()
    work = tmp_path_factory.mktemp("shared-stack")
    n = NatsServer(work).start()
    try:
        e = EtcdCluster(work).start()
    except BaseException:
        n.stop()
        raise
    try:
        import asyncio

        asyncio.run(bootstrap_auth(e.endpoints, ROOT_PASSWORD, "/hidsd/"))
        yield n, e
    finally:
        e.stop()
        n.stop()


@pytest.fixture
async def stack(
    shared_servers: tuple[NatsServer, EtcdCluster],
    operator_key: tuple[OperatorKey, Path],
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    n, e = shared_servers
    s = Stack(nats=n, etcd=e, workdir=tmp_path, key=operator_key[0], key_path=operator_key[1],
              root_password=ROOT_PASSWORD)  # fmt: skip
    await s.setup_auth()
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture
async def private_stack(
    operator_key: tuple[OperatorKey, Path], tmp_path: Path
) -> AsyncIterator[Stack]:
    n = NatsServer(tmp_path / "nats").start()
    e = EtcdCluster(tmp_path / "etcd").start()
    await bootstrap_auth(e.endpoints, ROOT_PASSWORD, "/hidsd/")
    s = Stack(nats=n, etcd=e, workdir=tmp_path, key=operator_key[0], key_path=operator_key[1],
              root_password=ROOT_PASSWORD)  # fmt: skip
    await s.setup_auth()
    try:
        yield s
    finally:
        s.stop_all()
        e.stop()
        n.stop()
