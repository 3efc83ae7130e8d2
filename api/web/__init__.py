"""The web UI's seam: static HTML/JS/CSS under ``static/``, served by the gateway at ``/ui/``.

``api.app.build_app`` mounts it (``mount_ui``). The pages (keys, logs, stats, miners, chat)
call the gateway's own REST endpoints from the browser with a key the user pastes once
(kept in ``sessionStorage``, sent as ``Authorization: Bearer``); nothing here reads the
app's state, and nothing is fetched from outside the gateway. The mount is not part of
the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def mount_ui(app: FastAPI, path: str = "/ui") -> None:
    """Serve ``STATIC`` at ``path`` (``path`` itself redirects to ``path/``)."""

    @app.get(path, include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse(path + "/")

    app.mount(path, StaticFiles(directory=STATIC, html=True), name="ui")
