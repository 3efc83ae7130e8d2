"""``/chutes``: deploying, listing, reading, deleting and warming up registry chutes (``canopy deploy``).

Seam: the REST contract between the ``canopy`` CLI (``canopy.cli.deploy``, ``canopy.cli.chutes``)
and the chute registry (``store.registry``), on the gateway's one admission step
(``api.admission.admit``: auth, rate limits, the request log). Who may do what is
``store.scopes.may``: deploying, deleting and warming up need the ``deploy`` scope on a key of
the chute's owner (or an ``admin`` key); a key without an owner owns no chute.

- ``POST /chutes?public=&max_instances=&shutdown_after_seconds=``: the body is a bundle
  (``canopy.bundle``, ``application/gzip``, up to ``MAX_BUNDLE_BYTES``: 413 past it; the
  gateway's 1 MiB body cap does not apply here), ``X-Canopy-Revision`` its sha256 (400 when it
  is not). The chute is inspected in a child process (``canopy.inspect``: the API never
  imports chute code) and deployed as ``<key owner>/<its name>``; 422 ``invalid_chute`` when it
  does not load (``detail``: the traceback's last lines) or its ``NodeSelector`` fits no row of
  the GPU table (``protocol/graval/gpus.toml``). 201 for a new chute, 200 for a new (or the
  same) revision; each deploy records a ``warmup`` demand event so the network starts an
  instance.
- ``GET /chutes``: the public chutes and the caller's own. ``GET /chutes/{owner}/{name}``: one,
  with its revisions. ``DELETE /chutes/{owner}/{name}``. ``POST
  /chutes/{owner}/{name}/_canopy/warmup``: 202, one ``warmup`` demand event.

Every answer is a ``ChuteOut``: the registry's record, its cords, the public URLs of its cords
(``api.public_routes`` serves them) and the ready instances the directory knows of. The error
classes of the chute routes (with a ``detail`` in the envelope) live here too.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from api.admission import Admission, admit
from api.errors import ApiError, Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from api.gateway import Gateway
from api.keys import KeyInfo
from canopy.bundle import MAX_BUNDLE_BYTES, BundleError
from canopy.chute import ChuteInfo, chute_id
from canopy.image_environment import ImageEnvironment
from canopy.inspect import ChuteInspectionError, inspect_bundle
from node.sandbox import inspection_sandbox
from canopy.node_selector import VRAM_SLACK, NodeSelector
from protocol.graval.devices import GpuModel, load_gpu_table
from store.registry import ChuteRecord, RegistryError
from store.scopes import ADMIN, DEPLOY, chute_ref, may

router = APIRouter(tags=["chutes"])
REVISION_HEADER = "x-canopy-revision"
INSPECT_TIMEOUT_S = 60.0
MAX_INSPECTIONS = 2  # child processes inspecting uploads at once, per event loop
DEFAULT_SHUTDOWN_AFTER_S = 300
_inspections: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


# --- errors --------------------------------------------------------------------------------


class DetailedError(ApiError):
    """An error whose envelope also carries ``detail`` (a traceback's lines, a payload's failing fields)."""

    def __init__(self, message: str, *, detail: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.detail is not None:
            body["error"]["detail"] = self.detail
        return body


class InvalidChute(DetailedError):
    status, type, code = 422, "invalid_request_error", "invalid_chute"


class ChuteNotFound(NotFound):
    code = "not_found"


# --- the GPU table ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _gpu_rows() -> tuple[tuple[GpuModel, str], ...]:
    """The GPU table's rows, each with the text a name token is looked for in (id, the literal
    words of its name pattern, and "nvidia" for the GPU rows)."""
    rows = []
    for model in load_gpu_table():
        words = re.sub(r"\\[bBsSdDwW]|[\\^$.*+?()|\[\]{}]", " ", model.name_pattern)
        rows.append((model, f"{model.id} {words} {'' if model.devnet_only else 'nvidia'}".lower()))
    return tuple(rows)


def _row_matches(model: GpuModel, text: str, token: str) -> bool:
    token = token.lower()
    return token == model.id or token in text


def _memory_gb(model: GpuModel) -> float:
    """The most memory a device of ``model`` offers (the CPU pseudo-device: what it claims, a few MiB up)."""
    return model.memory_gb_min if model.devnet_only else model.memory_gb_max


def selector_problem(selector: NodeSelector) -> str:
    """Why no GPU of the table can serve ``selector`` ("" when one can; the devnet's CPU
    pseudo-device counts, so ``min_vram_gb_per_gpu=0`` always fits)."""
    fits = [model for model, text in _gpu_rows()
            if (not selector.include or any(_row_matches(model, text, t) for t in selector.include))
            and not any(_row_matches(model, text, t) for t in selector.exclude or ())
            and _memory_gb(model) >= selector.min_vram_gb_per_gpu * VRAM_SLACK]
    if fits:
        return ""
    known = ", ".join(model.id for model, _ in _gpu_rows())
    return f"no GPU of this network can serve its node selector ({selector.describe()}); the GPU table has {known}"


# --- the answers -----------------------------------------------------------------------------


class CordOut(BaseModel):
    path: str = Field(..., description="the cord's own path on the instance")
    method: str
    public_api_path: str = Field(..., description="its path under /chutes/OWNER/NAME")
    public_api_method: str
    stream: bool
    output_content_type: str


class ChuteOut(BaseModel):
    """A deployed chute at its current revision."""

    chute_id: str
    owner: str
    name: str
    revision: str = Field(..., description="sha256 of the current code bundle")
    public: bool
    max_instances: int
    shutdown_after_seconds: int
    tagline: str
    model: str = Field(..., description="an LLM chute's OpenAI model name, else empty")
    cords: list[CordOut]
    urls: list[str] = Field(..., description="where each cord is called: BASE/chutes/OWNER/NAME{public_api_path}")
    created: bool = Field(..., description="this request created the chute")
    instances: int = Field(..., description="ready instances network-wide, as the API last saw")
    environment: ImageEnvironment = Field(default_factory=ImageEnvironment, description=(
        "what a miner without containers serves of the chute's image: pip requirements, env, and the steps only a "
        "container runtime runs (miners on the default sandbox runtime refuse a chute that has any)"))
    allow_external_egress: bool = Field(False, description="its instances may reach the internet (never a miner's ports)")


class RevisionOut(BaseModel):
    revision: str
    size: int
    created_at: float


class ChuteDetail(ChuteOut):
    revisions: list[RevisionOut] = Field(..., description="newest first")


class ChuteList(BaseModel):
    chutes: list[ChuteOut]


class Deleted(BaseModel):
    deleted: bool
    chute_id: str


class Warmup(BaseModel):
    chute_id: str
    revision: str
    instances: int


def cords_of(record: ChuteRecord) -> list[dict[str, Any]]:
    """The cords of ``record``'s current revision, as its description holds them."""
    cords = record.description.get("cords")
    return [cord for cord in cords if isinstance(cord, dict)] if isinstance(cords, list) else []


