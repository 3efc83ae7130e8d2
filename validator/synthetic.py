"""Synthetic work: the invocations a validator sends to judge a miner's hosted chutes.

The seam between a round of the validator and a miner's chutes: for every chute a miner
lists in its Inventory, ``probes_for(chute, round_seed=...)`` gives the probes (the same for
every miner hosting that chute in the round), ``run_probe`` sends one over the dendrite and
judges the reply, and ``flag_disagreements`` compares the results of one round across
miners. The ``ProbeResult`` rows feed the scoring (availability, latency, flags).

- LLM chutes (a cord at ``LLM_PATH``) get chat prompts from a fixed pool with greedy decoding
  and a fixed seed, streamed with usage. A result is ok when every SSE event is a
  ``chat.completion.chunk`` (parsed with the SDK's OpenAI model,
  ``canopy.templates.openai_schema.ChatCompletionChunk``: text deltas, a known
  ``finish_reason``, integer token counts), a ``finish_reason`` arrives, the usage event has
  ``prompt_tokens > 0``, ``0 < completion_tokens <= max_tokens``, a matching total and agrees
  with the miner's done chunk, and the text is non-empty and not longer than the counted
  tokens could make. Greedy outputs of one key are then compared across miners.
- Other chutes get one cord per round (not passthrough, not streaming), called with a value
  sampled from its input schema (``validator.schema_sample``); ok when the instance answers
  2xx and, for a JSON reply to a cord with an output schema, the body fits that schema.
  Their outputs are compared across miners too (exactly: a deterministic cord answers
  every honest host alike).
- Every probe names the registry revision the miner listed (only chutes at the registry's
  current revision are probed: ``validator.loop.registry_chutes``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for
from loguru import logger
from pydantic import ValidationError

from canopy.chains import SSEDecoder
from canopy.templates.openai_schema import ChatCompletionChunk
from protocol import errors
from protocol.chutes import HostedChute, HostedCord, Invoke, InvokeChunk
from protocol.dendrite import Dendrite
from validator import schema_sample

LLM_PATH = "/v1/chat/completions"
OUTPUT_LIMIT = 4096
MAX_CHARS_PER_TOKEN = 48  # a completion longer than this per counted token undercounts its tokens

PROMPTS: tuple[str, ...] = (
    "Name three primary colors.", "What is the capital of France? Answer in one word.",
    "Write one sentence about the ocean.", "Count from one to five in words.", "Give a synonym for 'happy'.",
    "What is 12 times 7?", "Translate 'good morning' into Spanish.", "List the first four planets from the sun.",
    "Describe a cat in five words.", "What does CPU stand for?", "Write a haiku about autumn leaves.",
    "Which is heavier, a kilogram of iron or a kilogram of feathers?", "Suggest a name for a small bakery.",
    "Explain in one sentence why the sky is blue.", "What is the opposite of 'ancient'?",
    "Give an example of a prime number greater than 50.", "Complete the sentence: The quick brown fox...",
    "Name a mammal that can fly.", "Spell the word 'necessary' backwards.",
    "What is the boiling point of water in Celsius?", "Write a short greeting for a birthday card.",
    "Which continent is Kenya in?", "Name two programming languages.", "What is the square root of 81?",
)


@dataclass(frozen=True)
class Probe:
    chute_id: str
    kind: Literal["llm", "schema"]
    path: str
    method: str
    payload: Any
    key: str  # groups comparable probes across miners; same key => byte-identical request
    stream: bool
    output_schema: dict | None = None
    revision: str | None = None  # the registry revision probed (every host of the chute runs it)


@dataclass
class ProbeResult:
    miner_hotkey: str
    chute_id: str
    key: str
    kind: str
    ok: bool
    error: str = ""  # "" when ok; else timeout, connection_error, a protocol kind, bad_response, schema_mismatch, http_<n>
    detail: str = ""
    latency_s: float = 0.0  # request sent -> last chunk
    ttft_s: float | None = None  # LLM: request sent -> first non-empty content delta
    compute_s: float = 0.0  # as the miner's done chunk reported it
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float | None = None  # completion_tokens / (last token time - first token time); None if < 2 tokens
    output: str = ""  # LLM: the greedy completion; schema: canonical JSON of the output (both cut at 4 kB)
    flagged: bool = False  # set by flag_disagreements: this output disagrees with the majority


def _digest(*parts: Any) -> bytes:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()).digest()


def _probe(chute: HostedChute, kind: Literal["llm", "schema"], cord: HostedCord, payload: Any, stream: bool,
           output_schema: dict | None = None) -> Probe:
    revision = chute.revision or None
    key = f"{chute.chute_id}:{revision or ''}:{cord.method}:{cord.path}:{_digest(payload, stream).hex()[:16]}"
    return Probe(chute.chute_id, kind, cord.path, cord.method, payload, key, stream, output_schema, revision)


def probes_for(chute: HostedChute, *, round_seed: int, llm_prompts: int = 1, max_tokens: int = 32) -> list[Probe]:
    """Deterministic in (chute.chute_id, its cords, round_seed): every miner hosting the chute gets the same probes in one round."""
    rng = random.Random(_digest("canopy-synthetic", round_seed, chute.chute_id))
    llm = next((cord for cord in chute.cords if cord.path == LLM_PATH), None)
    if llm is not None:
        seed = int.from_bytes(_digest("canopy-llm-seed", round_seed)[:4], "big") & 0x7FFFFFFF
        prompts = rng.sample(PROMPTS, min(max(llm_prompts, 0), len(PROMPTS)))
        return [_probe(chute, "llm", llm, {
            "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "seed": seed, "stream": True, "stream_options": {"include_usage": True}}, True) for prompt in prompts]
    cords = sorted((c for c in chute.cords if not c.passthrough and not c.stream), key=lambda c: (c.path, c.method))
    rng.shuffle(cords)
    for cord in cords:
        payload = _payload(chute, cord, round_seed)
        if payload is _SKIP:
            continue
        output_schema = cord.output_schema if _usable_schema(cord.output_schema) else None
        return [_probe(chute, "schema", cord, payload, False, output_schema)]
    return []


_SKIP = object()


def _payload(chute: HostedChute, cord: HostedCord, round_seed: int) -> Any:
    """A value for the cord's input schema (its minimal schema when the full one cannot be sampled)."""
    if cord.input_schema is None:
        return None
    problems = []
    for schema in (cord.input_schema, cord.minimal_input_schema):
        if schema is None:
            continue
        try:
            return schema_sample.sample(schema, random.Random(_digest("canopy-payload", round_seed, chute.chute_id,
                                                                      cord.path, schema)))
        except schema_sample.Unsamplable as error:
            problems.append(str(error))
    logger.debug("synthetic: skipping cord {} of chute {} ({}): {}", cord.path, chute.name, chute.chute_id,
                 "; ".join(problems))
    return _SKIP


