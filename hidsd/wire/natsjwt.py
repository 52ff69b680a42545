"""NATS JWTs (v2): the operator, account and user claims nats-server verifies in operator
mode, minted and checked here so that every agent can get its own identity without a server
config change per host (docs/SECURITY-DESIGN.md, section 3).

A JWT is base64url(header) "." base64url(claims JSON) "." base64url(Ed25519 signature of the
first two parts by the issuer's nkey); header ``{"typ":"JWT","alg":"ed25519-nkey"}``. `jti` is a
digest of the other claims (nats-server does not check it; it only has to be unique).

Pure: no I/O, no state; `decode_jwt` takes untrusted text and raises `ProtocolError`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hidsd.base.errors import ProtocolError
from hidsd.wire.nkeys import KeyKind, KeyPair, decode_public, verify

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
#: nats-server's "no limit"
UNLIMITED = -1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"jwt: {what} is not base64url") from exc


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def encode_jwt(claims: Mapping[str, Any], issuer: KeyPair) -> str:
    """Sign `claims` (which must name `issuer`'s public key as `iss`) as a NATS JWT."""
    if claims.get("iss") != issuer.public:
        raise ValueError("the claims' iss must be the signing key")
    body = dict(claims)
    body.pop("jti", None)
    jti = base64.b32encode(hashlib.new("sha512_256", _json(body)).digest()).decode().rstrip("=")
    head = _b64(_json(_HEADER))
    payload = _b64(_json({"jti": jti, **body}))
    signed = f"{head}.{payload}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT whose signature is its `iss`'s; ProtocolError if it is not one."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise ProtocolError("jwt: expected three dot-separated parts")
    head, payload, sig = token.split(".")
    try:
        header = json.loads(_unb64(head, "header"))
        claims = json.loads(_unb64(payload, "claims"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("jwt: header or claims are not JSON") from exc
    if not isinstance(header, dict) or str(header.get("typ", "")).upper() != "JWT":
        raise ProtocolError("jwt: not a JWT header")
    if header.get("alg") not in ("ed25519-nkey", "ed25519"):
        raise ProtocolError(f"jwt: algorithm {header.get('alg')!r} is not ed25519-nkey")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise ProtocolError("jwt: claims without an issuer")
    if not verify(claims["iss"], f"{head}.{payload}".encode(), _unb64(sig, "signature")):
        raise ProtocolError("jwt: the signature is not the issuer's")
    return claims


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects a user may publish and subscribe to (allow lists; deny lists only narrow)."""

    pub_allow: tuple[str, ...] = ()
    pub_deny: tuple[str, ...] = ()
    sub_allow: tuple[str, ...] = ()
    sub_deny: tuple[str, ...] = ()

    def to_claims(self) -> dict[str, Any]:
        def part(allow: tuple[str, ...], deny: tuple[str, ...]) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            if allow:
                out["allow"] = list(allow)
            if deny:
                out["deny"] = list(deny)
            return out

        return {"pub": part(self.pub_allow, self.pub_deny),
                "sub": part(self.sub_allow, self.sub_deny)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ScopedKey:
    """An account signing key that can only issue users with `template`'s permissions, in
    which `{{name()}}` and `{{tag(key)}}` expand to the user's own name and tags."""

    key: str
    role: str
    template: Permissions

    def to_claims(self) -> dict[str, Any]:
        decode_public(self.key, KeyKind.ACCOUNT)
        return {"kind": "user_scope", "key": self.key, "role": self.role,
                "template": {**self.template.to_claims(), "subs": UNLIMITED, "data": UNLIMITED,
                             "payload": UNLIMITED},
                "description": ""}  # fmt: skip


def operator_jwt(op: KeyPair, name: str, system_account: str, signing_keys: Sequence[str] = (),
                 iat: int = 0) -> str:  # fmt: skip
    """The operator's self-signed JWT (its signing keys may issue accounts)."""
    decode_public(system_account, KeyKind.ACCOUNT)
    nats = {"signing_keys": list(signing_keys), "system_account": system_account,
            "type": "operator", "version": 2}  # fmt: skip
    return encode_jwt({"iat": iat, "iss": op.public, "name": name, "sub": op.public,
                       "nats": nats}, op)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AccountSpec:
    name: str
    public: str
    jetstream: bool = False
    scoped_keys: tuple[ScopedKey, ...] = ()
    #: user public key -> issued-before time (unix seconds): JWTs issued earlier are refused
    revocations: Mapping[str, int] = field(default_factory=dict)


def account_jwt(issuer: KeyPair, spec: AccountSpec, iat: int = 0) -> str:
    """An account's JWT, signed by the operator (or one of its signing keys)."""
    decode_public(spec.public, KeyKind.ACCOUNT)
    limits: dict[str, Any] = {"subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED,
                              "imports": UNLIMITED, "exports": UNLIMITED, "wildcards": True,
                              "conn": UNLIMITED, "leaf": UNLIMITED}  # fmt: skip
    if spec.jetstream:
        limits.update({"mem_storage": UNLIMITED, "disk_storage": UNLIMITED,
                       "streams": UNLIMITED, "consumer": UNLIMITED})  # fmt: skip
    nats: dict[str, Any] = {"limits": limits, "default_permissions": {"pub": {}, "sub": {}},
                            "type": "account", "version": 2}  # fmt: skip
    if spec.scoped_keys:
        nats["signing_keys"] = [k.to_claims() for k in spec.scoped_keys]
    if spec.revocations:
        nats["revocations"] = dict(spec.revocations)
    return encode_jwt({"iat": iat, "iss": issuer.public, "name": spec.name,
                       "sub": spec.public, "nats": nats}, issuer)  # fmt: skip


def user_jwt(issuer: KeyPair, account: str, user: str, name: str, *,
             tags: Sequence[str] = (), permissions: Permissions | None = None,
             iat: int = 0, expires: int | None = None) -> str:  # fmt: skip
    """A user's JWT. Issued by a scoped key (`permissions` None: the key's template applies,
    and nats-server refuses a scoped user that carries its own) or by the account itself."""
    decode_public(user, KeyKind.USER)
    decode_public(account, KeyKind.ACCOUNT)
    nats: dict[str, Any] = {"type": "user", "version": 2}
    if issuer.public != account:
        nats["issuer_account"] = account
    if tags:
        nats["tags"] = list(tags)
    if permissions is not None:
        nats.update(permissions.to_claims())
        nats.update({"subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED})
    claims: dict[str, Any] = {"iat": iat, "iss": issuer.public, "name": name, "sub": user,
                              "nats": nats}  # fmt: skip
    if expires is not None:
        claims["exp"] = expires
    return encode_jwt(claims, issuer)