def chute_out(gateway: Gateway, request: Request, record: ChuteRecord, *, created: bool = False) -> ChuteOut:
    base = str(request.base_url).rstrip("/")
    cords = [CordOut(path=str(c.get("path", "")), method=str(c.get("method", "POST")),
                     public_api_path=str(c.get("public_api_path") or c.get("path", "")),
                     public_api_method=str(c.get("public_api_method") or c.get("method", "POST")),
                     stream=bool(c.get("stream", False)),
                     output_content_type=str(c.get("output_content_type", "application/json")))
             for c in cords_of(record)]
    return ChuteOut(chute_id=record.chute_id, owner=record.owner, name=record.name, revision=record.revision,
                    public=record.public, max_instances=record.max_instances,
                    shutdown_after_seconds=record.shutdown_after_seconds,
                    tagline=str(record.description.get("tagline") or ""),
                    model=str(record.description.get("model") or ""), cords=cords,
                    urls=[f"{base}/chutes/{record.owner}/{record.name}{cord.public_api_path}" for cord in cords],
                    created=created, instances=gateway.directory.instances(record.chute_id),
                    environment=ImageEnvironment.model_validate(record.description.get("environment") or {}),
                    allow_external_egress=record.description.get("allow_external_egress") is True)


# --- who may -----------------------------------------------------------------------------------


def visible(key: KeyInfo, record: ChuteRecord) -> bool:
    """Whether ``key`` may see ``record``: public, its own, or an admin key; within its allow-list."""
    if key.chutes is not None and chute_ref(record.owner, record.name) not in key.chutes:
        return False
    return record.public or ADMIN in key.scopes or (key.owner is not None and key.owner == record.owner)


