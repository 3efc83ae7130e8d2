"""The development client: call a chute's cords from a local script over ``CANOPY_DEV_URL``.

With ``canopy run my_chute:chute --dev --port 8000`` serving the chute, a script run as
``CANOPY_DEV_URL=http://127.0.0.1:8000 python my_chute.py`` can ``await echo({"foo": "bar"})``
(or pass the pydantic model): ``canopy.cord.Cord.__call__`` lands here, posts the payload to
``CANOPY_DEV_URL`` + the cord's path and returns the parsed JSON, or an async iterator of
chunks (SSE ``data`` decoded) when the reply streams. Failures raise
``canopy.chains.RemoteChuteError`` showing the remote stack trace. Authors may also use
``DevClient`` directly.
"""

from __future__ import annotations

import os
from typing import Any

from canopy.chains import http_call
from canopy.cord import Cord

DEV_URL_ENV = "CANOPY_DEV_URL"
DEV_TIMEOUT_ENV = "CANOPY_DEV_TIMEOUT_S"


def _timeout() -> float:
    return float(os.environ.get(DEV_TIMEOUT_ENV, "600"))


async def call_cord(base_url: str, cord: Cord, payload: Any = None) -> Any:
    """POST ``payload`` to ``base_url`` + the cord's path: parsed JSON, or an async iterator of chunks."""
    label = f"{cord.chute.username}/{cord.chute.name}@{base_url}"
    return await http_call(base_url, cord.path, payload, method=cord.method, timeout=_timeout(), retries=0,
                           target=label)


class DevClient:
    """Cords of a chute served at ``base_url`` by path: ``await DevClient(url).call("/echo", {...})``."""

    def __init__(self, base_url: str | None = None, *, timeout: float | None = None) -> None:
        self.base_url = (base_url or os.environ.get(DEV_URL_ENV, "")).strip()
        if not self.base_url:
            raise RuntimeError(f"no dev server URL: pass one or set {DEV_URL_ENV} (serve the chute with `canopy run "
                               "MODULE:chute --dev --port 8000`)")
        self.timeout = timeout or _timeout()

    async def call(self, path: str, payload: Any = None, *, method: str = "POST") -> Any:
        return await http_call(self.base_url, path if path.startswith("/") else "/" + path, payload, method=method,
                               timeout=self.timeout, target=self.base_url)

    async def health(self) -> Any:
        return await http_call(self.base_url, "/_canopy/health", None, method="GET", timeout=self.timeout)
