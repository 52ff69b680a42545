"""The JWTs hidsd mints, against a real nats-server in operator mode: a user issued by a scoped
signing key gets exactly its template's subjects with `{{name()}}` expanded to its own name;
a user from an unknown key, or a JWT altered after signing, does not get in.

This is the ground the per-agent identities of issue 13 stand on (docs/SECURITY-DESIGN.md)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from hidsd.dev.devstack import NatsServer
from hidsd.wire.natsjwt import (
    AccountSpec,
    Permissions,
    ScopedKey,
    account_jwt,
    operator_jwt,
    user_jwt,
)
from hidsd.wire.nkeys import KeyKind, KeyPair


@dataclass
class Authority:
    op: KeyPair = field(default_factory=lambda: KeyPair.generate(KeyKind.OPERATOR))
    sys: KeyPair = field(default_factory=lambda: KeyPair.generate(KeyKind.ACCOUNT))
    acc: KeyPair = field(default_factory=lambda: KeyPair.generate(KeyKind.ACCOUNT))
    agent_sk: KeyPair = field(default_factory=lambda: KeyPair.generate(KeyKind.ACCOUNT))

    def preload(self) -> dict[str, str]:
        template = Permissions(pub_allow=("hb.{{name()}}",),
                               sub_allow=("cmd.{{name()}}", "_INBOX.>"))  # fmt: skip
        return {
            self.sys.public: account_jwt(self.op, AccountSpec("SYS", self.sys.public)),
            self.acc.public: account_jwt(
                self.op, AccountSpec("HIDS", self.acc.public, False,
                                     (ScopedKey(self.agent_sk.public, "agent", template),))),
        }  # fmt: skip

    def agent(self, name: str, issuer: KeyPair | None = None) -> tuple[str, KeyPair]:
        user = KeyPair.generate(KeyKind.USER)
        return user_jwt(issuer or self.agent_sk, self.acc.public, user.public, name), user

    def observer(self) -> tuple[str, KeyPair]:
        user = KeyPair.generate(KeyKind.USER)
        perms = Permissions(pub_allow=(">",), sub_allow=(">",))
        return user_jwt(self.acc, self.acc.public, user.public, "observer",
                        permissions=perms), user  # fmt: skip


@dataclass
class OperatorModeNats(NatsServer):
    authority: Authority = field(default_factory=Authority)

    def config_text(self) -> str:
        a = self.authority
        preload = "\n".join(f"  {k}: {v}" for k, v in a.preload().items())
        return "\n".join([
            f'server_name: "jwt-{self.port}"', f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            f"operator: {operator_jwt(a.op, 'hidsd-test', a.sys.public)}",
            f"system_account: {a.sys.public}", "resolver: MEMORY",
            "resolver_preload: {", preload, "}",
        ]) + "\n"  # fmt: skip


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[OperatorModeNats]:
    s = OperatorModeNats(tmp_path, jetstream=False)
    await asyncio.to_thread(s.start)
    try:
        yield s
    finally:
        s.stop()


async def connect(url: str, token: str, key: KeyPair, errors: list[str] | None = None) -> Client:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))

    def sign(nonce: str) -> bytes:
        return base64.b64encode(key.sign(nonce.encode()))

    nc = Client()
    try:
        await nc.connect(url, user_jwt_cb=token.encode, signature_cb=sign, error_cb=on_error,
                         allow_reconnect=False, connect_timeout=3)  # fmt: skip
    except BaseException:
        with contextlib.suppress(Exception):  # a refused connect leaves its transport open
            await nc.close()
        raise
    return nc


async def _until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def test_a_scoped_user_gets_its_template_with_its_own_name(server: OperatorModeNats) -> None:
    seen: list[str] = []
    obs = await connect(server.url, *server.authority.observer())

    async def on_hb(msg: Msg) -> None:
        seen.append(msg.subject)

    await obs.subscribe("hb.>", cb=on_hb)
    await obs.flush()
    errors: list[str] = []
    web = await connect(server.url, *server.authority.agent("web-1"), errors=errors)
    try:
        await web.publish("hb.web-1", b"mine")
        await web.publish("hb.db-1", b"forged")  # another host's subject
        await web.flush()
        await _until(lambda: bool(errors) and bool(seen))
        await asyncio.sleep(0.2)
        assert seen == ["hb.web-1"]
        assert any("permissions violation" in e.lower() and "hb.db-1" in e for e in errors)
        # subscribing to another host's commands is refused by the server too
        await web.subscribe("cmd.db-1")
        await web.flush()
        await _until(lambda: any("cmd.db-1" in e for e in errors))
    finally:
        await web.close()
        await obs.close()


async def test_a_user_from_an_unknown_signing_key_is_refused(server: OperatorModeNats) -> None:
    rogue = KeyPair.generate(KeyKind.ACCOUNT)
    with pytest.raises((nats.errors.Error, OSError)):
        await connect(server.url, *server.authority.agent("web-1", issuer=rogue))


async def test_a_jwt_altered_after_signing_is_refused(server: OperatorModeNats) -> None:
    token, key = server.authority.agent("web-1")
    head, payload, sig = token.split(".")
    claims = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    altered = base64.urlsafe_b64encode(claims.replace(b'"web-1"', b'"db-01"')).rstrip(b"=")
    with pytest.raises((nats.errors.Error, OSError)):
        await connect(server.url, f"{head}.{altered.decode()}.{sig}", key)


async def test_a_stolen_jwt_without_its_seed_is_refused(server: OperatorModeNats) -> None:
    token, _key = server.authority.agent("web-1")
    with pytest.raises((nats.errors.Error, OSError)):
        await connect(server.url, token, KeyPair.generate(KeyKind.USER))
