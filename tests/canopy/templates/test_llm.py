"""The LLM chute template over real HTTP: an instance process serving examples/llm_chute.py.

The CPU engine answers; the vLLM variant is checked for its routes and command line (vLLM
itself needs a GPU and is not part of CI).
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from canopy.templates.llm import ROUTES, build_llm_chute, pick_engine, vllm_command
from tests.support.instances import start_instance

CHAT = "/v1/chat/completions"


def post(url: str, body: dict, timeout: float = 120.0) -> tuple[int, str, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


@pytest.fixture(scope="module")
def llm(tmp_path_factory, model_cache):
    env = {"CANOPY_MODEL_CACHE": str(model_cache), "CANOPY_LLM_ENGINE": "cpu"}
    with start_instance("examples/llm_chute.py:chute", tmp_path_factory.mktemp("llm"), env=env, wait=None) as instance:
        instance.wait_status("ready", timeout=240)
        yield instance


def ask(max_tokens: int = 12, **extra) -> dict:
    return {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "What is the capital of France?"}], **extra}


def test_chat_streaming_and_not_give_the_same_greedy_answer(llm):
    status, kind, body = post(llm.url + CHAT, ask())
    assert status == 200 and kind.startswith("application/json"), body
    reply = json.loads(body)
    text = reply["choices"][0]["message"]["content"]
    assert reply["object"] == "chat.completion" and text.strip()
    assert reply["usage"]["completion_tokens"] <= 12 and reply["usage"]["prompt_tokens"] > 5

    status, kind, body = post(llm.url + CHAT, ask(stream=True, stream_options={"include_usage": True}))
    assert status == 200 and kind.startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in body.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    pieces = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert pieces == text and len([c for c in chunks if c["choices"]]) > 3
    assert chunks[-1]["usage"] == reply["usage"]


def test_completions_models_and_tokens(llm):
    status, _, body = post(llm.url + "/v1/completions", {"prompt": "The sky is", "max_tokens": 5, "temperature": 0})
    reply = json.loads(body)
    assert status == 200 and reply["object"] == "text_completion" and reply["usage"]["completion_tokens"] == 5
    with urllib.request.urlopen(llm.url + "/v1/models", timeout=10) as response:
        assert json.loads(response.read())["data"][0]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    status, _, body = post(llm.url + "/tokenize", {"prompt": "hello world"})
    tokens = json.loads(body)["tokens"]
    assert status == 200 and tokens and json.loads(body)["count"] == len(tokens)
    status, _, body = post(llm.url + "/detokenize", {"tokens": tokens})
    assert status == 200 and "hello world" in json.loads(body)["prompt"]


def test_bad_requests_get_typed_errors(llm):
    status, _, body = post(llm.url + CHAT, ask(n=2))
    assert status == 422 and "n" in body
    status, _, body = post(llm.url + CHAT, {"messages": []})
    assert status == 422 and "messages" in body
    status, _, body = post(llm.url + CHAT, ask(model="gpt-7"))
    assert status == 404 and json.loads(body)["error"]["message"] == "The model `gpt-7` does not exist."
    status, _, body = post(llm.url + CHAT, ask(max_tokens=100_000))
    assert status == 400 and "maximum context length" in body
    status, _, body = post(llm.url + "/detokenize", {"tokens": [-1]})
    assert status == 400


def test_the_vllm_variant_passes_every_route_through(monkeypatch):
    monkeypatch.delenv("CANOPY_LLM_ENGINE", raising=False)
    chute = build_llm_chute(model="Qwen/Qwen3-8B", revision="abc123", engine="vllm", concurrency=32)
    info = chute.describe()
    assert {(cord.path, cord.method) for cord in info.cords} == set(ROUTES.items())
    assert all(cord.passthrough for cord in info.cords)
    assert info.node_selector.min_vram_gb_per_gpu == 16 and info.name == "qwen3-8b"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b")
    command = vllm_command("Qwen/Qwen3-8B", 12345, "abc123", 8192, [])
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert ["--revision", "abc123"] == command[command.index("--revision"):command.index("--revision") + 2]
    assert command[-2:] == ["--tensor-parallel-size", "2"] and "--max-model-len" in command
    monkeypatch.setenv("CANOPY_LLM_ENGINE", "tpu")
    with pytest.raises(ValueError, match="CANOPY_LLM_ENGINE"):
        pick_engine()
