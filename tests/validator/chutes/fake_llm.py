"""Test chute: a fake OpenAI chat server that streams deterministic "greedy" completions.

Hosted by tests/validator: ``tests.validator.chutes.fake_llm:chute`` answers honestly,
``tests.validator.chutes.fake_llm:liar`` is the same chute (same chute id) whose completions
differ. An extra request field ``fake_fault`` makes it break the OpenAI shape on purpose:
``wrong_object``, ``no_usage``, ``bad_total``, ``too_many_tokens``, ``empty``, ``no_finish``,
``json`` (one non-streamed reply), ``slow`` (2 s before the first token). A ``model`` other
than ``fake-model`` gets vLLM's 404. The text is a function of (prompt, seed, variant) only.
"""

from __future__ import annotations

import asyncio
import hashlib

from fastapi.responses import JSONResponse

from canopy.chute import Chute
from canopy.templates import openai_schema as oai

MODEL = "fake-model"
WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "jade", "kelp", "lumen")


def completion_words(prompt: str, seed: int | None, max_tokens: int, salt: str = "") -> list[str]:
    """The deterministic completion: 6..11 words (capped at max_tokens), one token each."""
    digest = hashlib.sha256(f"{salt}|{seed}|{prompt}".encode()).digest()
    count = min(max_tokens, 6 + digest[0] % 6)
    return [(" " if i else "") + WORDS[digest[i + 1] % len(WORDS)] for i in range(count)]


def build(variant: str) -> Chute:
    chute = Chute(username="tests", name="fake-llm", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0},
                  concurrency=8)

    @chute.cord(path="/v1/chat/completions", public_api_path="/v1/chat/completions")
    async def chat(self, request: oai.ChatCompletionRequest):
        if request.model not in (None, "", MODEL):
            return JSONResponse(oai.error_body(f"The model `{request.model}` does not exist.", "NotFoundError", 404),
                                status_code=404)
        fault = (request.model_extra or {}).get("fake_fault", "")
        prompt = request.plain_messages()[-1]["content"]
        words = completion_words(prompt, request.seed, request.requested_max_tokens() or 16,
                                 salt="liar" if variant == "liar" else "")
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                 "total_tokens": len(prompt.split()) + len(words)}
        if fault == "json" or not request.stream:
            return oai.chat_completion(MODEL, "".join(words), "length", usage)
        return _stream(words, usage, fault, request.requested_max_tokens() or 16)

    return chute


async def _stream(words: list[str], usage: dict, fault: str, max_tokens: int):
    fmt = oai.ChatStreamFormatter(MODEL, include_usage=True, id="chatcmpl-fake", created=1700000000)
    yield fmt.start()
    if fault == "slow":
        await asyncio.sleep(2.0)
    for word in [] if fault == "empty" else words:
        await asyncio.sleep(0.003)
        piece = fmt.delta(word)
        yield piece.replace('"chat.completion.chunk"', '"chat.completion"') if fault == "wrong_object" else piece
    if fault != "no_finish":
        yield fmt.finish("length")
    if fault == "bad_total":
        usage = {**usage, "total_tokens": usage["total_tokens"] + 1}
    if fault == "too_many_tokens":
        usage = {**usage, "completion_tokens": max_tokens + 10, "total_tokens": usage["prompt_tokens"] + max_tokens + 10}
    if fault != "no_usage":  # written out: the formatter would recompute the total
        yield oai.sse({"id": fmt.id, "object": "chat.completion.chunk", "created": fmt.created, "model": MODEL,
                       "choices": [], "usage": usage})
    yield oai.SSE_DONE


chute = build("honest")
liar = build("liar")
