"""Calling miners for the API: race, failover, timeouts, cancellation, organic invocation records.

Seam: the gateway's ``Caller`` (``api.gateway``): the admission step and ``/chat`` open every
miner call through ``Upstream.open``. Below it: ``protocol.dendrite.Dendrite.stream`` (signed ``Invoke`` calls to miner axons,
NDJSON ``InvokeChunk``s back), ``api.directory.MinerDirectory`` (in-flight counts) and the
validator's store (one ``Invocation`` row, ``source="organic"``, per miner call that ended,
written in batches by ``api.batch.BatchWriter``; ``drain`` waits for them).

What a row credits is measured here, not taken from the miner: ``compute_s`` is the call's
duration as the gateway saw it (request sent -> last chunk received; the miner's report is
kept in ``measured_compute_s``), and the token counts are at most what the relayed text can
hold (``api.tokenbound``). A call is ``steered`` unless the route says the gateway chose the
candidates itself (strategy ``default``): the caller picked the miner, so scoring skips it.

``open`` starts up to ``race`` candidates at once, waits for the first one whose reply
carries content, cancels the others and returns a ``Call``; a candidate that fails before
its first byte (typed protocol error, timeout, refused connection, a 5xx from the
instance) is recorded as failed and the next candidate takes its place. Each miner call
runs in its own task that pumps chunks into a queue, so cancelling the request (a client
that hung up) cancels the miner calls. Errors that are the caller's fault
(``invalid_payload``, ``payload_too_large``) stop the failover at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence


from api.batch import BatchWriter
from api.directory import Route
from api.tokenbound import ReplyMeter, prompt_bound
from protocol import errors
from protocol.chutes import Invoke, InvokeChunk
from store.tables import ORGANIC

if TYPE_CHECKING:
    from api.gateway import Directory, Store

CLIENT_ERRORS = frozenset({"invalid_payload", "payload_too_large", "malformed_json"})
_END = object()


class NoAnswer(Exception):
    """No candidate produced content: ``last`` is the last miner error, ``tried`` the uids tried."""

    def __init__(self, message: str, tried: list[int], last: errors.ProtocolError | None = None) -> None:
        super().__init__(message)
        self.tried, self.last = tried, last

    @property
    def detail(self) -> str:
        return f"{self.last.type}: {self.last.message}" if self.last is not None else "no answer"

    @property
    def client_error(self) -> bool:
        return self.last is not None and self.last.type in CLIENT_ERRORS

    @property
    def timed_out(self) -> bool:
        return isinstance(self.last, (errors.RequestTimeout, errors.InstanceTimeout))


def _kind(error: BaseException) -> str:
    return error.type if isinstance(error, errors.ProtocolError) else type(error).__name__


class _Attempt:
    """One miner call in its own task; chunks (or the error, or ``_END``) go into ``queue``."""

    def __init__(self, upstream: "Upstream", route: Route, synapse: Invoke, timeout_s: float, steered: bool) -> None:
        self.upstream, self.route, self.steered = upstream, route, steered
        self.payload = synapse.payload
        self.queue: asyncio.Queue = asyncio.Queue()
        self.started = time.perf_counter()
        self.ttft_s: float | None = None
        self.last_s: float | None = None  # request sent -> the last chunk received (the pump's clock)
        self.status: int | None = None
        self.content_type: str | None = None
        upstream.directory.acquire(route)
        self.released = False
        self.task = asyncio.create_task(self._pump(synapse, timeout_s))

    async def _pump(self, synapse: Invoke, timeout_s: float) -> None:
        try:
            async for chunk in self.upstream.dendrite.stream(self.route.neuron, synapse, timeout=timeout_s,
                                                             idle_timeout=self.upstream.idle_timeout_s):
                self.last_s = time.perf_counter() - self.started
                self.queue.put_nowait(chunk)
            self.queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except errors.ProtocolError as error:
            self.queue.put_nowait(error)
        except Exception as error:  # anything unexpected reads as a broken connection
            self.queue.put_nowait(errors.ConnectionFailed(f"{type(error).__name__}: {error}"))

    async def first(self) -> InvokeChunk | None:
        """The first chunk with content (or the done chunk); raises the call's error."""
        while True:
            item = await self.queue.get()
            if item is _END:
                return None
            if isinstance(item, BaseException):
                raise item
            if item.status is not None:
                self.status, self.content_type = item.status, item.content_type
            if item.error is not None:
                raise _chunk_error(item)
            if item.data or item.done:
                self.ttft_s = time.perf_counter() - self.started
                return item

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.upstream.directory.release(self.route)

    async def cancel(self) -> None:
        self.task.cancel()  # synchronous first: an await here may itself be cancelled (client gone)
        self.release()
        with contextlib.suppress(BaseException):
            await self.task


