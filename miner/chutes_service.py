"""The miner's chute handlers on its axon: Invoke (routed to an instance) and Inventory.

Attached as ``ChutesService(manager, hosted, refused=..., devices=...,
loads=graval.loads).attach(axon)``, after ``GravalService`` so that its Inventory reply
(devices, what the instances hold on each, and the hosted chutes with their cords, schemas,
capacity and load) replaces the devices-only one. The validator and the API read ``ledger``
(compute seconds and tokens per chute).

Chutes are kept by (chute_id, revision): the hosting file's at start, the registry's as the
autoscaler starts (``register``) and retires (``unregister``) their revisions; Inventory
lists one ``HostedChute`` per pair with its live counts. An Invoke naming a ``revision``
goes to that revision's instances only (404 when it is not hosted); one without goes to the
newest registered revision of the chute that has a ready instance.

An Invoke is checked here (chute and cord known, payload within ``max_payload_bytes``),
takes the ready instance with free capacity and the fewest requests in flight
(``InstanceManager.acquire``), and is forwarded over the manager's keep-alive session.
The instance's body comes back as ``InvokeChunk`` lines (see ``protocol.chutes``): each
piece as it arrives, with no re-framing; a buffered reply in one chunk. Refusals before
the first chunk are typed HTTP errors (404, 405, 413, 422 with the instance's failing
fields, 429, 503, 500 remote_error, 502 instance_crashed, 504 instance_timeout); a failure
after it is a final chunk with ``error``. A connection the instance drops makes its
supervisor check it at once (a dead process is restarted, the others keep serving).
"""

from __future__ import annotations

import base64
import codecs
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import aiohttp
import pydantic_core

from miner.instances import Instance, InstanceManager
from protocol import errors
from protocol.axon import Axon, Caller
from protocol.chutes import (
    ChunkError, ChuteUnavailable, HostedChute, HostedCord, InstanceCrashed, InstanceTimeout, Invoke, InvokeChunk,
    RefusedChute, RemoteChuteError, Usage,
)
from protocol.graval.devices import DeviceSpec
from protocol.graval.synapses import DeviceLoad, Inventory, InventoryResponse

COMPUTE_HEADER = "X-Canopy-Compute-S"
_TEXT_TYPES = ("text/", "application/json", "application/x-ndjson", "application/javascript", "application/xml")
_CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)
_MAX_SCAN_TAIL = 1 << 16


# --- the ledger ------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One forwarded Invoke, as the ledger keeps it."""

    at: float
    chute_id: str
    path: str
    caller: str
    instance: str
    status: int
    compute_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class ChuteTotals:
    invocations: int = 0
    failures: int = 0
    refused: int = 0  # 429 / 503: no capacity
    compute_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Ledger:
    """Compute seconds and tokens served: running totals per chute and a bounded recent list."""

    recent_size: int = 1000
    totals: dict[str, ChuteTotals] = field(default_factory=dict)
    recent: deque[Invocation] = field(init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.recent_size)

    def record(self, entry: Invocation) -> None:
        totals = self.totals.setdefault(entry.chute_id, ChuteTotals())
        totals.invocations += 1
        totals.failures += entry.error is not None or entry.status >= 500
        totals.compute_s += entry.compute_s
        totals.prompt_tokens += entry.prompt_tokens
        totals.completion_tokens += entry.completion_tokens
        self.recent.append(entry)

    def refuse(self, chute_id: str) -> None:
        self.totals.setdefault(chute_id, ChuteTotals()).refused += 1

# --- reading usage and errors out of bodies ------------------------------------------------------


def _usage(value: Any) -> Usage | None:
    if isinstance(value, dict) and any(isinstance(value.get(k), int) for k in ("prompt_tokens", "completion_tokens")):
        try:
            return Usage.model_validate(value)
        except ValueError:
            return None
    return None


class _SseScanner:
    """Finds OpenAI ``usage`` and ``{"error": ...}`` events in an SSE body fed piece by piece."""

    def __init__(self) -> None:
        self.tail = b""
        self.usage: Usage | None = None
        self.error: ChunkError | None = None

    def feed(self, part: bytes) -> None:
        buffer = self.tail + part if self.tail else part
        events = buffer.split(b"\n\n")
        self.tail = events.pop()[-_MAX_SCAN_TAIL:]
        for event in events:
            if b'"usage"' in event or b'"error"' in event:
                self._event(event)

    def finish(self) -> None:
        if self.tail:
            self._event(self.tail)
            self.tail = b""

    def _event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if not data.startswith(b"{"):
                continue
            try:
                payload = json.loads(data)
            except ValueError:
                continue
            if not isinstance(payload, dict):
                continue
            usage = _usage(payload.get("usage"))
            if usage is not None:
                self.usage = usage
            if isinstance(payload.get("error"), dict) and "choices" not in payload:
                self.error = _chunk_error(payload["error"])


