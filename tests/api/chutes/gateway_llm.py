"""Test chutes for the API tests: the fake OpenAI chute with a model name, and a broken twin.

``tests.api.chutes.gateway_llm:chute`` is ``tests.validator.chutes.fake_llm``'s honest chute
(chat, streamed or not) serving the model ``fake-model``, plus a non-streaming
``/v1/completions`` cord. ``tests.api.chutes.gateway_llm:broken`` serves the same model
under another name and fails every call before its first byte.
"""

from __future__ import annotations

import asyncio

from canopy.chute import Chute
from canopy.templates import openai_schema as oai
from tests.validator.chutes.fake_llm import MODEL, build, completion_words

chute = build("honest")
chute.model_name = MODEL


@chute.cord(path="/v1/completions", public_api_path="/v1/completions")
async def complete(self, request: oai.CompletionRequest):
    prompt = request.prompt if isinstance(request.prompt, str) else " ".join(map(str, request.prompt))
    words = completion_words(prompt, request.seed, request.requested_max_tokens() or 16)
    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
             "total_tokens": len(prompt.split()) + len(words)}
    return oai.completion(MODEL, "".join(words), "length", usage)


broken = Chute(username="tests", name="broken-llm", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0},
               concurrency=8)
broken.model_name = MODEL


@broken.cord(path="/v1/chat/completions", public_api_path="/v1/chat/completions")
async def fail(self, request: oai.ChatCompletionRequest):
    raise RuntimeError("this chute fails on purpose")


flaky = Chute(username="tests", name="flaky-llm", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0},
              concurrency=8)
flaky.model_name = "flaky-model"


@flaky.cord(path="/v1/chat/completions", public_api_path="/v1/chat/completions")
async def break_mid_stream(self, request: oai.ChatCompletionRequest):
    """Streams two pieces, then fails; a non-streamed call answers after 3 s."""
    if not request.stream:
        await asyncio.sleep(3.0)
        return oai.chat_completion("flaky-model", "late", "stop", {"prompt_tokens": 1, "completion_tokens": 1})
    return _pieces_then_crash()


async def _pieces_then_crash():
    fmt = oai.ChatStreamFormatter("flaky-model", id="chatcmpl-flaky", created=1700000000)
    yield fmt.start()
    yield fmt.delta("half")
    raise RuntimeError("crashed mid-stream on purpose")
