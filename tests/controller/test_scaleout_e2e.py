"""Several controllers sharing the work, and fleet queries, end to end (R5, R13).

Real agents report their package sets through the inventory plugin (from dpkg databases the
tests write); two or three controllers split heartbeats, acks and query shares; one is
SIGKILLed in the middle of a kill switch or a query, and the answers stay complete.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from support import Proc, Stack

from hidsd.wire.names import Subjects

VULN = "vers:deb/<1.1.1n-0+deb11u5"
OTHERS = [("bash", "5.1-2+deb11u1"), ("libc6", "2.31-13+deb11u11"), ("zlib1g", "1:1.2.11.dfsg-2")]


def dpkg_status(openssl: str | None, libssl: str | None = None) -> str:
    pkgs = list(OTHERS) + ([("openssl", openssl)] if openssl else [])
    text = "\n".join(
        f"Package: {name}\nStatus: install ok installed\nArchitecture: amd64\n"
        f"Version: {version}\nDescription: {name}\n"
        for name, version in pkgs
    )
    if libssl:  # the library alone: advisories name its source package, openssl
        text += (f"\nPackage: libssl1.1\nStatus: install ok installed\nArchitecture: amd64\n"
                 f"Source: openssl\nVersion: {libssl}\n")  # fmt: skip
    return text


def inventory_config(
    stack: Stack, host: str, openssl: str | None, libssl: str | None = None
) -> str:
    status = stack.workdir / f"dpkg-{host}"
    status.write_text(dpkg_status(openssl, libssl))
    osr = stack.workdir / "os-release"
    osr.write_text('ID=debian\nVERSION_ID="11"\n')
    return (
        f"[plugins.inventory]\nenabled = true\n"
        f"params = {{ dpkg_status = {json.dumps(str(status))}, ports = false, "
        f'rpm_binary = "no-such-rpm", apk_installed = "/nonexistent", '
        f"os_release = {json.dumps(str(osr))} }}\n"
    )


async def set_host_config(stack: Stack, host: str, text: str) -> None:
    f = stack.workdir / f"{host}.toml"
    f.write_text(text)
    code, res = await stack.hidsctl_json("config", "set", str(f), "--scope", f"host:{host}",
                                         "-m", "inventory")  # fmt: skip
    assert code == 0, res


async def controllers_see(stack: Stack, n: int) -> None:
    """Until the controllers know each other (their sync batches are their announcements)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        res = await ping(stack)
        if res is not None and len(res["members"]) == n:
            return
        assert asyncio.get_running_loop().time() < deadline, f"members: {res}"
        await asyncio.sleep(0.2)


async def ping(stack: Stack) -> dict[str, Any] | None:
    """The controllers' own view (hidsctl has no command for it: ask like hidsctl does)."""
    import nats

    from hidsd.wire.rpc import decode_reply, encode_request

    nc = await nats.connect(stack.nats.url)
    try:
        msg = await nc.request(Subjects(stack.prefix).ctl("ping"), encode_request({}), timeout=2)
        result: dict[str, Any] = decode_reply(msg.data)
        return result
    except Exception:
        return None
    finally:
        await nc.close()


async def inventories(stack: Stack, n: int) -> None:
    async def count() -> int:
        res = await ping(stack)
        return 0 if res is None else int(res["inventory"]["hosts"])

    deadline = asyncio.get_running_loop().time() + 30
    while await count() < n:
        assert asyncio.get_running_loop().time() < deadline, "inventories never indexed"
        await asyncio.sleep(0.3)


def kill(proc: Proc) -> None:
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait()


