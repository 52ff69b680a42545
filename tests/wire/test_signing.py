"""hidsd.wire.signing: Ed25519 signing, the trust store's rejection reasons, operator key files."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path
from typing import Any

import msgpack
import pytest

from hidsd.base.errors import CommandRejected, OperatorKeyError
from hidsd.wire.commands import (
    MAX_COMMAND_BYTES,
    Command,
    CommandKind,
    Envelope,
    decode_envelope,
    encode_command_body,
    encode_envelope,
)
from hidsd.wire.names import Scope
from hidsd.wire.signing import (
    OperatorKey,
    RejectReason,
    TrustStore,
    encode_public_key,
    key_id_for,
)


def make_command(**overrides: Any) -> Command:
    values: dict[str, Any] = {
        "id": "cmd-1",
        "kind": CommandKind.STOP,
        "scope": Scope.FLEET,
        "target": "*",
        "rev": 3,
        "issued_at": 1000.0,
        "expires_at": 1060.0,
        "args": {"reason": "test"},
    }
    values.update(overrides)
    return Command(**values)


def trust_for(*keys: OperatorKey) -> TrustStore:
    return TrustStore.from_b64([encode_public_key(k.public_key) for k in keys])


@pytest.fixture(scope="module")
def key() -> OperatorKey:
    return OperatorKey.generate()


def rejected(trust: TrustStore, data: bytes, max_bytes: int = MAX_COMMAND_BYTES) -> str:
    with pytest.raises(CommandRejected) as ei:
        trust.verify(data, max_bytes)
    assert ei.value.fields["reason"] == ei.value.reason
    return ei.value.reason


# --------------------------------------------------------------------------- sign/verify


def test_sign_verify_round_trip(key: OperatorKey) -> None:
    cmd = make_command()
    assert trust_for(key).verify(key.sign_command(cmd), MAX_COMMAND_BYTES) == cmd


def test_trust_store_with_several_keys(key: OperatorKey) -> None:
    other = OperatorKey.generate()
    trust = trust_for(key, other)
    assert len(trust) == 2
    cmd = make_command(scope=Scope.HOST, target="web-1")
    assert trust.verify(other.sign_command(cmd), MAX_COMMAND_BYTES) == cmd
    assert trust.verify(key.sign_command(cmd), MAX_COMMAND_BYTES) == cmd


def test_sign_produces_envelope_with_key_id(key: OperatorKey) -> None:
    env = key.sign(b"payload")
    assert env.body == b"payload"
    assert env.key_id == key.key_id
    assert len(env.sig) == 64
    assert decode_envelope(key.sign_command(make_command())).key_id == key.key_id


def test_key_id_is_derived_from_public_key(key: OperatorKey) -> None:
    assert len(key.public_key) == 32
    assert key.key_id == hashlib.sha256(key.public_key).hexdigest()[:16]
    assert key_id_for(key.public_key) == key.key_id
    assert OperatorKey.generate().key_id != key.key_id


def test_encode_public_key_is_base64(key: OperatorKey) -> None:
    assert base64.b64decode(encode_public_key(key.public_key)) == key.public_key


def test_duplicate_trusted_keys_collapse(key: OperatorKey) -> None:
    assert len(trust_for(key, key)) == 1


# --------------------------------------------------------------------------- rejections


def test_reject_oversized(key: OperatorKey) -> None:
    data = key.sign_command(make_command(args={"pad": "x" * 300}))
    assert rejected(trust_for(key), data, max_bytes=len(data) - 1) == RejectReason.OVERSIZED
    assert trust_for(key).verify(data, len(data)).args["pad"] == "x" * 300


def test_reject_bare_body_as_unsigned(key: OperatorKey) -> None:
    body = encode_command_body(make_command())
    assert rejected(trust_for(key), body) == RejectReason.UNSIGNED


def test_reject_empty_signature_as_unsigned(key: OperatorKey) -> None:
    data = encode_envelope(Envelope(encode_command_body(make_command()), key.key_id, b""))
    assert rejected(trust_for(key), data) == RejectReason.UNSIGNED


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x93\x01\x02", msgpack.packb([b"b", "k"]), msgpack.packb("hello")],
)
def test_reject_malformed_envelope(key: OperatorKey, data: bytes) -> None:
    assert rejected(trust_for(key), data) == RejectReason.MALFORMED


def test_reject_unknown_key(key: OperatorKey) -> None:
    stranger = OperatorKey.generate()
    with pytest.raises(CommandRejected) as ei:
        trust_for(key).verify(stranger.sign_command(make_command()), MAX_COMMAND_BYTES)
    assert ei.value.reason == RejectReason.UNKNOWN_KEY
    assert ei.value.fields["key_id"] == stranger.key_id


def test_empty_trust_store_knows_no_key(key: OperatorKey) -> None:
    trust = TrustStore.from_b64([])
    assert len(trust) == 0
    assert rejected(trust, key.sign_command(make_command())) == RejectReason.UNKNOWN_KEY


def flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("index", [0, 10, -1])
def test_reject_flipped_body_byte(key: OperatorKey, index: int) -> None:
    env = key.sign(encode_command_body(make_command()))
    tampered = encode_envelope(Envelope(flip(env.body, index), env.key_id, env.sig))
    assert rejected(trust_for(key), tampered) == RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize("index", [0, 31, 63])
def test_reject_flipped_signature_byte(key: OperatorKey, index: int) -> None:
    env = key.sign(encode_command_body(make_command()))
    tampered = encode_envelope(Envelope(env.body, env.key_id, flip(env.sig, index)))
    assert rejected(trust_for(key), tampered) == RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize("sig", [b"x", b"s" * 63, b"s" * 65])
def test_reject_wrong_length_signature(key: OperatorKey, sig: bytes) -> None:
    data = encode_envelope(Envelope(encode_command_body(make_command()), key.key_id, sig))
    assert rejected(trust_for(key), data) == RejectReason.BAD_SIGNATURE


def test_reject_signature_by_other_key_claiming_trusted_id(key: OperatorKey) -> None:
    forger = OperatorKey.generate()
    env = forger.sign(encode_command_body(make_command()))
    forged = encode_envelope(Envelope(env.body, key.key_id, env.sig))
    assert rejected(trust_for(key), forged) == RejectReason.BAD_SIGNATURE


def test_reject_tampered_rev(key: OperatorKey) -> None:
    """Re-encoding the body with a different revision must not keep the signature valid."""
    env = key.sign(encode_command_body(make_command(rev=3)))
    body = encode_command_body(make_command(rev=4))
    assert rejected(trust_for(key), encode_envelope(Envelope(body, env.key_id, env.sig))) == (
        RejectReason.BAD_SIGNATURE
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not msgpack \xc1",
        msgpack.packb({"v": 1, "id": "c"}),
        msgpack.packb([1, 2, 3]),
        msgpack.packb(
            {
                "v": 1,
                "id": "c",
                "kind": "stop",
                "scope": "fleet",
                "target": "web",
                "rev": 1,
                "issued_at": 0.0,
                "expires_at": 1.0,
                "args": {},
            }
        ),
    ],
)
def test_reject_signed_but_invalid_body(key: OperatorKey, body: bytes) -> None:
    data = encode_envelope(key.sign(body))
    assert rejected(trust_for(key), data) == RejectReason.MALFORMED


def test_reject_reasons_are_distinct_strings() -> None:
    assert len(set(RejectReason.ALL)) == len(RejectReason.ALL)
    assert all(isinstance(r, str) and r for r in RejectReason.ALL)


# --------------------------------------------------------------------------- key files


def test_save_and_load(tmp_path: Path, key: OperatorKey) -> None:
    path = tmp_path / "sub" / "operator.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = OperatorKey.load(path)
    assert loaded.public_key == key.public_key
    assert loaded.key_id == key.key_id
    cmd = make_command()
    assert trust_for(key).verify(loaded.sign_command(cmd), MAX_COMMAND_BYTES) == cmd


def test_save_refuses_to_overwrite(tmp_path: Path, key: OperatorKey) -> None:
    path = tmp_path / "operator.key"
    key.save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        OperatorKey.generate().save(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601, 0o610])
def test_load_refuses_group_or_other_access(tmp_path: Path, key: OperatorKey, mode: int) -> None:
    path = tmp_path / "operator.key"
    key.save(path)
    path.chmod(mode)
    with pytest.raises(OperatorKeyError) as ei:
        OperatorKey.load(path)
    assert f"chmod 600 {path}" in ei.value.message
    assert ei.value.fields["path"] == str(path)


def test_load_accepts_owner_only_modes(tmp_path: Path, key: OperatorKey) -> None:
    path = tmp_path / "operator.key"
    key.save(path)
    for mode in (0o400, 0o600, 0o700):
        path.chmod(mode)
        assert OperatorKey.load(path).key_id == key.key_id


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(OperatorKeyError) as ei:
        OperatorKey.load(path)
    assert "hidsctl keys init" in ei.value.message
    assert ei.value.fields["path"] == str(path)


def write_key_file(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello\n",
        "hidsd-operator-ed25519-seed:\n",
        "hidsd-operator-ed25519-seed:not base64!\n",
        "hidsd-operator-ed25519-seed:" + base64.b64encode(b"short").decode() + "\n",
        "hidsd-operator-ed25519-seed:" + base64.b64encode(b"x" * 33).decode() + "\n",
        base64.b64encode(b"x" * 32).decode() + "\n",
    ],
)
def test_load_corrupt_file(tmp_path: Path, text: str) -> None:
    path = write_key_file(tmp_path / "operator.key", text)
    with pytest.raises(OperatorKeyError) as ei:
        OperatorKey.load(path)
    assert str(path) in ei.value.message
    assert ei.value.fields["path"] == str(path)


def test_load_binary_garbage(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "operator.key", b"\xff\xfe\x00garbage\x80")
    with pytest.raises(OperatorKeyError):
        OperatorKey.load(path)


@pytest.mark.parametrize("text", ["hello\n", "hidsd-operator-ed25519-seed:!!\n"])
def test_load_corrupt_file_says_what_to_do(tmp_path: Path, text: str) -> None:
    path = write_key_file(tmp_path / "operator.key", text)
    with pytest.raises(OperatorKeyError) as ei:
        OperatorKey.load(path)
    assert "hidsctl keys init" in ei.value.message


# --------------------------------------------------------------------------- trusted keys


@pytest.mark.parametrize("text", ["not base64!", "@@@@", "abc", "ünïcode=="])
def test_from_b64_rejects_non_base64(text: str) -> None:
    with pytest.raises(OperatorKeyError, match="not base64") as ei:
        TrustStore.from_b64([text])
    assert ei.value.fields["key"] == text


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_from_b64_rejects_wrong_length(size: int) -> None:
    text = base64.b64encode(b"k" * size).decode()
    with pytest.raises(OperatorKeyError, match="32-byte"):
        TrustStore.from_b64([text])


def test_from_b64_one_bad_key_spoils_the_list(key: OperatorKey) -> None:
    with pytest.raises(OperatorKeyError):
        TrustStore.from_b64([encode_public_key(key.public_key), "nope"])
