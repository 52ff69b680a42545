"""Agent lifecycle against real servers: failover across NATS servers, bounded shutdown, and a
second signal that forces the exit."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from support import Stack, wait_for

from hidsd.dev.devstack import EtcdCluster, NatsServer, free_port
from hidsd.wire.signing import OperatorKey


def _clients(n: NatsServer) -> set[str]:
    conns = n.connz().get("connections") or []
    return {str(c.get("name", "")) for c in conns}  # type: ignore[union-attr]


async def test_agent_fails_over_to_another_nats_server(
    operator_key: tuple[OperatorKey, Path], tmp_path: Path
) -> None:
    p1, p2 = free_port(), free_port()
    n1 = NatsServer(tmp_path, name="n1", cluster_port=p1, routes=[p2], jetstream=False).start()
    n2 = NatsServer(tmp_path, name="n2", cluster_port=p2, routes=[p1], jetstream=False).start()
    e = EtcdCluster(tmp_path / "etcd").start()
    s = Stack(nats=n1, etcd=e, workdir=tmp_path, key=operator_key[0], key_path=operator_key[1])
    try:
        agent = await s.start_agent("fo-1", ["web"], nats_servers=[n1.url, n2.url])
        await wait_for(lambda: "hidsd:fo-1" in _clients(n1) | _clients(n2), 20, "agent connected")
        on, other = (n1, n2) if "hidsd:fo-1" in _clients(n1) else (n2, n1)
        on.stop()  # the agent's server dies
        s.nats = other
        await wait_for(lambda: "hidsd:fo-1" in _clients(other), 20, "agent failed over")
        s.start_controller()
        await s.wait_online("fo-1")
        code, res = await s.hidsctl_json("fleet", "stop")
        assert code == 0, res
        assert res["acked_hosts"] == ["fo-1"]
        assert "nats_reconnected" in agent.output()
    finally:
        s.stop_all()
        e.stop()
        n1.stop()
        n2.stop()


async def test_shutdown_is_bounded_and_second_signal_forces(private_stack: Stack) -> None:
    s = private_stack
    obs = await s.observer()
    a = await s.start_agent("life-1", ["web"], shutdown_timeout_s=3.0)
    b = await s.start_agent("life-2", ["web"], shutdown_timeout_s=3.0)
    await wait_for(lambda: len(obs.heartbeats) == 2, 20, "agents up")
    await obs.close()
    s.nats.pause()  # the bye heartbeat can be written but never flushed
    # a PONG the server sent just before the pause must not satisfy the bye's flush
    await asyncio.sleep(0.5)
    try:
        # One signal: graceful part times out at the deadline, then a clean exit.
        a.signal(signal.SIGTERM)
        assert await asyncio.to_thread(a.popen.wait, 15) == 0
        assert "bye_timed_out" in a.output()
        # Two signals: the second one cuts the graceful part short.
        b.signal(signal.SIGINT)
        await asyncio.sleep(0.5)
        b.signal(signal.SIGINT)
        assert await asyncio.to_thread(b.popen.wait, 15) == 130
        assert "forced_exit" in b.output()
        assert "bye_timed_out" not in b.output()
    finally:
        s.nats.resume()
