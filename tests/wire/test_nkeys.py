"""hidsd.wire.nkeys and natsjwt: NATS keys and JWTs minted here, checked for tampering."""

from __future__ import annotations

import base64
import json

import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire.natsjwt import (
    AccountSpec,
    Permissions,
    ScopedKey,
    account_jwt,
    decode_jwt,
    encode_jwt,
    operator_jwt,
    user_jwt,
)
from hidsd.wire.nkeys import (
    KeyKind,
    KeyPair,
    crc16,
    decode_public,
    decode_seed,
    encode_public,
    encode_seed,
    verify,
)


def test_crc16_is_xmodem() -> None:
    assert crc16(b"123456789") == 0x31C3  # the CRC-16/XMODEM check value
    assert crc16(b"") == 0


@pytest.mark.parametrize("kind", list(KeyKind))
def test_keys_round_trip_with_their_kind_letter(kind: KeyKind) -> None:
    kp = KeyPair.generate(kind)
    pub, seed = kp.public, kp.seed_text
    assert len(pub) == 56 and pub[0] == {"OPERATOR": "O", "ACCOUNT": "A", "USER": "U",
                                         "SERVER": "N"}[kind.name]  # fmt: skip
    assert len(seed) == 58 and seed[0] == "S" and seed[1] == pub[0]
    assert decode_public(pub, kind)[0] is kind
    assert decode_seed(seed) == (kind, kp.seed)
    assert KeyPair.from_seed(seed).public == pub
    assert kp.seed_text not in repr(kp)


def test_a_changed_character_fails_the_checksum() -> None:
    pub = KeyPair.generate(KeyKind.USER).public
    flipped = pub[:10] + ("B" if pub[10] != "B" else "C") + pub[11:]
    with pytest.raises(ProtocolError, match="checksum mismatch"):
        decode_public(flipped)


@pytest.mark.parametrize("text", ["", "not base32!", "U" * 56, 7])
def test_garbage_is_refused(text: object) -> None:
    with pytest.raises(ProtocolError):
        decode_public(text)  # type: ignore[arg-type]


def test_a_key_of_the_wrong_kind_is_refused() -> None:
    account = KeyPair.generate(KeyKind.ACCOUNT).public
    with pytest.raises(ProtocolError, match="account key where a user key belongs"):
        decode_public(account, KeyKind.USER)
    with pytest.raises(ProtocolError, match="not a seed"):
        decode_seed(encode_public(KeyKind.USER, bytes(32)))
    assert decode_seed(encode_seed(KeyKind.USER, bytes(32)))[0] is KeyKind.USER


def test_signatures_verify_only_for_their_key_and_data() -> None:
    a, b = KeyPair.generate(KeyKind.USER), KeyPair.generate(KeyKind.USER)
    sig = a.sign(b"nonce")
    assert verify(a.public, b"nonce", sig)
    assert not verify(b.public, b"nonce", sig)
    assert not verify(a.public, b"nonce2", sig)
    assert not verify(a.public, b"nonce", sig[:10])


def _claims(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    out: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return out


def test_a_chain_operator_account_scoped_user() -> None:
    op, sys_acc = KeyPair.generate(KeyKind.OPERATOR), KeyPair.generate(KeyKind.ACCOUNT)
    acc, sk = KeyPair.generate(KeyKind.ACCOUNT), KeyPair.generate(KeyKind.ACCOUNT)
    user = KeyPair.generate(KeyKind.USER)
    op_jwt = operator_jwt(op, "fleet", sys_acc.public)
    scope = ScopedKey(sk.public, "agent", Permissions(pub_allow=("hb.{{name()}}",)))
    acc_jwt = account_jwt(op, AccountSpec("HIDS", acc.public, True, (scope,)))
    u_jwt = user_jwt(sk, acc.public, user.public, "web-1", tags=("group:web",))
    assert decode_jwt(op_jwt)["sub"] == op.public
    acc_claims = decode_jwt(acc_jwt)
    assert acc_claims["iss"] == op.public and acc_claims["sub"] == acc.public
    nats = acc_claims["nats"]
    assert isinstance(nats, dict) and nats["signing_keys"][0]["template"]["pub"] == {
        "allow": ["hb.{{name()}}"]
    }
    u = decode_jwt(u_jwt)
    assert u["iss"] == sk.public and u["sub"] == user.public and u["name"] == "web-1"
    assert u["nats"] == {"type": "user", "version": 2, "issuer_account": acc.public,
                         "tags": ["group:web"]}  # fmt: skip
    assert isinstance(u["jti"], str) and len(u["jti"]) == 52


def test_a_tampered_or_foreign_jwt_is_refused() -> None:
    acc, user = KeyPair.generate(KeyKind.ACCOUNT), KeyPair.generate(KeyKind.USER)
    token = user_jwt(acc, acc.public, user.public, "web-1")
    head, _payload, sig = token.split(".")
    claims = _claims(token)
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "name": "db-1"}).encode())
    with pytest.raises(ProtocolError, match="signature is not the issuer's"):
        decode_jwt(f"{head}.{forged.decode().rstrip('=')}.{sig}")
    with pytest.raises(ProtocolError, match="three dot-separated parts"):
        decode_jwt("a.b")
    with pytest.raises(ProtocolError):
        decode_jwt(f"{head}.%%%.{sig}")
    other = KeyPair.generate(KeyKind.ACCOUNT)
    with pytest.raises(ValueError, match="iss must be the signing key"):
        encode_jwt({"iss": acc.public, "sub": user.public}, other)