def _usable_schema(schema: dict | None) -> bool:
    """An output schema worth checking against: a non-empty, valid JSON schema."""
    if not isinstance(schema, dict) or not schema:
        return False
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError:
        return False
    return True


async def run_probe(dendrite: Dendrite, target: Any, miner_hotkey: str, probe: Probe, *, timeout: float) -> ProbeResult:
    """Never raises for a miner's failure (returns ok=False with error/detail)."""
    result = ProbeResult(miner_hotkey, probe.chute_id, probe.key, probe.kind, ok=False)
    reply = _Reply(probe)
    started = time.perf_counter()
    try:
        synapse = Invoke(chute_id=probe.chute_id, path=probe.path, method=probe.method, payload=probe.payload,
                         stream=probe.stream, revision=probe.revision)
        chunks = dendrite.stream(target, synapse, timeout=timeout, idle_timeout=timeout)
        async with asyncio.timeout(timeout + 1.0), contextlib.aclosing(chunks):  # backstop: the dendrite's comes first
            async for chunk in chunks:
                assert isinstance(chunk, InvokeChunk)  # an Invoke stream yields InvokeChunk lines
                reply.add(chunk, time.perf_counter() - started)
                if chunk.done:
                    break
        error, detail = reply.judge(result)
    except errors.ProtocolError as failure:
        error, detail = failure.type, failure.message
    except TimeoutError:
        error, detail = "timeout", f"no complete reply within {timeout:g}s"
    except ValidationError as failure:  # the chute id or path the miner listed does not fit an Invoke
        error, detail = errors.InvalidPayload.type, f"the probe is not a valid Invoke: {failure.error_count()} error(s)"
    except ValueError as failure:  # undecodable data in a chunk (bad base64, say)
        error, detail = "bad_response", f"{type(failure).__name__}: {failure}"
    result.latency_s = reply.last_s if reply.last_s is not None else time.perf_counter() - started
    result.ok, result.error, result.detail = not error, error, " ".join(detail.split())[:300]
    return result


