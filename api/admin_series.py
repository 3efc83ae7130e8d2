"""Admin read-outs for the web UI (``api.web``): hourly request counts and the miners' table.

Seam: admin REST for the UI's stats and miners pages, beside ``api.admin_routes`` (same
admin-key rule: no key or a bad one 401, a key that is not an admin key 403, bad input 400
in OpenAI's envelope); it reads the validator's store through ``api.gateway.Store``.

- ``GET /admin/stats/hourly?since=24h&key=NAME``: requests and errors (status >= 400)
  per clock hour from the ``api_request_logs`` table (``store.api_tables.RequestLog``), every
  hour of the window present (zeros included), oldest first::

      {"object": "list", "since": 1700000000.0, "until": 1700086400.0, "bucket_s": 3600,
       "key_id": null, "data": [{"start": 1699999200.0, "requests": 3, "errors": 1}, ...]}

  ``since`` is rounded down to the hour; at most ``MAX_BUCKETS`` hours (31 days).
- ``GET /admin/miners``: the serving miners of the directory's last metagraph
  (``api.directory.MinerDirectory``), uid order::

      {"object": "list", "block": 10, "refreshed": true, "weights_block": null, "data": [
        {"uid": 1, "hotkey": "5F…", "incentive": 0.1, "stake": 0.0, "verified": true,
         "devices": [{"uuid": "dev-a", "ok": true, "name": "", "reason": "ok", "verified_at": 1.7e9,
                      "model_id": "h100", "calibrated": false, "multiplier": 0.55, "owner": "5F…"}],
         "chutes": [{"chute_id": "…", "name": "…", "model": "fake-model", "instances": 1,
                     "ready_instances": 1, "concurrency": 1, "in_flight": 0}],
         "score": 0.5, "weight": null}]}

  ``devices`` are the newest GraVal result of each device the validator's store holds
  for the hotkey (per hotkey and uuid: another hotkey's claim of the uuid is not shown
  here), with ``owner`` (the hotkey the uuid belongs to network-wide, null when none),
  ``calibrated`` (whether its GPU-table row is; null for a model not in the table) and
  ``multiplier`` (what it earns in scoring: 0 unless it passed and this hotkey owns it;
  an uncalibrated row earns the lowest multiplier among the rows that could hold the
  memory proven); ``chutes`` the LLM chutes the directory routes to (other chutes are not
  kept by the directory), ``in_flight`` the gateway's own count; ``score`` the validator's
  smoothed score (null when the store has none), ``weight`` the miner's share in the last
  accepted weight submission (null when none was recorded).
"""

from __future__ import annotations

import json
import math
import time
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from api.admin_routes import SINCE_QUERY, KEY_QUERY, require_admin, key_id_named, parse_since_param
from api.errors import InvalidRequest
from api.gateway import Store, gateway_of
from store.api_tables import RequestLog
from protocol.graval.devices import load_gpu_table
from protocol.graval.devices import device_multiplier

router = APIRouter(prefix="/admin", tags=["admin"])
BUCKET_S = 3600
MAX_BUCKETS = 31 * 24


async def hourly_counts(engine: AsyncEngine, *, since: float, until: float, key_id: int | None = None,
                        bucket_s: int = BUCKET_S) -> list[dict[str, Any]]:
    """Requests and errors per ``bucket_s`` from ``since`` (aligned down to a bucket) to ``until``."""
    start = math.floor(since / bucket_s) * bucket_s
    count = max(1, math.ceil((until - start) / bucket_s))
    offset = (RequestLog.created_at - start) / bucket_s
    # floor() of a non-negative number, on both SQLite (CAST truncates) and Postgres (CAST rounds).
    index = func.floor(offset) if engine.dialect.name == "postgresql" else cast(offset, Integer)
    statement = (select(index.label("bucket"), func.count(),
                        func.coalesce(func.sum(case((RequestLog.status >= 400, 1), else_=0)), 0))
                 .where(RequestLog.created_at >= start, RequestLog.created_at < until)
                 .group_by("bucket"))
    if key_id is not None:
        statement = statement.where(RequestLog.key_id == key_id)
    async with async_sessionmaker(engine)() as session:
        found = {int(bucket): (int(requests), int(errors))
                 for bucket, requests, errors in (await session.execute(statement)).all()}
    return [{"start": float(start + i * bucket_s), "requests": found.get(i, (0, 0))[0],
             "errors": found.get(i, (0, 0))[1]} for i in range(count)]


