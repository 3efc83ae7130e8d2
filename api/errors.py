"""The public API's errors, in OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``.

Seam: the gateway's error contract with its clients, raised by the routes and the admission
step and rendered by the app's exception handlers. ``ApiError`` subclasses carry
the HTTP status and OpenAI ``type``; ``envelope`` renders one. Before a stream starts an
error is an ordinary JSON response with its status; after, it is one SSE event carrying
the same envelope (``sse_error``), followed by ``data: [DONE]``.
"""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    log_error: str | None = None  # the request log's error, when not the code

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return envelope(self.message, self.type, self.param, self.code)


class InvalidRequest(ApiError):
    status, type = 400, "invalid_request_error"


class Unauthorized(ApiError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class InsufficientCredits(ApiError):
    status, type, code = 402, "insufficient_quota", "insufficient_credits"


class Forbidden(ApiError):
    status, type, code = 403, "permission_error", "forbidden"


class NotFound(ApiError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class PayloadTooLarge(ApiError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class RateLimited(ApiError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class ContentPolicyViolation(ApiError):
    """The moderator (``api.moderation``) flagged the input: nothing charged, no miner called."""
    status, type, code = 400, "invalid_request_error", "content_policy_violation"
    log_error = "moderation"


class ModerationUnavailable(ApiError):
    """The moderation service failed and ``--api.moderation_fail_closed`` is set."""
    status, type, code = 503, "api_error", "moderation_unavailable"
    log_error = "moderation"


class UpstreamFailed(ApiError):
    status, type, code = 502, "api_error", "upstream_error"


class NoMinerAvailable(ApiError):
    status, type, code = 503, "api_error", "no_miner_available"


class UpstreamTimeout(ApiError):
    status, type, code = 504, "api_error", "timeout"


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse_error(error: ApiError) -> bytes:
    """The error event of a stream that had started, then the terminator."""
    return f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n".encode()
