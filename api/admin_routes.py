"""Admin REST behind an admin key: ``/admin/keys``, ``/admin/logs``, ``/admin/stats``.

Seam: the operators' API, for a key made by ``canopy keys create --admin``
(``Authorization: Bearer``), over the key store and the request log. No key, or a bad one: 401; a
key that is not an admin key: 403. Bad input: 400 in OpenAI's envelope with ``param``;
an unknown key name: 404; a name in use: 409.

- ``GET /admin/keys`` lists keys (hints only); ``GET /admin/keys/{name}`` one key;
- ``POST /admin/keys`` ``{"name", "credits"?, "expires"?, "rate_limits"?, "default_strategy"?,
  "models"?, "admin"?, "owner"?, "scopes"?, "chutes"?}`` creates one: the answer (201) carries ``key``, shown this once;
- ``PATCH /admin/keys/{name}``: any of ``credits`` (null: unlimited), ``add_credits``,
  ``expires`` ("in 30 days", ISO, epoch; null: never), ``rate_limits``, ``default_strategy``
  (null: default), ``models`` (null: all), ``disabled``, ``admin``, ``owner`` (null: none),
  ``scopes`` (replaces them), ``chutes`` (null or []: every chute);
- every key answer carries ``owner``, ``scopes`` and ``chutes`` (``store.scopes``); ``admin``
  true adds the ``admin`` scope, false removes it;
- ``DELETE /admin/keys/{name}``;
- ``GET /admin/logs?key=NAME&status=200&since=1h&limit=50``: request-log rows, newest first;
- ``GET /admin/stats?since=24h&key=NAME``: requests, errors, tokens, charged, by status.

``api.admin_series`` (the hourly stats and the miners, for the web UI) shares
``require_admin``, ``key_id_named``, ``parse_since_param`` and the query-parameter docs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from api.errors import ApiError, Forbidden, InvalidRequest
from api.keys import (KeyError_, KeyInfo, RateRule, parse_chute_ref, parse_expiry, parse_owner, parse_scopes,
                      parse_strategy)
from api.admission import bearer_key, json_object, request_body, validated
from api.gateway import gateway_of
from api.requestlog import log_dict, log_stats, parse_since, query_logs
from store.scopes import may

router = APIRouter(prefix="/admin", tags=["admin"])
MAX_LIMIT = 1000


class KeyNotFound(ApiError):
    status, type, code = 404, "invalid_request_error", "key_not_found"


class KeyExists(ApiError):
    status, type, code = 409, "invalid_request_error", "key_exists"


class _KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credits: StrictInt | None = Field(None, ge=0)
    expires: str | float | None = None
    rate_limits: list[str] | None = None
    default_strategy: str | None = None
    models: list[str] | None = None
    admin: StrictBool | None = Field(None, description="true adds the admin scope, false removes it")
    owner: str | None = Field(None, description="the chute owner (username) the key acts for; null: none")
    scopes: list[str] | None = Field(None, description="any of invoke, deploy, admin (default [\"invoke\"])")
    chutes: list[str] | None = Field(None, description="owner/name chutes the key is limited to; null or []: all")


class KeyCreate(_KeyFields):
    name: str = Field(..., min_length=1, max_length=64)


class KeyPatch(_KeyFields):
    add_credits: StrictInt | None = None
    disabled: StrictBool | None = None


async def require_admin(request: Request) -> KeyInfo:
    key = await bearer_key(request)
    if not may(key.scopes, key.owner, key.chutes, "admin"):  # the admin scope (or an old key's admin flag)
        raise Forbidden("this API key is not an admin key (canopy keys create --admin)")
    return key


def _checked(body: _KeyFields) -> dict[str, Any]:
    """``KeyStore`` fields from the body, each validated so a refusal names its ``param``."""
    fields: dict[str, Any] = {}
    given = body.model_fields_set
    try:
        param = "expires"
        if "expires" in given and body.expires is not None:
            fields["expires_at"] = parse_expiry(str(body.expires))
        param = "rate_limits"
        if "rate_limits" in given and body.rate_limits is not None:
            fields["rate_limits"] = [str(RateRule.parse(rule)) for rule in body.rate_limits]
        param = "default_strategy"
        if "default_strategy" in given and body.default_strategy is not None:
            fields["default_strategy"] = parse_strategy(body.default_strategy)
        param = "owner"
        if "owner" in given and body.owner is not None:
            fields["owner"] = parse_owner(body.owner)
        param = "scopes"
        if "scopes" in given and body.scopes is not None:
            fields["scopes"] = parse_scopes(body.scopes)
            if body.admin is False and "admin" in fields["scopes"]:
                raise KeyError_("admin=false contradicts the admin scope: send one or the other")
        param = "chutes"
        if "chutes" in given and body.chutes is not None:
            fields["chutes"] = [parse_chute_ref(ref) for ref in body.chutes]
    except KeyError_ as error:
        raise InvalidRequest(str(error), param=param, code="invalid_value") from None
    if "credits" in given and body.credits is not None:
        fields["credits"] = body.credits
    if "models" in given and body.models is not None:
        fields["models"] = body.models
    if "admin" in given and body.admin is not None:
        fields["admin"] = body.admin
    return fields


async def key_id_named(request: Request, name: str | None) -> int | None:
    if not name:
        return None
    try:
        return (await gateway_of(request).keys.get(name)).id
    except KeyError_:
        raise KeyNotFound(f"no key named {name!r}", param="key") from None


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A query parameter for the OpenAPI document (the routes read ``request.query_params`` themselves)."""
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