async def test_query_accounts_for_every_host_with_two_controllers(stack: Stack) -> None:
    """Affected, clean, offline (answered from its last inventory, with its age), and a host
    without an inventory; by package range and by OSV advisory; split over two controllers."""
    stack.start_controller("c1")
    stack.start_controller("c2")
    await controllers_see(stack, 2)
    for host, version, lib in (("q-old", "1.1.1n-0+deb11u4", None),
                               ("q-new", "1.1.1n-0+deb11u5", None), ("q-none", None, None),
                               ("q-lib", None, "1.1.1n-0+deb11u3")):  # fmt: skip
        await stack.start_agent(host, ["web"])
        await set_host_config(stack, host, inventory_config(stack, host, version, lib))
    noinv = await stack.start_agent("q-noinv", ["web"])  # no inventory plugin: cannot answer
    await stack.wait_online("q-old", "q-new", "q-none", "q-lib", "q-noinv")
    await inventories(stack, 4)
    agents = {p.name: p for p in stack.procs}
    assert agents["agent-q-old"].stop() == 0  # offline: answered from its last inventory
    del noinv

    code, out, err = await stack.hidsctl("query", "package", "openssl", "--affected", VULN,
                                         "--json")  # fmt: skip
    assert code == 1, (out, err)  # incomplete: q-noinv has no inventory
    res = json.loads(out)
    assert [(r["host"], r["liveness"]) for r in res["matched"]] == [
        ("q-lib", "online"), ("q-old", "offline")]  # fmt: skip
    assert res["matched"][1]["packages"] == [{
        "ecosystem": "deb", "package": "openssl", "version": "1.1.1n-0+deb11u4",
        "range": VULN, "source": "cli"}]  # fmt: skip
    assert res["matched"][0]["packages"][0]["version"] == "1.1.1n-0+deb11u3"  # via its source
    assert res["matched"][1]["inventory_age_s"] >= 0
    assert sorted(r["host"] for r in res["clean"]) == ["q-new", "q-none"]
    assert [(r["host"], r["reason"]) for r in res["no_answer"]] == [
        ("q-noinv", "no inventory reported")]  # fmt: skip
    assert res["counts"] == {"hosts": 5, "answered": 4, "matched": 2, "clean": 2,
                             "offline_answered": 1, "no_answer": 1}  # fmt: skip
    assert sorted(sh["controller"] for sh in res["shards"]) == ["c1", "c2"]
    assert sum(sh["hosts"] for sh in res["shards"]) == 4

    # humans get a table; a typo in the range fails before anything is asked
    code, out, _ = await stack.hidsctl("query", "package", "openssl", "--affected", VULN)
    assert code == 1 and "q-old" in out and "1.1.1n-0+deb11u4" in out and "q-noinv" in out
    code, _, err = await stack.hidsctl("query", "package", "openssl", "--affected", "<1.0")
    assert code == 2 and "vers:" in err

    # an OSV advisory, with a package we cannot answer for (reported, not dropped)
    adv = {
        "id": "DSA-TEST-1", "summary": "openssl: a test advisory",
        "affected": [
            {"package": {"ecosystem": "Debian:11", "name": "openssl"},
             "ranges": [{"type": "ECOSYSTEM",
                         "events": [{"introduced": "0"}, {"fixed": "1.1.1n-0+deb11u5"}]}]},
            {"package": {"ecosystem": "PyPI", "name": "requests"},
             "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"},
                                                        {"fixed": "2.31.0"}]}]},
        ],
    }  # fmt: skip
    f = stack.workdir / "adv.json"
    f.write_text(json.dumps(adv))
    code, out, err = await stack.hidsctl("query", "advisory", str(f), "--json")
    assert code == 1, err
    res = json.loads(out)
    assert [r["host"] for r in res["matched"]] == ["q-lib", "q-old"]
    assert res["advisory"]["id"] == "DSA-TEST-1" and "requests" in " ".join(res["unsupported"])
    assert "cannot answer" in err
    bad = stack.workdir / "bad.json"
    bad.write_text('{"id": "X", "affected": [{"package": 3}]}')
    code, _, err = await stack.hidsctl("query", "advisory", str(bad))
    assert code == 9 and "affected[0]" in err