def require(key: KeyInfo, action: str, record: ChuteRecord) -> None:
    """403 unless ``key`` may do ``action`` (``store.scopes``) to ``record``."""
    if may(key.scopes, key.owner, key.chutes, action, record.owner, record.name, chute_public=record.public):
        return
    ref = record.ref
    if key.chutes is not None and chute_ref(record.owner, record.name) not in key.chutes:
        raise Forbidden(f"this key is limited to other chutes than {ref} (canopy keys edit {key.name} --chute OWNER/NAME)")
    if action == "invoke":
        if "invoke" not in key.scopes and ADMIN not in key.scopes:
            raise Forbidden(f"this key lacks the invoke scope (canopy keys edit {key.name} --scope invoke)")
        raise Forbidden(f"chute {ref} is private: only keys of its owner {record.owner} may call it")
    if DEPLOY not in key.scopes:
        raise Forbidden(f"{action} needs the deploy scope (canopy keys edit {key.name} --scope invoke --scope deploy)")
    raise Forbidden(f"only keys of {record.owner} (or admin keys) may {action} chute {ref}")


async def known(admission: Admission[Any], owner: str, name: str) -> ChuteRecord:
    """Chute ``owner/name`` from the registry (the directory's view may lag), or 404 naming it."""
    gateway = admission.gateway
    record = await gateway.registry.get(owner, name)
    if record is None:
        raise ChuteNotFound(f"no chute {owner}/{name} is deployed (GET /chutes lists them)")
    return record


# --- deploy ------------------------------------------------------------------------------------


