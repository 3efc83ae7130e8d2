"""The Subnet 1 stream of ``POST /chat``: a miner's OpenAI SSE re-cut as Subnet 1 chunks.

Callers: ``api.chat_routes`` (the SN1 shape with ``stream: true``). Each chunk carries
``delta``, ``finish_reason``, ``accumulated_chunks``, ``accumulated_chunks_timings``,
``timestamp``, ``sequence_number`` and ``selected_uid``; as SSE (``data: ...`` ending in
``data: [DONE]``) or NDJSON when the client accepts ``application/x-ndjson``. A failure
after the first byte is a last chunk with ``finish_reason: "error"`` and the error envelope.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Request

from api.errors import UpstreamFailed
from api.idempotency import Claim
from api.keys import KeyInfo
from api.pipeline import log_request, miner_headers, refund, stream_ended
from api.requestlog import RequestRecord
from protocol import errors as wire


def _deltas(events: str) -> list[tuple[str, str | None]]:
    """(content delta, finish_reason) of each OpenAI chunk in complete SSE events."""
    out = []
    for event in events.split("\n\n"):
        for line in event.splitlines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                continue
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content") or ""
                if delta or choice.get("finish_reason"):
                    out.append((delta, choice.get("finish_reason")))
    return out


async def relay_sn1(request: Request, call: Any, key: KeyInfo, record: RequestRecord, started: float, ndjson: bool,
                 claim: Claim | None = None):
    """The miner's OpenAI SSE re-cut as Subnet 1 chunks; a failure mid-stream is a last error chunk.
    A clean stream is kept for an ``Idempotency-Key`` retry (``claim``) as the frames sent."""
    chunks: list[str] = []
    sent: list[str] = []
    timings: list[float] = []
    sequence = 0
    status = 200
    buffer = ""

    def frame(item: dict[str, Any]) -> str:
        text = json.dumps(item)
        sent.append(text + "\n" if ndjson else f"data: {text}\n\n")
        return sent[-1]

    def chunk(delta: str, finish_reason: str | None, **extra: Any) -> str:
        nonlocal sequence
        sequence += 1
        return frame({"delta": delta, "finish_reason": finish_reason, "accumulated_chunks": list(chunks),
                      "accumulated_chunks_timings": list(timings), "timestamp": time.time(),
                      "sequence_number": sequence, "selected_uid": call.route.uid, **extra})

    try:
        async for piece in call.pieces():
            buffer += piece
            complete, _, buffer = buffer.rpartition("\n\n")
            for delta, finish_reason in _deltas(complete):
                if delta:
                    chunks.append(delta)
                    timings.append(round(time.perf_counter() - started, 6))
                yield chunk(delta, finish_reason)
        for delta, finish_reason in _deltas(buffer):
            if delta:
                chunks.append(delta)
                timings.append(round(time.perf_counter() - started, 6))
            yield chunk(delta, finish_reason)
        if not ndjson:
            sent.append("data: [DONE]\n\n")
            yield sent[-1]
    except wire.ProtocolError as error:
        status, record.error = 502, error.type
        refund(request, key, record)
        failure = UpstreamFailed(f"the miner failed mid-stream: {error.type}: {error.message}")
        yield chunk("", "error", **failure.body())
        if not ndjson:
            yield "data: [DONE]\n\n"
    finally:  # synchronous up to the last line: a client that hung up cancels every await here
        status = stream_ended(request, key, record, call, "".join(chunks), status)
        if claim is not None:
            if call.finished and not record.error and status < 500:
                claim.finish_later(status, "".join(sent), {**miner_headers(call.route), "content-type":
                                                          "application/x-ndjson" if ndjson else "text/event-stream"})
            else:
                claim.release()
        log_request(request, record, status)
        await call.close()