async def test_controller_killed_during_a_query_answers_stay_complete(stack: Stack) -> None:
    """Three controllers, each share held in flight for a moment; SIGKILL one during a
    query, then another during the next: every answer is complete (shares redone, or the
    request retried when the coordinator itself died)."""
    env = {"HIDSD_CONTROLLER_TEST_SHARE_DELAY_S": "1.0"}
    ctl = [stack.start_controller(f"k{i}", env) for i in (1, 2, 3)]
    await controllers_see(stack, 3)
    hosts = [f"kq-{i}" for i in range(4)]
    for i, host in enumerate(hosts):
        await stack.start_agent(host, [])
        await set_host_config(stack, host, inventory_config(
            stack, host, "1.1.1n-0+deb11u4" if i % 2 == 0 else "1.1.1n-0+deb11u5"))  # fmt: skip
    await stack.wait_online(*hosts)
    await inventories(stack, len(hosts))

    for victim in (ctl[1], ctl[0]):
        args = ("query", "package", "openssl", "--affected", VULN, "--json", "--timeout", "6")
        query = asyncio.ensure_future(stack.hidsctl(*args))
        await asyncio.sleep(0.5)
        kill(victim)
        code, out, err = await query
        assert code == 10, (out, err)  # complete, affected hosts found
        res = json.loads(out)
        assert sorted(r["host"] for r in res["matched"]) == ["kq-0", "kq-2"]
        assert sorted(r["host"] for r in res["clean"]) == ["kq-1", "kq-3"]
        assert res["complete"] and res["counts"]["no_answer"] == 0
    assert ctl[2].popen.poll() is None


async def test_controller_killed_during_a_kill_switch_loses_no_ack_or_presence(
    stack: Stack,
) -> None:
    """Three controllers split heartbeats and acks and forward copies: SIGKILL one while a
    fleet stop is in flight; the stop is complete, and the survivors have every ack and every
    agent's presence (from forwarded heartbeats, before the agents' next ones)."""
    ctl = [stack.start_controller(f"s{i}") for i in (1, 2, 3)]
    await controllers_see(stack, 3)
    hosts = [f"ks-{i}" for i in range(6)]
    for host in hosts:
        await stack.start_agent(host, [], heartbeat_s=4.0)
    await stack.wait_online(*hosts)
    await asyncio.sleep(4.5)  # every agent heartbeated since all controllers were members

    stop = asyncio.ensure_future(stack.hidsctl_json("fleet", "stop", "--wait", "10"))
    await asyncio.sleep(0.05)
    kill(ctl[0])
    code, res = await stop
    assert code == 0, res
    assert res["acked"] == len(hosts) and res["complete"]

    # presence right away from the two survivors (no new heartbeat needed: they had copies)
    for _ in range(4):
        code, agents = await stack.hidsctl_json("agents", "list")
        assert code == 0
        online = {a["host"] for a in agents["agents"] if a["liveness"] == "online"}
        assert online >= set(hosts), agents
    # every ack, whichever controller received it
    await asyncio.sleep(0.5)  # the forwarded batch (0.25 s) from the receiving controller
    import nats

    from hidsd.wire.rpc import decode_reply, encode_request

    nc = await nats.connect(stack.nats.url)
    try:
        for _ in range(4):  # several requests: the queue group spreads them over both
            subject = Subjects(stack.prefix).ctl("acks")
            msg = await nc.request(subject, encode_request({"cmd_id": res["cmd_id"]}), timeout=2)
            acks = decode_reply(msg.data)
            assert sorted(acks) == hosts, acks
    finally:
        await nc.close()
    assert all(p.popen.poll() is None for p in ctl[1:])
    # the survivors divided the work: both received heartbeats themselves
    for _ in range(50):  # until the dead one drops out of the membership (3.5 s)
        code, res = await stack.hidsctl_json("controllers", "list")
        assert code == 0, res
        if len(res["controllers"]) == 2:
            break
        assert [c["name"] for c in res["controllers"] if c.get("error")] == ["s1"], res
        await asyncio.sleep(0.2)
    assert sorted(c["name"] for c in res["controllers"]) == ["s2", "s3"], res
    assert all(c["counters"].get("heartbeats", 0) > 0 for c in res["controllers"]), res
    assert all(c["counters"].get("heartbeats_forwarded_in", 0) > 0 for c in res["controllers"])