KEY_QUERY = _query("key", {"type": "string"}, "only this key's requests (its name)")
SINCE_QUERY = _query("since", {"type": "string"}, "a duration back from now (1h, 30m, 7d) or a time (ISO, epoch)")
_UNTIL_QUERY = _query("until", {"type": "string"}, "as since: the end of the window")


def _int(value: str | None, param: str, low: int, high: int) -> int | None:
    if value is None or value == "":
        return None
    if not value.strip().lstrip("-").isdigit() or not low <= int(value) <= high:
        raise InvalidRequest(f"{param} must be an integer in {low}..{high}", param=param, code="invalid_value")
    return int(value)


def parse_since_param(value: str | None, param: str = "since") -> float | None:
    if not value:
        return None
    try:
        return parse_since(value)
    except ValueError as error:
        raise InvalidRequest(str(error), param=param, code="invalid_value") from None


@router.get("/keys")
async def list_keys(request: Request) -> dict:
    """Every key (hints only, never the keys)."""
    await require_admin(request)
    return {"object": "list", "data": [key.as_dict() for key in await gateway_of(request).keys.list()]}


@router.post("/keys", status_code=201, openapi_extra=request_body(KeyCreate))
async def create_key(request: Request) -> JSONResponse:
    """Create a key; the answer carries ``key`` this once (only its hash is stored)."""
    await require_admin(request)
    body = validated(KeyCreate, await json_object(request))
    fields = _checked(body)
    try:
        info, key = await gateway_of(request).keys.create(body.name, **fields)
    except KeyError_ as error:
        if "exists already" in str(error):
            raise KeyExists(str(error), param="name") from None
        raise InvalidRequest(str(error), param="name", code="invalid_value") from None
    return JSONResponse({**info.as_dict(), "key": key}, status_code=201)


@router.get("/keys/{name}")
async def get_key(request: Request, name: str) -> dict:
    await require_admin(request)
    try:
        return (await gateway_of(request).keys.get(name)).as_dict()
    except KeyError_ as error:
        raise KeyNotFound(str(error), param="name") from None


@router.patch("/keys/{name}", openapi_extra=request_body(KeyPatch))
async def edit_key(request: Request, name: str) -> dict:
    """Change credits (or add_credits), expiry, limits, strategy, models, disabled, admin; null clears."""
    await require_admin(request)
    body = validated(KeyPatch, await json_object(request))
    fields = _checked(body)
    given = body.model_fields_set
    if "disabled" in given and body.disabled is not None:
        fields["disabled"] = body.disabled
    unset = frozenset(column for column, field_name in (("credits", "credits"), ("expires_at", "expires"),
                                                         ("default_strategy", "default_strategy"), ("models", "models"),
                                                         ("owner", "owner"), ("chutes", "chutes"))
                      if field_name in given and getattr(body, field_name) is None)
    keys = gateway_of(request).keys
    try:
        if body.add_credits is not None:
            if "credits" in given:
                raise InvalidRequest("send credits or add_credits, not both", param="add_credits")
            current = (await keys.get(name)).credits
            total = (current or 0) + body.add_credits
            if total < 0:
                raise InvalidRequest(f"add_credits would leave {total} credits", param="add_credits")
            fields["credits"] = total
        return (await keys.edit(name, unset=unset, **fields)).as_dict()
    except KeyError_ as error:
        raise KeyNotFound(str(error), param="name") from None


@router.delete("/keys/{name}")
async def delete_key(request: Request, name: str) -> dict:
    """Delete a key for good (its request logs stay)."""
    await require_admin(request)
    try:
        await gateway_of(request).keys.delete(name)
    except KeyError_ as error:
        raise KeyNotFound(str(error), param="name") from None
    return {"object": "key", "name": name, "deleted": True}


@router.get("/logs", openapi_extra={"parameters": [
    KEY_QUERY, _query("status", {"type": "integer", "minimum": 100, "maximum": 599}, "only this HTTP status"),
    SINCE_QUERY, _UNTIL_QUERY,
    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "rows at most")]})
async def logs(request: Request) -> dict:
    """Request-log rows, newest first: ``key`` (name), ``status``, ``since``/``until``, ``limit`` (1..1000)."""
    await require_admin(request)
    query = request.query_params
    status = _int(query.get("status"), "status", 100, 599)
    limit = _int(query.get("limit"), "limit", 1, MAX_LIMIT) or 50
    since, until = parse_since_param(query.get("since")), parse_since_param(query.get("until"), "until")
    key_id = await key_id_named(request, query.get("key"))
    rows = await query_logs(gateway_of(request).keys.engine, key_id=key_id, status=status, since=since, until=until,
                            limit=limit)
    return {"object": "list", "data": [log_dict(row) for row in rows]}


@router.get("/stats", openapi_extra={"parameters": [
    {**SINCE_QUERY, "schema": {"type": "string", "default": "24h"}}, _UNTIL_QUERY, KEY_QUERY]})
async def stats(request: Request) -> dict:
    """Requests, errors, tokens, credits charged and counts by status over ``since`` (default 24h)."""
    await require_admin(request)
    query = request.query_params
    since = parse_since_param(query.get("since") or "24h")
    until = parse_since_param(query.get("until"), "until")
    key_id = await key_id_named(request, query.get("key"))
    return await log_stats(gateway_of(request).keys.engine, since=since, until=until, key_id=key_id)