@router.get("/stats/hourly", openapi_extra={"parameters": [
    {**SINCE_QUERY, "schema": {"type": "string", "default": "24h"}}, KEY_QUERY]})
async def stats_hourly(request: Request) -> dict:
    """Requests and errors per clock hour over ``since`` (default 24h, at most 31 days), oldest first."""
    await require_admin(request)
    query = request.query_params
    until = time.time()
    since = parse_since_param(query.get("since") or "24h")
    if since is None or since >= until or (until - since) / BUCKET_S > MAX_BUCKETS:
        raise InvalidRequest(f"since must be in the past and at most {MAX_BUCKETS} hours back",
                             param="since", code="invalid_value")
    key_id = await key_id_named(request, query.get("key"))
    data = await hourly_counts(gateway_of(request).keys.engine, since=since, until=until, key_id=key_id)
    return {"object": "list", "since": since, "until": until, "bucket_s": BUCKET_S, "key_id": key_id, "data": data}


@lru_cache(maxsize=1)
def _gpu_table() -> tuple[dict[str, Any], Any]:
    table = load_gpu_table()
    return {model.id: model for model in table}, device_multiplier(table)


async def _devices(store: Store) -> dict[str, list[dict[str, Any]]]:
    owners = {uuid: owner.hotkey for uuid, owner in (await store.device_owners()).items()}
    models, multiplier = _gpu_table()
    devices: dict[str, list[dict[str, Any]]] = {}
    for row in (await store.latest_verifications()).values():
        model, owner = models.get(row.model_id), owners.get(row.uuid)
        devices.setdefault(row.miner_hotkey, []).append(
            {"uuid": row.uuid, "ok": bool(row.ok), "name": row.name, "reason": row.reason,
             "verified_at": row.verified_at, "model_id": row.model_id or None,
             "calibrated": model.calibrated if model is not None else None,
             "multiplier": multiplier(row) if row.ok and owner == row.miner_hotkey else 0.0, "owner": owner})
    return devices


async def _weights(store: Store) -> tuple[dict[int, float], int | None]:
    submission = await store.last_weights()
    if submission is None:
        return {}, None
    return dict(zip(json.loads(submission.uids), json.loads(submission.weights))), submission.block


@router.get("/miners")
async def miners(request: Request) -> dict:
    """The serving miners: uid, hotkey, verified devices, the chutes routed to, score and weight."""
    await require_admin(request)
    directory, store = gateway_of(request).directory, gateway_of(request).store
    graph = directory.graph
    scores, devices = dict((await store.load_scores())[0]), await _devices(store)
    weights, weights_block = await _weights(store)
    data = []
    for neuron in sorted(graph.serving_miners() if graph is not None else (), key=lambda n: n.uid):
        routes = [route for route in directory.routes if route.hotkey == neuron.hotkey]
        data.append({
            "uid": neuron.uid, "hotkey": neuron.hotkey, "incentive": neuron.incentive, "stake": neuron.stake,
            "verified": any(device["ok"] for device in devices.get(neuron.hotkey, ())),
            "devices": devices.get(neuron.hotkey, []),
            "chutes": [{"chute_id": route.chute.chute_id, "name": route.chute.name, "model": route.chute.model,
                        "instances": route.chute.instances, "ready_instances": route.chute.ready_instances,
                        "concurrency": route.chute.concurrency, "in_flight": directory.in_flight.get(route.slot, 0)}
                       for route in routes],
            "score": scores.get(neuron.hotkey), "weight": weights.get(neuron.uid)})
    return {"object": "list", "block": graph.block if graph is not None else None,
            "refreshed": directory.refreshed_at > 0, "weights_block": weights_block, "data": data}