async def _read_bundle(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BUNDLE_BYTES:
            raise PayloadTooLarge(f"the bundle is over {MAX_BUNDLE_BYTES} bytes (canopy.bundle.MAX_BUNDLE_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


#: The uploaded code is imported in the node's bubblewrap sandbox (no file of the node's, no network).
_sandbox = functools.cache(inspection_sandbox)


async def _inspect(data: bytes, revision: str) -> ChuteInfo:
    semaphore = _inspections.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(MAX_INSPECTIONS))
    async with semaphore:
        try:
            return await asyncio.to_thread(inspect_bundle, data, revision=revision, timeout_s=INSPECT_TIMEOUT_S,
                                           wrap=_sandbox())
        except ChuteInspectionError as error:
            raise InvalidChute(f"the chute does not load: {error}", detail=error.detail or None) from None
        except BundleError as error:
            raise InvalidChute(f"the bundle is not valid: {error}") from None


def _deployer(key: KeyInfo) -> str:
    if DEPLOY not in key.scopes and ADMIN not in key.scopes:
        raise Forbidden(f"deploying needs the deploy scope (canopy keys edit {key.name} --scope invoke --scope deploy)")
    if key.owner is None:
        raise Forbidden(f"this key has no owner to deploy chutes as: canopy keys edit {key.name} --owner NAME")
    return key.owner


@router.post("/chutes", status_code=201, response_model=ChuteOut, responses={200: {"model": ChuteOut}},
             openapi_extra={"requestBody": {"required": True, "description": (
                 "the bundle: a canopy.bundle tar.gz (sent as application/gzip; any content type is read as bytes)"),
                 "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def deploy(request: Request,
                 public: bool = Query(True, description="anyone's keys may call it (false: only the owner's)"),
                 max_instances: int | None = Query(None, ge=1, le=1 << 16,
                                                   description="most instances network-wide (default: the chute's)"),
                 shutdown_after_seconds: int | None = Query(None, ge=0, lt=1 << 31, description=(
                     f"idle seconds before an instance stops (default {DEFAULT_SHUTDOWN_AFTER_S})"))) -> Response:
    """Deploy a chute bundle (``canopy deploy``) as ``<key owner>/<the chute's name>``; see the module doc."""
    async with admit(request, "/chutes") as admission:
        gateway = admission.gateway
        owner = _deployer(admission.key)
        data = await _read_bundle(request)
        if not data:
            raise InvalidRequest("the body must be the chute bundle (canopy deploy builds it)", code="invalid_bundle")
        revision = hashlib.sha256(data).hexdigest()
        claimed = request.headers.get(REVISION_HEADER)
        if claimed is not None and claimed.strip().lower() != revision:
            raise InvalidRequest(f"X-Canopy-Revision {claimed.strip()[:80]!r} is not the sha256 of the body "
                                 f"({revision}): the upload was corrupted", param=REVISION_HEADER,
                                 code="revision_mismatch")
        info = await _inspect(data, revision)
        problem = selector_problem(info.node_selector)
        if problem:
            raise InvalidChute(f"chute {info.name}: {problem}")
        admission.record.model = f"{owner}/{info.name}"[:256]
        draft = ChuteRecord(chute_id(owner, info.name), owner, info.name, revision, public, {}, 1, 0, 0.0, 0.0)
        require(admission.key, "deploy", draft)
        description = {**info.model_dump(mode="json"), "username": owner, "chute_id": draft.chute_id}
        created = await gateway.registry.get(owner, info.name) is None
        try:
            record = await gateway.registry.put_revision(
                owner, info.name, revision, data, description, public=public,
                max_instances=max_instances if max_instances is not None else info.max_instances,
                shutdown_after_seconds=(shutdown_after_seconds if shutdown_after_seconds is not None
                                        else DEFAULT_SHUTDOWN_AFTER_S))
        except RegistryError as error:
            raise InvalidRequest(str(error), code="invalid_value") from None
        await gateway.registry.record_demand(record.chute_id, "warmup")
        gateway.directory.registered(record)
        out = chute_out(gateway, request, record, created=created)
        return await admission.answer(JSONResponse(out.model_dump(), status_code=201 if created else 200,
                                                   headers=admission.headers))


# --- list, get, delete, warmup --------------------------------------------------------------------


@router.get("/chutes", response_model=ChuteList)
async def list_chutes(request: Request) -> Response:
    """The public chutes and the caller's own (an admin key: all), by owner and name."""
    async with admit(request, "/chutes") as admission:
        key, gateway = admission.key, admission.gateway
        records = (await gateway.registry.list_all() if ADMIN in key.scopes
                   else await gateway.registry.list(include_private_of=key.owner))
        listed = ChuteList(chutes=[chute_out(gateway, request, record) for record in
                                   sorted(records, key=lambda r: (r.owner, r.name)) if visible(key, record)])
        return await admission.answer(JSONResponse(listed.model_dump(), headers=admission.headers))


@router.get("/chutes/{owner}/{name}", response_model=ChuteDetail)
async def get_chute(request: Request, owner: str, name: str) -> Response:
    """One chute with its revisions (404 ``not_found``; 403 for another owner's private chute)."""
    async with admit(request, "/chutes/{owner}/{name}") as admission:
        record = await known(admission, owner, name)
        if not visible(admission.key, record):
            raise Forbidden(f"chute {record.ref} is private to {record.owner}")
        revisions = [RevisionOut(revision=r.revision, size=r.size, created_at=r.created_at)
                     for r in await admission.gateway.registry.revisions(owner, name)]
        out = ChuteDetail(**chute_out(admission.gateway, request, record).model_dump(), revisions=revisions)
        return await admission.answer(JSONResponse(out.model_dump(), headers=admission.headers))


@router.delete("/chutes/{owner}/{name}", response_model=Deleted)
async def delete_chute(request: Request, owner: str, name: str) -> Response:
    """Delete a chute (its owner's key with the deploy scope, or an admin key); miners stop hosting it."""
    async with admit(request, "/chutes/{owner}/{name}") as admission:
        record = await known(admission, owner, name)
        require(admission.key, "delete", record)
        deleted = await admission.gateway.registry.delete(owner, name)
        admission.gateway.directory.unregistered(record.chute_id)
        out = Deleted(deleted=deleted, chute_id=record.chute_id)
        return await admission.answer(JSONResponse(out.model_dump(), headers=admission.headers))


@router.post("/chutes/{owner}/{name}/_canopy/warmup", status_code=202, response_model=Warmup)
async def warmup(request: Request, owner: str, name: str) -> Response:
    """Ask the network for an instance now (one ``warmup`` demand event the validators announce)."""
    async with admit(request, "/chutes/{owner}/{name}/_canopy/warmup") as admission:
        record = await known(admission, owner, name)
        require(admission.key, "warmup", record)
        await admission.gateway.registry.record_demand(record.chute_id, "warmup")
        out = Warmup(chute_id=record.chute_id, revision=record.revision,
                     instances=admission.gateway.directory.instances(record.chute_id))
        return await admission.answer(JSONResponse(out.model_dump(), status_code=202, headers=admission.headers))