class _Reply:
    """The chunks of one Invoke reply, timed, decoded as they arrive."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.status: int | None = None
        self.content_type = ""
        self.pieces: list[bytes] = []
        self.done: InvokeChunk | None = None
        self.last_s: float | None = None
        self.decoder = SSEDecoder() if probe.kind == "llm" else None
        self.chunks: list[ChatCompletionChunk | str] = []  # each SSE event parsed, or why it is not a chunk
        self.token_times: list[float] = []

    def add(self, chunk: InvokeChunk, at: float) -> None:
        self.last_s = at
        if chunk.status is not None and self.status is None:
            self.status, self.content_type = chunk.status, chunk.content_type or ""
        if chunk.done:
            self.done = chunk
        if not chunk.data:
            return
        piece = base64.b64decode(chunk.data) if chunk.encoding == "base64" else chunk.data.encode()
        self.pieces.append(piece)
        if self.decoder is not None:
            for event in self.decoder.feed(piece.decode("utf-8", "replace")):
                self.chunks.append(chunk_of(event))
                if _content(self.chunks[-1]):
                    self.token_times.append(at)

    def judge(self, result: ProbeResult) -> tuple[str, str]:
        """(error, detail) for the whole reply, filling the measurements into ``result``."""
        done = self.done
        if done is None:
            return "bad_response", "the reply ended without a done chunk"
        result.compute_s = float(done.compute_s or 0.0)
        if done.usage is not None:
            result.prompt_tokens, result.completion_tokens = done.usage.prompt_tokens, done.usage.completion_tokens
        if done.error is not None:
            return done.error.type, done.error.message
        body = b"".join(self.pieces)
        if self.status is None:
            return "bad_response", "no chunk carried the instance's HTTP status"
        if not 200 <= self.status < 300:
            return f"http_{self.status}", body[:200].decode("utf-8", "replace")
        if self.probe.kind == "llm":
            return self._judge_llm(result)
        return self._judge_schema(result, body)

    def _judge_schema(self, result: ProbeResult, body: bytes) -> tuple[str, str]:
        if "json" not in self.content_type:
            result.output = body.decode("utf-8", "replace")[:OUTPUT_LIMIT]
            return "", ""
        try:
            value = json.loads(body)
        except ValueError:
            result.output = body.decode("utf-8", "replace")[:OUTPUT_LIMIT]
            return "bad_response", f"the {self.content_type} body is not JSON"
        result.output = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)[:OUTPUT_LIMIT]
        problem = schema_sample.check(value, self.probe.output_schema) if self.probe.output_schema else None
        return ("schema_mismatch", problem) if problem else ("", "")

    def _judge_llm(self, result: ProbeResult) -> tuple[str, str]:
        if self.decoder is not None:
            self.chunks.extend(chunk_of(event) for event in self.decoder.flush())
        if not self.content_type.startswith("text/event-stream"):
            return "bad_response", f"expected an SSE stream, got {self.content_type or 'no content type'}"
        text, finish, usage = [], None, None
        for index, chunk in enumerate(self.chunks):
            if isinstance(chunk, str):
                return "bad_response", f"event {index} is not a chat.completion.chunk ({chunk})"
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        output = "".join(text)
        result.output = output[:OUTPUT_LIMIT]
        if finish is None:
            return "bad_response", "no finish_reason"
        if usage is None:
            return "bad_response", "no usage event"
        prompt, completion, total = usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        result.prompt_tokens, result.completion_tokens = prompt, completion
        max_tokens = self.probe.payload.get("max_tokens") if isinstance(self.probe.payload, dict) else None
        done_usage = self.done.usage if self.done is not None else None
        if prompt <= 0 or completion <= 0 or total != prompt + completion:
            return "bad_response", f"inconsistent usage {prompt}+{completion}!={total}"
        if isinstance(max_tokens, int) and completion > max_tokens:
            return "bad_response", f"{completion} completion tokens for max_tokens {max_tokens}"
        if done_usage is not None and (done_usage.prompt_tokens, done_usage.completion_tokens) != (prompt, completion):
            return "bad_response", "the done chunk's usage differs from the stream's"
        if not output.strip():
            return "bad_response", "empty completion"
        if len(output) > completion * MAX_CHARS_PER_TOKEN:
            return "bad_response", f"{len(output)} characters for {completion} completion tokens"
        if self.token_times:
            result.ttft_s = self.token_times[0]
            span = self.token_times[-1] - self.token_times[0]
            if completion >= 2 and span > 0:
                result.tokens_per_s = completion / span
        return "", ""


def chunk_of(event: Any) -> ChatCompletionChunk | str:
    """An SSE event as the OpenAI ``chat.completion.chunk`` it must be, or why it is not one."""
    try:
        chunk = ChatCompletionChunk.model_validate(event)
    except ValidationError as error:
        first = error.errors()[0]
        return f"{'.'.join(str(part) for part in first['loc']) or 'the event'}: {first['msg']}"
    return chunk if "object" in chunk.model_fields_set else "object: Field required"


def _content(chunk: ChatCompletionChunk | str) -> bool:
    """Whether a parsed event carries a non-empty content delta."""
    return not isinstance(chunk, str) and bool(chunk.choices) and bool(chunk.choices[0].delta.content)


#: Two greedy outputs agree when their common prefix covers this share of the shorter one.
#: Honest engines on different GPUs (batching, kernels) can drift apart late in a greedy
#: completion; another model, a quantised one or made-up text differs from the first tokens.
AGREEMENT_PREFIX = 0.5


def outputs_agree(a: str, b: str) -> bool:
    shorter = min(len(a), len(b))
    if shorter == 0:
        return a == b
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return common >= AGREEMENT_PREFIX * shorter


def flag_disagreements(results: Iterable[ProbeResult]) -> list[ProbeResult]:
    """Group ok results by key (one probe, byte-identical requests); the reference is the output
    that agrees with the most results: for LLM results ``outputs_agree`` (greedy decoding may
    drift late), for the other chutes equal canonical outputs (a deterministic cord answers
    every honest host the same; a host running other code under the chute's id and revision
    does not). Where the reference is a strict majority (> half of the ok results, and at
    least 2), every ok result that does not agree with it gets flagged=True. No majority (1 vs
    1, or a cord whose answers all differ, such as one returning the time) flags nobody.
    Returns the flagged results (mutated in place)."""
    groups: dict[tuple[str, str], list[ProbeResult]] = defaultdict(list)
    for result in results:
        if result.ok:
            groups[(result.kind, result.key)].append(result)
    flagged = []
    for group in groups.values():
        agree = outputs_agree if group[0].kind == "llm" else str.__eq__
        outputs = list(Counter(r.output for r in group))
        support = {o: sum(agree(o, r.output) for r in group) for o in outputs}
        reference = max(outputs, key=lambda o: (support[o], -outputs.index(o)))
        if support[reference] >= 2 and 2 * support[reference] > len(group):
            for result in group:
                if not agree(result.output, reference):
                    result.flagged = True
                    flagged.append(result)
    return flagged
