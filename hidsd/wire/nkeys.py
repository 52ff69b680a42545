"""NATS nkeys: Ed25519 keys as NATS writes them (a kind prefix, the key, a CRC-16, base32).

NATS's decentralized auth names every operator, account and user by its public nkey, and a
client proves who it is by signing the server's nonce with its seed. PyNaCl (already ours for
command signatures) does the Ed25519; this module is only the encoding, so no nkeys package is
needed. Layout (nats-io/nkeys): public = base32(prefix byte + 32-byte key + CRC-16/XMODEM
little-endian), 56 characters; seed = base32(two bytes carrying the seed marker and the kind
+ 32-byte seed + CRC), 58 characters.

Pure: no I/O, no state. Decoders take untrusted text and raise `ProtocolError`."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import IntEnum

import nacl.exceptions
import nacl.signing

from hidsd.base.errors import ProtocolError

#: the first byte of every seed carries this marker in its top five bits
_SEED = 18 << 3


class KeyKind(IntEnum):
    """What a key names; the value is its prefix byte (the first base32 letter)."""

    OPERATOR = 14 << 3  # "O"
    ACCOUNT = 0  # "A"
    USER = 20 << 3  # "U"
    SERVER = 13 << 3  # "N"


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), the checksum nkeys append."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _encode(body: bytes) -> str:
    return base64.b32encode(body + crc16(body).to_bytes(2, "little")).decode().rstrip("=")


def _decode(text: str, what: str) -> bytes:
    if not isinstance(text, str) or not text.isascii():
        raise ProtocolError(f"{what}: expected base32 text")
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{what}: not base32 ({exc})") from exc
    if len(raw) < 3 or crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise ProtocolError(f"{what}: checksum mismatch (a mistyped or altered key)")
    return raw[:-2]


def _kind(value: int, what: str) -> KeyKind:
    try:
        return KeyKind(value)
    except ValueError as exc:
        raise ProtocolError(f"{what}: unknown key kind {value}") from exc


def encode_public(kind: KeyKind, key: bytes) -> str:
    if len(key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return _encode(bytes([kind]) + key)


def decode_public(text: str, want: KeyKind | None = None) -> tuple[KeyKind, bytes]:
    """(kind, 32-byte key) of a public nkey; `want`: refuse any other kind."""
    raw = _decode(text, "public nkey")
    if len(raw) != 33:
        raise ProtocolError("public nkey: wrong length")
    kind = _kind(raw[0], "public nkey")
    if want is not None and kind is not want:
        raise ProtocolError(f"public nkey: {kind.name.lower()} key where a {want.name.lower()} "
                            "key belongs")  # fmt: skip
    return kind, raw[1:]


def encode_seed(kind: KeyKind, seed: bytes) -> str:
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed has 32 bytes")
    return _encode(bytes([_SEED | kind >> 5, (kind & 31) << 3]) + seed)


def decode_seed(text: str) -> tuple[KeyKind, bytes]:
    """(kind, 32-byte seed) of a seed nkey (`SU...`, `SA...`, `SO...`)."""
    raw = _decode(text, "nkey seed")
    if len(raw) != 34 or raw[0] & 0xF8 != _SEED:
        raise ProtocolError("nkey seed: not a seed")
    return _kind((raw[0] & 7) << 5 | raw[1] >> 3, "nkey seed"), raw[2:]


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A key that signs: an operator's, an account's (or its signing key) or a user's."""

    kind: KeyKind
    seed: bytes

    @classmethod
    def generate(cls, kind: KeyKind) -> KeyPair:
        return cls(kind, bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_seed(cls, text: str) -> KeyPair:
        kind, seed = decode_seed(text)
        return cls(kind, seed)

    @property
    def public(self) -> str:
        return encode_public(self.kind, bytes(nacl.signing.SigningKey(self.seed).verify_key))

    @property
    def seed_text(self) -> str:
        return encode_seed(self.kind, self.seed)

    def sign(self, data: bytes) -> bytes:
        return nacl.signing.SigningKey(self.seed).sign(data).signature

    def __repr__(self) -> str:  # never print a seed by accident
        return f"KeyPair({self.kind.name}, {self.public})"


def verify(public: str, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is the holder of `public` signing `data`."""
    key = decode_public(public)[1]
    try:
        nacl.signing.VerifyKey(key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True
