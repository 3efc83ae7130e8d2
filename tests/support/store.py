"""The validator's store in tests: SQLite URLs and the rows the store tests record.

``NOW`` is a fixed clock; ``verified`` is a GraVal result and ``call`` an invocation row as
the validator and the API record them; ``count`` counts a table's rows; ``bundle_of`` and
``description`` are a chute deployment's bundle (with its revision) and description.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import func, select

from canopy.chute import chute_id
from store.queries import SYNTHETIC, ValidatorStore
from validator.graval.session import DeviceResult

NOW = 1_000_000.0


def sqlite_url(path: Path | str) -> str:
    """The store URL of a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


def verified(hotkey: str, uuid: str, ok: bool = True, at: float = NOW, reason: str | None = None) -> DeviceResult:
    return DeviceResult(hotkey, uuid, ok, reason or ("ok" if ok else "bad_opening"), model_id="cpu", verified_at=at)


def call(hotkey: str = "m1", chute: str = "echo", *, source: str = SYNTHETIC, ok: bool = True, at: float = NOW,
         **fields) -> dict:
    return dict(miner_hotkey=hotkey, chute_id=chute, source=source, ok=ok, created_at=at, **fields)


async def count(store: ValidatorStore, table) -> int:
    async with store.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(table)))


def bundle_of(text: str) -> tuple[str, bytes]:
    """A chute bundle (its bytes) and its revision, the sha256 of them."""
    data = text.encode()
    return hashlib.sha256(data).hexdigest(), data


def description(owner: str, name: str, **fields) -> dict:
    """A chute's description as the registry stores it (a ``ChuteInfo`` as JSON)."""
    return dict(chute_id=chute_id(owner, name), username=owner, name=name, tagline="", readme="", image="python:3.11",
                node_selector={"gpu_count": 1}, concurrency=1, max_instances=1,
                cords=[{"name": "echo", "path": "/echo", "input_schema": {"type": "object"}}], **fields)
