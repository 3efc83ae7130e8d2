"""The wire's error vocabulary: one exception class per failure kind, one JSON body shape.

The failure half of the wire's contract: the axon raises these and renders them as
``{"error": {"type", "message"}}`` with the class's HTTP status; the dendrite rebuilds the
same class from a received body (``error_from_body``) and uses the client-side kinds for
timeouts, refused connections and undecodable replies, so code on either side branches on
``error.type``.

The ``type`` strings are part of the protocol: never rename one; add new kinds instead.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class ProtocolError(Exception):
    """A request failed in a way both sides can name.

    ``type`` is the stable machine-readable kind, ``status`` the HTTP status the axon
    answers with, ``message`` a human sentence that never contains secrets, and
    ``detail`` optional structured data (e.g. the failing fields of a payload).
    """

    type: ClassVar[str] = "error"
    status: ClassVar[int] = 500

    def __init__(self, message: str = "", *, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.type)
        self.message = message or self.type
        self.detail = detail
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"error": error}

    def to_json(self) -> bytes:
        return json.dumps(self.to_body(), separators=(",", ":")).encode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class RemoteError(ProtocolError):
    """An error body whose ``type`` this version of the code does not know."""

    def __init__(self, type_: str, message: str, *, status: int = 0, detail: Any = None) -> None:
        super().__init__(message, detail=detail)
        self.remote_type = type_
        self.remote_status = status

    @property
    def type(self) -> str:  # type: ignore[override]  # the class-wide kind, read per instance: the one the remote sent
        return self.remote_type


# --- request shape (axon side) ---------------------------------------------------------


class MalformedJson(ProtocolError):
    type = "malformed_json"
    status = 400


class InvalidPayload(ProtocolError):
    """The JSON parsed but does not fit the synapse; ``detail`` lists the failing fields."""

    type = "invalid_payload"
    status = 422


class PayloadTooLarge(ProtocolError):
    type = "payload_too_large"
    status = 413


class ProtocolMismatch(ProtocolError):
    """The caller speaks an incompatible major protocol version (or sent none)."""

    type = "protocol_mismatch"
    status = 400


class NotFound(ProtocolError):
    type = "not_found"
    status = 404


class MethodNotAllowed(ProtocolError):
    type = "method_not_allowed"
    status = 405


# --- authentication (btauth/1) ---------------------------------------------------------


class MalformedAuth(ProtocolError):
    """A btauth/1 header is missing or unparseable (an unsigned request lands here)."""

    type = "malformed_auth"
    status = 401


class StaleRequest(ProtocolError):
    type = "stale"
    status = 401


class ReplayedRequest(ProtocolError):
    type = "replayed"
    status = 401


class BadSignature(ProtocolError):
    """The signature does not match the claimed hotkey, method, path or body bytes."""

    type = "bad_signature"
    status = 401


class WrongReceiver(ProtocolError):
    type = "wrong_receiver"
    status = 401


# --- blacklist and admission -----------------------------------------------------------


class UnknownHotkey(ProtocolError):
    type = "unknown_hotkey"
    status = 403


class NotValidator(ProtocolError):
    type = "not_validator"
    status = 403


class LowStake(ProtocolError):
    type = "low_stake"
    status = 403


class Busy(ProtocolError):
    """Saturated: the caller was outranked by higher-stake callers. Retry after ``Retry-After``."""

    type = "busy"
    status = 429


class DeviceBusy(ProtocolError):
    """A GraVal device is running an earlier challenge of another validator. ``detail``
    carries that challenge's request as its validator signed it (the evidence a validator
    checks before it retries instead of failing the device); retry after ``Retry-After``."""

    type = "device_busy"
    status = 429


class Unavailable(ProtocolError):
    """The axon is starting or stopping and serves nothing yet."""

    type = "unavailable"
    status = 503


# --- handler ---------------------------------------------------------------------------


class HandlerError(ProtocolError):
    """The synapse handler raised; the message is generic and no traceback leaves the axon."""

    type = "handler_error"
    status = 500


# --- client side (dendrite): never sent by an axon -------------------------------------


class RequestTimeout(ProtocolError):
    type = "timeout"
    status = 0


class ConnectionFailed(ProtocolError):
    type = "connection_error"
    status = 0


class DecodeError(ProtocolError):
    """The reply was not a valid response model (or not a valid error body)."""

    type = "decode_error"
    status = 0


class ChuteUnavailable(ProtocolError):
    """The chute is hosted here but no instance is ready (starting, restarting or failed)."""

    type = "chute_unavailable"
    status = 503


class RemoteChuteError(ProtocolError):
    """The cord raised; ``detail`` is ``{"remote": {"type", "message", "traceback"}}``."""

    type = "remote_error"
    status = 500


class InstanceCrashed(ProtocolError):
    """The chute instance died (or dropped the connection) while serving the request."""

    type = "instance_crashed"
    status = 502


class InstanceTimeout(ProtocolError):
    """The chute instance did not answer within the miner's invoke timeout."""

    type = "instance_timeout"
    status = 504


ERROR_TYPES: dict[str, type[ProtocolError]] = {
    cls.type: cls
    for cls in (
        MalformedJson, InvalidPayload, PayloadTooLarge, ProtocolMismatch, NotFound, MethodNotAllowed,
        MalformedAuth, StaleRequest, ReplayedRequest, BadSignature, WrongReceiver,
        UnknownHotkey, NotValidator, LowStake, Busy, Unavailable, HandlerError,
        RequestTimeout, ConnectionFailed, DecodeError,
        ChuteUnavailable, RemoteChuteError, InstanceCrashed, InstanceTimeout, DeviceBusy,
    )
}


def error_from_body(status: int, body: bytes) -> ProtocolError:
    """Rebuild the typed error an axon sent; a body without our shape becomes ``RemoteError``."""
    try:
        payload = json.loads(body)
        error = payload["error"]
        type_, message = str(error["type"]), str(error.get("message", ""))
        detail = error.get("detail")
    except (ValueError, TypeError, KeyError):
        snippet = body[:200].decode("utf-8", "replace")
        return RemoteError(f"http_{status}", snippet or f"HTTP {status}", status=status)
    cls = ERROR_TYPES.get(type_)
    if cls is None:
        return RemoteError(type_, message, status=status, detail=detail)
    return cls(message, detail=detail)