def _chunk_error(error: dict[str, Any]) -> ChunkError:
    remote = error.get("remote") if isinstance(error.get("remote"), dict) else None
    return ChunkError(type="remote_error", message=str(error.get("message", "")), remote=remote or error)


def _error_of(raw: bytes) -> dict[str, Any]:
    """The ``error`` object of an instance's typed error body ({} when it has none)."""
    try:
        payload = json.loads(raw)
    except ValueError:
        return {}
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else {}


# --- the service ---------------------------------------------------------------------------------


class ChutesService:
    """Invoke and Inventory handlers over an ``InstanceManager``."""

    def __init__(self, manager: InstanceManager, hosted: Sequence[HostedChute], *,
                 refused: Sequence[RefusedChute] = (), devices: Sequence[DeviceSpec] = (),
                 invoke_timeout_s: float = 600.0, max_payload_bytes: int = 1 << 20,
                 ledger: Ledger | None = None, loads: Callable[[], Awaitable[list[DeviceLoad]]] | None = None) -> None:
        self.manager = manager
        self.loads = loads  # the GraVal service's: what the instances hold on each device
        self.chutes: dict[tuple[str, str], HostedChute] = {}  # (chute_id, revision) -> chute, oldest first
        self._cords: dict[tuple[str, str], dict[str, HostedCord]] = {}
        self.refused = list(refused)
        self.devices = list(devices)
        self.max_payload_bytes = max_payload_bytes
        self.invoke_timeout_s = invoke_timeout_s
        self.ledger = ledger or Ledger()
        self._timeout = aiohttp.ClientTimeout(total=invoke_timeout_s)
        for chute in hosted:
            self.register(chute)

    def register(self, chute: HostedChute) -> None:
        """Serve ``chute`` at its revision (replacing the same pair; the newest added last)."""
        key = (chute.chute_id, chute.revision)
        routes: dict[str, HostedCord] = {}
        for cord in chute.cords:
            routes.setdefault(cord.path, cord)
        for cord in chute.cords:  # the public path as an alias, when no cord uses it as its own
            if cord.public_api_path:
                routes.setdefault(cord.public_api_path, cord)
        self._cords[key] = routes
        self.chutes[key] = chute

    def unregister(self, chute_id: str, revision: str) -> None:
        """Stop serving ``chute_id`` at ``revision`` (new calls get 404; calls in flight finish)."""
        self.chutes.pop((chute_id, revision), None)
        self._cords.pop((chute_id, revision), None)

    def revisions(self, chute_id: str) -> list[str]:
        """The registered revisions of ``chute_id``, oldest first."""
        return [revision for (cid, revision) in self.chutes if cid == chute_id]

    def attach(self, axon: Axon) -> "ChutesService":
        axon.attach(Invoke, self.invoke)
        axon.attach(Inventory, self.inventory)
        return self

    # --- Inventory -----------------------------------------------------------------------------

    def hosted(self) -> list[HostedChute]:
        """The hosted chutes with their current instance counts and load."""
        chutes = []
        for (chute_id, revision), chute in list(self.chutes.items()):
            instances, ready, in_flight = self.manager.load(chute_id, revision)
            chutes.append(chute.model_copy(update={"instances": instances, "ready_instances": ready,
                                                   "in_flight": in_flight}))
        return chutes

    async def inventory(self, synapse: Inventory, caller: Caller) -> InventoryResponse:
        loads = await self.loads() if self.loads is not None else []
        return InventoryResponse(devices=self.devices, chutes=self.hosted(), refused=self.refused, loads=loads)

    # --- Invoke --------------------------------------------------------------------------------

    def _target(self, synapse: Invoke) -> tuple[str, str]:
        """The (chute_id, revision) that serves ``synapse``."""
        if synapse.revision is not None:
            if (synapse.chute_id, synapse.revision) not in self.chutes:
                if not self.revisions(synapse.chute_id):
                    raise errors.NotFound(f"chute {synapse.chute_id} is not hosted on this miner")
                raise errors.NotFound(f"chute {synapse.chute_id} is not hosted at revision {synapse.revision}")
            return synapse.chute_id, synapse.revision
        revisions = self.revisions(synapse.chute_id)
        if not revisions:
            raise errors.NotFound(f"chute {synapse.chute_id} is not hosted on this miner")
        for revision in reversed(revisions):
            if self.manager.load(synapse.chute_id, revision)[1]:
                return synapse.chute_id, revision
        return synapse.chute_id, revisions[-1]

    def _cord(self, synapse: Invoke, key: tuple[str, str]) -> HostedCord:
        chute = self.chutes[key]
        cord = self._cords[key].get(synapse.path)
        if cord is None:
            known = ", ".join(sorted({c.path for c in chute.cords})) or "none"
            raise errors.NotFound(f"chute {chute.name} has no cord {synapse.path} (its cords: {known})")
        if cord.method != synapse.method:
            raise errors.MethodNotAllowed(f"cord {cord.path} of chute {chute.name} takes {cord.method}, not {synapse.method}")
        return cord

    async def invoke(self, synapse: Invoke, caller: Caller) -> AsyncIterator[InvokeChunk]:
        key = self._target(synapse)
        cord = self._cord(synapse, key)
        body = b"" if synapse.payload is None else pydantic_core.to_json(synapse.payload)
        if len(body) > self.max_payload_bytes:
            raise errors.PayloadTooLarge(f"payload of {len(body)} bytes exceeds this miner's {self.max_payload_bytes}-byte limit")
        instance = self.manager.acquire(*key)
        if instance is None:
            self.ledger.refuse(synapse.chute_id)
            _, ready, in_flight = self.manager.load(*key)
            if not ready:
                raise ChuteUnavailable(f"no instance of chute {synapse.chute_id} is ready; retry shortly",
                                       headers={"Retry-After": "5"})
            raise errors.Busy(f"all {ready} instance(s) of chute {synapse.chute_id} are at capacity ({in_flight} in flight)",
                              headers={"Retry-After": "1"})
        entry = Invocation(at=time.time(), chute_id=synapse.chute_id, path=cord.path, caller=caller.hotkey,
                           instance=instance.id, status=0, compute_s=0.0)
        started = time.perf_counter()
        finished = False
        try:
            async for chunk in self._forward(instance, cord, synapse, body, entry, started):
                yield chunk
            finished = True
        except errors.ProtocolError as error:
            entry.error = error.type
            raise
        finally:
            self.manager.release(instance)
            if not entry.compute_s:
                entry.compute_s = time.perf_counter() - started
            if not finished and entry.error is None:
                entry.error = "cancelled"  # the caller went away mid-stream (or the handler failed)
            self.ledger.record(entry)

    async def _forward(self, instance: Instance, cord: HostedCord, synapse: Invoke, body: bytes, entry: Invocation,
                       started: float) -> AsyncIterator[InvokeChunk]:
        headers = {"Content-Type": "application/json"} if body else None
        try:
            response = await self.manager.session_for(instance).request(cord.method, instance.url + cord.path, data=body or None,
                                                          headers=headers, timeout=self._timeout)
        except TimeoutError:
            raise InstanceTimeout(f"instance {instance.id} did not answer within {self.invoke_timeout_s:g}s") from None
        except _CONNECTION_ERRORS as error:
            self.manager.report_failure(instance, f"dropped a request before answering ({type(error).__name__})")
            raise InstanceCrashed(f"instance {instance.id} failed before answering: {type(error).__name__}") from None
        async with response:
            status = entry.status = response.status
            raw: bytes | None = None  # an error reply already read, passed through as data
            if status in (413, 422, 429, 503) or (status == 500 and response.content_type == "application/json"):
                refusal, raw = await self._refusal(instance, response)
                if refusal is not None:
                    raise refusal
            content_type = response.headers.get("Content-Type", "")
            text = not content_type or content_type.startswith(_TEXT_TYPES) or "json" in content_type
            sse = content_type.startswith("text/event-stream")
            if raw is not None or not synapse.stream or response.content_length is not None:
                yield await self._buffered(instance, response, raw, content_type, text, sse, entry, started)
                return
            decoder = codecs.getincrementaldecoder("utf-8")("replace") if text else None
            scanner = _SseScanner() if sse else None
            first = True
            failure: ChunkError | None = None
            try:
                async for part in response.content.iter_any():
                    if scanner is not None:
                        scanner.feed(part)
                    data = decoder.decode(part) if decoder is not None else base64.b64encode(part).decode()
                    if not data:
                        continue
                    if first:
                        first = False
                        yield InvokeChunk(data=data, encoding=None if text else "base64", status=status,
                                          content_type=content_type)
                    else:
                        yield InvokeChunk(data=data)
            except TimeoutError:
                failure = ChunkError(type=InstanceTimeout.type,
                                     message=f"instance {instance.id} exceeded the {self.invoke_timeout_s:g}s invoke timeout")
            except _CONNECTION_ERRORS as error:
                self.manager.report_failure(instance, f"dropped a stream ({type(error).__name__})")
                failure = ChunkError(type=InstanceCrashed.type, message=f"instance {instance.id} failed mid-stream: "
                                     f"{type(error).__name__} (restarted if it died)")
            tail = decoder.decode(b"", final=True) if decoder is not None else ""
            if scanner is not None:
                scanner.finish()
                failure = failure or scanner.error
            entry.compute_s = time.perf_counter() - started
            usage = scanner.usage if scanner is not None else None
            self._account(entry, usage, failure)
            yield InvokeChunk(data=tail or None, status=status if first else None,
                              content_type=content_type if first else None, done=True,
                              compute_s=entry.compute_s, usage=usage, error=failure)

    async def _buffered(self, instance: Instance, response: aiohttp.ClientResponse, raw: bytes | None,
                        content_type: str, text: bool, sse: bool, entry: Invocation, started: float) -> InvokeChunk:
        """The whole body as one final chunk (non-streaming cords, or ``stream=False``)."""
        try:
            if raw is None:
                raw = await response.read()
        except TimeoutError:
            raise InstanceTimeout(f"instance {instance.id} did not finish within {self.invoke_timeout_s:g}s") from None
        except _CONNECTION_ERRORS as error:
            self.manager.report_failure(instance, f"dropped a reply ({type(error).__name__})")
            raise InstanceCrashed(f"instance {instance.id} failed while replying: {type(error).__name__}") from None
        usage: Usage | None = None
        failure: ChunkError | None = None
        if sse:
            scanner = _SseScanner()
            scanner.feed(raw)
            scanner.finish()
            usage, failure = scanner.usage, scanner.error
        elif b'"usage"' in raw and content_type.startswith("application/json"):
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            usage = _usage(payload.get("usage")) if isinstance(payload, dict) else None
        reported = response.headers.get(COMPUTE_HEADER)
        try:
            entry.compute_s = float(reported) if reported else time.perf_counter() - started
        except ValueError:
            entry.compute_s = time.perf_counter() - started
        self._account(entry, usage, failure)
        data = raw.decode("utf-8", "replace") if text else base64.b64encode(raw).decode()
        return InvokeChunk(data=data, encoding=None if text else "base64", status=response.status, content_type=content_type,
                           done=True, compute_s=entry.compute_s, usage=usage, error=failure)

    @staticmethod
    def _account(entry: Invocation, usage: Usage | None, failure: ChunkError | None) -> None:
        if usage is not None:
            entry.prompt_tokens, entry.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        if failure is not None:
            entry.error = failure.type

    async def _refusal(self, instance: Instance,
                       response: aiohttp.ClientResponse) -> tuple[errors.ProtocolError | None, bytes]:
        """The typed error for an instance's refusal (None: pass the reply through), and its body."""
        try:
            raw = await response.read()
        except _CONNECTION_ERRORS:
            raw = b""
        error = _error_of(raw)
        message = str(error.get("message") or f"the instance answered {response.status}")
        kind = error.get("type")
        refusal: errors.ProtocolError | None = None
        if response.status == 422:
            refusal = errors.InvalidPayload(message, detail=error.get("detail"))
        elif response.status == 413:
            refusal = errors.PayloadTooLarge(message)
        elif response.status == 429:
            refusal = errors.Busy(f"instance {instance.id} is at capacity: {message}", headers={"Retry-After": "1"})
        elif response.status == 503 and kind == "unavailable":
            refusal = ChuteUnavailable(f"instance {instance.id} is not serving: {message}", headers={"Retry-After": "5"})
        elif response.status == 500 and kind == "remote_error":
            refusal = RemoteChuteError(message, detail={"remote": error.get("remote")})
        return refusal, raw  # None: not ours to type (e.g. a passthrough upstream's own error)
