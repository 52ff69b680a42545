"""Errors an operator can act on.

One base class with structured fields; this module imports nothing from the package so that
every layer can raise these without import cycles.
"""

from __future__ import annotations

from typing import Any


class HidsError(Exception):
    """Base of every hidsd error: a message for humans plus fields for logs and --json."""

    code = "error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.fields}

    def __str__(self) -> str:
        if not self.fields:
            return self.message
        extra = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.message} ({extra})"


class ConfigError(HidsError):
    """A settings file or value is invalid; `field` names what to fix."""

    code = "config"


class ProtocolError(HidsError):
    """Bytes from the wire or the store do not decode to a valid message."""

    code = "protocol"


class CommandRejected(HidsError):
    """A command failed verification or policy; `reason` is a RejectReason value."""

    code = "rejected"

    def __init__(self, reason: str, message: str, **fields: Any) -> None:
        super().__init__(message, reason=reason, **fields)
        self.reason = reason


class OperatorKeyError(HidsError):
    """An operator key file is missing, unreadable or malformed."""

    code = "key"


class StoreUnavailable(HidsError):
    """etcd could not be reached (all endpoints failed or timed out)."""

    code = "store_unavailable"


class StoreAuthError(HidsError):
    """etcd rejected the credentials or the token."""

    code = "store_auth"


class StorePermissionDenied(HidsError):
    """The etcd user lacks the role for this key."""

    code = "store_permission"


class StoreConflict(HidsError):
    """A compare-and-swap in etcd lost against a concurrent writer."""

    code = "store_conflict"


class BusUnavailable(HidsError):
    """No NATS server in the list could be reached."""

    code = "bus_unavailable"


class ControllerUnavailable(HidsError):
    """No hidsd-controller answered on the bus."""

    code = "controller_unavailable"


class NoResponse(HidsError):
    """A NATS request got no reply in time (no responders, or they were too slow)."""

    code = "no_response"


class NotRecorded(HidsError):
    """etcd could not record a desired state, and broadcasting it unrecorded was not allowed."""

    code = "not_recorded"


class NotPublishable(HidsError):
    """The bus refused a message for good (too large): retrying cannot help."""

    code = "not_publishable"