def _chunk_error(chunk: InvokeChunk) -> errors.ProtocolError:
    """The typed error a chunk's ``error`` names."""
    assert chunk.error is not None
    body = {"error": {"type": chunk.error.type, "message": chunk.error.message}}
    return errors.error_from_body(500, json.dumps(body).encode())


@dataclass
class Call:
    """The miner that answered: its first content chunk, and the rest as ``pieces()``."""

    upstream: "Upstream"
    attempt: _Attempt
    first_chunk: InvokeChunk
    tried: list[int]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    compute_s: float = 0.0  # as the miner reported it (never credited: see ``close``)
    finished: bool = False
    error: str = ""
    recorded: bool = field(default=False, repr=False)
    meter: ReplyMeter | None = field(default=None, repr=False)

    @property
    def route(self) -> Route:
        return self.attempt.route

    @property
    def status(self) -> int:
        return self.attempt.status or 200

    @property
    def content_type(self) -> str:
        return self.attempt.content_type or "application/json"

    @property
    def ttft_s(self) -> float | None:
        return self.attempt.ttft_s

    def _absorb(self, chunk: InvokeChunk) -> None:
        if chunk.usage is not None:
            self.prompt_tokens, self.completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
        if chunk.compute_s is not None:
            self.compute_s = chunk.compute_s

    async def pieces(self) -> AsyncIterator[str]:
        """Every data piece of the reply as it arrives; raises the miner's error mid-stream."""
        chunk = self.first_chunk
        self.meter = ReplyMeter(self.content_type if chunk.encoding != "base64" else None)
        try:
            while True:
                self._absorb(chunk)
                if chunk.error is not None:
                    raise _chunk_error(chunk)
                if chunk.data:
                    self.meter.feed(chunk.data)
                    yield chunk.data
                if chunk.done:
                    break
                item = await self.attempt.queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                chunk = item
            self.finished = True
            await self.close()
        except errors.ProtocolError as error:
            self.error = _kind(error)
            await self.close()
            raise

    async def read(self) -> str:
        return "".join([piece async for piece in self.pieces()])

    async def close(self) -> None:
        """Stop the miner call (if still running), free its slot and record it once."""
        if not self.finished and not self.error:
            await self.attempt.cancel()  # the client went away: not the miner's failure, not recorded
            return
        self.attempt.release()
        if not self.recorded:
            self.recorded = True
            prompt = min(self.prompt_tokens, prompt_bound(self.attempt.payload)) if self.prompt_tokens > 0 else 0
            completion = self.completion_tokens
            if completion > 0:
                completion = min(completion, self.meter.completion_bound() if self.meter else 0)
            self.upstream.record(self.route, ok=self.finished and not self.error, error=self.error,
                                 started=self.attempt.started, ttft_s=self.ttft_s,
                                 compute_s=self.attempt.last_s or 0.0, measured_compute_s=self.compute_s,
                                 prompt_tokens=prompt, completion_tokens=completion, steered=self.attempt.steered)


