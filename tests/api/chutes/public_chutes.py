"""Test chutes for the public chute calls (``tests/api/test_public_routes.py``): every kind of cord.

``tests.api.chutes.public_chutes:toolbox`` (``alice/toolbox``, public) has a typed JSON cord
(``/greet``: its 422 names the field), a GET cord (``/health``: echoes the query), an SSE
stream (``/count``), an NDJSON stream (``/lines``) and a binary one (``/pixel``: a 1x1 PNG).
``...:diary`` (``alice/diary``) is the private one. Both only import the SDK and pydantic.
"""

from __future__ import annotations

import asyncio
import base64
import json

from pydantic import BaseModel, Field

from canopy.chute import Chute

CPU = {"gpu_count": 1, "min_vram_gb_per_gpu": 0}
#: A 1x1 transparent PNG.
PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")

toolbox = Chute(username="alice", name="toolbox", tagline="every kind of cord", node_selector=CPU, concurrency=4)


class Greeting(BaseModel):
    name: str = Field(..., min_length=1)
    times: int = Field(1, ge=1, le=5)


@toolbox.cord(public_api_path="/greet")
async def greet(self, body: Greeting) -> dict:
    return {"greeting": " ".join([f"hello {body.name}"] * body.times)}


@toolbox.cord(method="GET", public_api_path="/health")
async def health(self, query: dict) -> dict:
    return {"ok": True, "query": query}


@toolbox.cord(public_api_path="/count", stream=True)
async def count(self, body: dict):
    for number in range(int(body.get("to", 3))):
        yield f"data: {json.dumps({'n': number})}\n\n"
        await asyncio.sleep(float(body.get("pause", 0.0)))


@toolbox.cord(public_api_path="/lines", stream=True, output_content_type="application/x-ndjson")
async def lines(self, body: dict):
    for word in str(body.get("text", "a b")).split():
        yield json.dumps({"word": word}) + "\n"


@toolbox.cord(public_api_path="/pixel", output_content_type="image/png")
async def pixel(self, body: dict) -> bytes:
    return PIXEL


diary = Chute(username="alice", name="diary", node_selector=CPU, concurrency=2)


@diary.cord(public_api_path="/read")
async def read(self, body: dict) -> dict:
    return {"entry": "dear diary"}
