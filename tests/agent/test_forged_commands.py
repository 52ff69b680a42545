"""Forged, replayed and garbage commands against a real agent process: each is rejected and
counted in the heartbeat, and the agent still obeys the next valid command."""

from __future__ import annotations

import random
import time

import msgpack
from support import Observer, Stack, wait_for

from hidsd.wire.commands import Command, CommandKind, Envelope, encode_command_body, encode_envelope
from hidsd.wire.names import Scope
from hidsd.wire.signing import OperatorKey

HOST = "forge-1"


def command(rev: int, **kw: object) -> Command:
    now = time.time()
    return Command(
        id=str(kw.get("id", f"f{time.monotonic_ns():x}")),
        kind=CommandKind.STOP,
        scope=kw.get("scope", Scope.HOST),  # type: ignore[arg-type]
        target=str(kw.get("target", HOST)),
        rev=rev,
        issued_at=float(kw.get("issued_at", now)),  # type: ignore[arg-type]
        expires_at=float(kw.get("expires_at", now + 60)),  # type: ignore[arg-type]
        args={},
    )


async def _counted(obs: Observer, reason: str, n: int) -> None:
    await wait_for(
        lambda: obs.heartbeats.get(HOST) and obs.heartbeats[HOST].rejections.get(reason) == n,
        10,
        f"heartbeat to count {n} x {reason}",
    )


async def test_every_forged_class_is_rejected_counted_and_agent_keeps_obeying(
    stack: Stack,
) -> None:
    stack.start_controller()
    agent = await stack.start_agent(HOST, ["web"])
    obs = await stack.observer()
    try:
        await wait_for(lambda: obs.mode(HOST) == "running", 20, "agent running")
        await stack.wait_online(HOST)
        code, first = await stack.hidsctl_json("fleet", "stop", "--host", HOST)
        assert code == 0, first
        await wait_for(lambda: obs.mode(HOST) == "stopped")
        subject = stack.subjects.cmd_host(HOST)
        key = stack.key
        # A resume that would undo the stop, in every forged form:
        valid_resume = Command(
            "resume-x", CommandKind.RESUME, Scope.HOST, HOST, first["rev"] + 1000,
            time.time(), time.time() + 60, {},
        )  # fmt: skip
        body = encode_command_body(valid_resume)

        # unsigned: a bare body, and an envelope with an empty signature
        await obs.publish(subject, msgpack.packb({"id": "x", "kind": "resume"}))
        await obs.publish(subject, encode_envelope(Envelope(body, key.key_id, b"")))
        await _counted(obs, "unsigned", 2)
        # bad signature: one bit flipped in the signature, and in the body
        good = key.sign(body)
        bad_sig = bytes([good.sig[0] ^ 1]) + good.sig[1:]
        await obs.publish(subject, encode_envelope(Envelope(body, good.key_id, bad_sig)))
        bad_body = body[:-1] + bytes([body[-1] ^ 1])
        await obs.publish(subject, encode_envelope(Envelope(bad_body, good.key_id, good.sig)))
        await _counted(obs, "bad_signature", 2)
        # unknown key: a well-formed command signed by a key the agent does not trust
        await obs.publish(subject, OperatorKey.generate().sign_command(valid_resume))
        await _counted(obs, "unknown_key", 1)
        # expired
        old = command(first["rev"] + 1, issued_at=time.time() - 120, expires_at=time.time() - 60)
        await obs.publish(subject, key.sign_command(old))
        await _counted(obs, "expired", 1)
        # wrong target: validly signed for another host, sent on this host's subject
        await obs.publish(subject, key.sign_command(command(first["rev"] + 1, target="other")))
        await _counted(obs, "wrong_target", 1)
        # older revision, then the same bytes again (replay)
        stale = key.sign_command(command(1, id="stale-1"))
        await obs.publish(subject, stale)
        await _counted(obs, "stale_revision", 1)
        await obs.publish(subject, stale)
        await _counted(obs, "replayed", 1)
        # malformed msgpack and an oversized payload
        await obs.publish(subject, b"\xc1\xff not msgpack")
        await _counted(obs, "malformed", 1)
        await obs.publish(subject, b"\x00" * 20_000)
        await _counted(obs, "oversized", 1)

        # Nothing above changed the agent: it is still stopped at the recorded revision ...
        hb = obs.heartbeats[HOST]
        assert hb.mode.value == "stopped" and hb.applied_rev == first["rev"]
        # ... the stale command was answered as superseded, forged ones not at all ...
        statuses = {(a.cmd_id, a.status.value) for a in obs.acks}
        assert ("stale-1", "superseded") in statuses
        assert not any(a.cmd_id == "resume-x" for a in obs.acks)
        # ... and it obeys the next valid command.
        code, res = await stack.hidsctl_json("fleet", "resume", "--host", HOST)
        assert code == 0 and res["acked_hosts"] == [HOST], res
        await wait_for(lambda: obs.mode(HOST) == "running")
        assert agent.popen.poll() is None
        assert '"event": "command_rejected"' in agent.output()
    finally:
        await obs.close()


async def test_garbage_on_every_subject_crashes_nothing(stack: Stack) -> None:
    controller = stack.start_controller()
    agent = await stack.start_agent(HOST, ["web"])
    obs = await stack.observer()
    try:
        await wait_for(lambda: obs.mode(HOST) == "running", 20, "agent running")
        await stack.wait_online(HOST)
        rng = random.Random(1234)
        s = stack.subjects
        subjects = [
            s.cmd_all(), s.cmd_group("web"), s.cmd_host(HOST),
            s.heartbeat(HOST), s.heartbeat("ghost"), s.ack("abc"), s.ctl("agents.list"),
            s.ctl("no.such.verb"),
        ]  # fmt: skip
        sent = 0
        for _ in range(40):
            for subj in subjects:
                blob = rng.randbytes(rng.randint(0, 300))
                await obs.nc.publish(subj, blob)
                sent += 1
        await obs.nc.flush()
        # A garbage request gets an error reply, not silence and not a crash.
        reply = await obs.nc.request(s.ctl("agents.list"), b"\x93\x01", timeout=2)
        assert msgpack.unpackb(reply.data)["ok"] is False

        await wait_for(
            lambda: (
                obs.heartbeats[HOST].rejections.get("malformed", 0)
                + obs.heartbeats[HOST].rejections.get("unsigned", 0)
                + obs.heartbeats[HOST].rejections.get("oversized", 0)
                >= 100
            ),
            10,
            "agent to count the garbage",
        )
        # Both processes are alive and working.
        code, res = await stack.hidsctl_json("fleet", "stop", "--host", HOST)
        assert code == 0 and res["acked_hosts"] == [HOST], res
        agents = await stack.agents()
        assert agents[HOST]["liveness"] == "online"
        assert agent.popen.poll() is None and controller.popen.poll() is None
        assert '"event": "bad_heartbeat"' in controller.output()
    finally:
        await obs.close()