class Upstream:
    def __init__(self, dendrite: Any, directory: Directory, store: Store, *, timeout_s: float = 60.0,
                 idle_timeout_s: float | None = 30.0) -> None:
        self.dendrite, self.directory, self.store = dendrite, directory, store
        self.timeout_s, self.idle_timeout_s = timeout_s, idle_timeout_s
        self._rows = BatchWriter(store.record_invocations, what="organic invocation rows")

    def record(self, route: Route, *, ok: bool, error: str = "", started: float, ttft_s: float | None = None,
               compute_s: float = 0.0, measured_compute_s: float | None = None, prompt_tokens: int = 0,
               completion_tokens: int = 0, steered: bool = True) -> None:
        """Queue the organic ``Invocation`` row (written in batches, off the answer's path: ``api.batch``):
        ``compute_s`` and the tokens as credited (measured or bounded here), ``measured_compute_s``
        as the miner reported it."""
        row = {"miner_hotkey": route.hotkey, "chute_id": route.chute.chute_id, "source": ORGANIC, "ok": ok,
               "error": error[:64], "compute_s": compute_s, "measured_compute_s": measured_compute_s,
               "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
               "latency_s": time.perf_counter() - started, "ttft_s": ttft_s, "steered": steered,
               "created_at": time.time()}
        self._rows.add(row)

    async def drain(self) -> None:
        """Write the invocation rows still queued."""
        await self._rows.drain()

    async def open(self, routes: Sequence[Route], path: str, payload: Any, *, stream: bool, race: int = 1,
                   timeout_s: float | None = None, tried: list[int] | None = None, steered: bool = True,
                   method: str = "POST") -> Call:
        """The first candidate that answers with content (see the module docstring); the uids
        tried are appended to ``tried`` as they start (so a cancelled caller still knows them).
        ``steered=False`` only when the gateway chose ``routes`` itself (strategy ``default``):
        any other call is served and recorded but never scored. Each miner is asked for the
        revision its route reports (the registry's current one: ``api.directory``)."""
        synapse = Invoke(chute_id="-", path=path, method=method, payload=payload, stream=stream)
        timeout = timeout_s or self.timeout_s
        queue, tried = list(routes), ([] if tried is None else tried)
        if race <= 1:
            return await self._in_turn(queue, synapse, timeout, tried, steered)
        active: dict[asyncio.Task, _Attempt] = {}
        last: errors.ProtocolError | None = None
        try:
            while True:
                while len(active) < race and queue:
                    attempt = self._start(queue.pop(0), synapse, timeout, tried, steered)
                    active[asyncio.create_task(attempt.first())] = attempt
                if not active:
                    raise NoAnswer(f"no miner answered ({len(tried)} tried)", tried, last)
                done, _ = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    attempt = active.pop(task)
                    failure = task.exception()
                    last = await self._judge(attempt, None if failure else task.result(), failure)
                    if last is None:
                        return Call(self, attempt, task.result(), tried)
                    if last.type in CLIENT_ERRORS:
                        raise NoAnswer(last.message, tried, last)
        finally:  # the winner, a refusal, a hang-up: the calls still running are stopped
            for task, attempt in active.items():
                task.cancel()
                await attempt.cancel()

    async def _in_turn(self, queue: list[Route], synapse: Invoke, timeout: float, tried: list[int],
                       steered: bool) -> Call:
        """``open`` without a race: one candidate at a time, no task per attempt."""
        last: errors.ProtocolError | None = None
        for route in queue:
            attempt = self._start(route, synapse, timeout, tried, steered)
            try:
                chunk, failure = await attempt.first(), None
            except Exception as error:  # noqa: BLE001 - judged below
                chunk, failure = None, error
            except BaseException:
                await attempt.cancel()
                raise
            last = await self._judge(attempt, chunk, failure)
            if last is None:
                assert chunk is not None  # _judge: no error means the first chunk came
                return Call(self, attempt, chunk, tried)
            if last.type in CLIENT_ERRORS:
                raise NoAnswer(last.message, tried, last)
        raise NoAnswer(f"no miner answered ({len(tried)} tried)", tried, last)

    def _start(self, route: Route, synapse: Invoke, timeout: float, tried: list[int], steered: bool) -> _Attempt:
        tried.append(route.uid)
        update = {"chute_id": route.chute.chute_id, "revision": route.chute.revision or None}
        return _Attempt(self, route, synapse.model_copy(update=update), timeout, steered)

    async def _judge(self, attempt: _Attempt, chunk: InvokeChunk | None,
                     failure: BaseException | None) -> errors.ProtocolError | None:
        """None when ``attempt`` answered with content; else its error, the attempt stopped and
        recorded as failed (an empty reply and a 5xx from the instance are failures too)."""
        if failure is None and chunk is None:
            failure = errors.DecodeError("the miner's reply was empty")
        if failure is None and (attempt.status or 200) >= 500:
            failure = errors.RemoteError(f"http_{attempt.status}", "the instance answered an error",
                                         status=attempt.status or 500)
        if failure is None:
            return None
        error = failure if isinstance(failure, errors.ProtocolError) else \
            errors.ConnectionFailed(f"{type(failure).__name__}: {failure}")
        await attempt.cancel()
        self.record(attempt.route, ok=False, error=_kind(failure), started=attempt.started, steered=attempt.steered)
        return error
