"""Ed25519 command signing (R6): operators sign body bytes, agents verify against local keys.

Agents trust only the public keys in their bootstrap settings; the bus and the store are not
trusted to say who may stop the fleet.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from hidsd.base.errors import CommandRejected, OperatorKeyError, ProtocolError
from hidsd.wire.commands import (
    Command,
    Envelope,
    Unsigned,
    decode_command_body,
    decode_envelope,
    encode_command_body,
    encode_envelope,
)

_SEED_HEADER = "hidsd-operator-ed25519-seed:"


class RejectReason:
    """Why a command was refused. Strings, so they are stable keys in heartbeats and JSON."""

    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    #: issued further in the future than the clock tolerance (the agent's clock is behind)
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    WRONG_TARGET = "wrong_target"
    STALE_REVISION = "stale_revision"

    ALL = (
        MALFORMED,
        OVERSIZED,
        UNSIGNED,
        BAD_SIGNATURE,
        UNKNOWN_KEY,
        EXPIRED,
        NOT_YET_VALID,
        REPLAYED,
        WRONG_TARGET,
        STALE_REVISION,
    )


def key_id_for(public_key: bytes) -> str:
    """A short, stable fingerprint of a public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def encode_public_key(public_key: bytes) -> str:
    return base64.b64encode(public_key).decode("ascii")


@dataclass(frozen=True, slots=True)
class OperatorKey:
    """An operator's signing key."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> OperatorKey:
        return cls(nacl.signing.SigningKey.generate())

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_key)

    def sign(self, body: bytes) -> Envelope:
        sig = self.signing_key.sign(body).signature
        return Envelope(body=body, key_id=self.key_id, sig=bytes(sig))

    def sign_command(self, cmd: Command) -> bytes:
        return encode_envelope(self.sign(encode_command_body(cmd)))

    def save(self, path: Path) -> None:
        """Write the private seed with mode 0600; refuses to overwrite an existing key."""
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = base64.b64encode(bytes(self.signing_key)).decode("ascii")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{_SEED_HEADER}{seed}\n")

    @classmethod
    def load(cls, path: Path) -> OperatorKey:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as exc:
            raise OperatorKeyError(
                f"{path} is not an hidsd operator key (binary content); point --key at the "
                "file `hidsctl keys init` wrote, or create one with `hidsctl keys init`",
                path=str(path),
            ) from exc
        except OSError as exc:
            raise OperatorKeyError(
                f"cannot read operator key {path}: {exc.strerror}; create one with "
                "`hidsctl keys init`",
                path=str(path),
            ) from exc
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise OperatorKeyError(
                f"operator key {path} is readable by others; run `chmod 600 {path}`",
                path=str(path),
            )
        if not text.startswith(_SEED_HEADER):
            raise OperatorKeyError(
                f"{path} is not an hidsd operator key; point --key at the file "
                "`hidsctl keys init` wrote, or create one with `hidsctl keys init`",
                path=str(path),
            )
        try:
            seed = base64.b64decode(text[len(_SEED_HEADER) :], validate=True)
            return cls(nacl.signing.SigningKey(seed))
        except (ValueError, nacl.exceptions.CryptoError) as exc:
            raise OperatorKeyError(
                f"{path}: corrupt key seed; restore it from backup, or create a new key with "
                "`hidsctl keys init --force` and update every agent's trusted_keys",
                path=str(path),
            ) from exc


class TrustStore:
    """The public keys an agent accepts commands from, by key id."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = {kid: nacl.signing.VerifyKey(pk) for kid, pk in keys.items()}

    @classmethod
    def from_b64(cls, keys: list[str]) -> TrustStore:
        """Keys as base64 public keys; the key id is derived, so it cannot be mislabelled."""
        raw: dict[str, bytes] = {}
        for text in keys:
            try:
                pk = base64.b64decode(text, validate=True)
            except ValueError as exc:
                raise OperatorKeyError("trusted key is not base64", key=text) from exc
            if len(pk) != 32:
                raise OperatorKeyError("trusted key is not a 32-byte Ed25519 key", key=text)
            raw[key_id_for(pk)] = pk
        return cls(raw)

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, data: bytes, max_bytes: int) -> Command:
        """Check size, envelope, key and signature, then decode the body.

        Raises CommandRejected with a RejectReason; never anything else for bad input.
        """
        if len(data) > max_bytes:
            raise CommandRejected(
                RejectReason.OVERSIZED, f"command of {len(data)} bytes exceeds {max_bytes}"
            )
        try:
            env = decode_envelope(data, max_bytes)
        except ProtocolError as exc:
            reason = RejectReason.UNSIGNED if isinstance(exc, Unsigned) else RejectReason.MALFORMED
            raise CommandRejected(reason, exc.message) from exc
        verify_key = self._keys.get(env.key_id)
        if verify_key is None:
            raise CommandRejected(
                RejectReason.UNKNOWN_KEY, "command signed by an untrusted key", key_id=env.key_id
            )
        try:
            verify_key.verify(env.body, env.sig)
        except (nacl.exceptions.BadSignatureError, ValueError) as exc:
            raise CommandRejected(
                RejectReason.BAD_SIGNATURE, "signature does not match", key_id=env.key_id
            ) from exc
        try:
            return decode_command_body(env.body)
        except ProtocolError as exc:
            raise CommandRejected(RejectReason.MALFORMED, exc.message) from exc
