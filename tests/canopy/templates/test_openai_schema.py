"""OpenAI request validation and response/SSE shapes (no model needed)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from canopy.templates.openai_schema import (
    SSE_DONE,
    ChatCompletionRequest,
    ChatStreamFormatter,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    chat_completion,
    completion,
    error_body,
    model_list,
    stream_chat,
    stream_completion,
)

MESSAGES = [{"role": "user", "content": "Hi"}]


def _locs(exc: ValidationError) -> list[tuple]:
    return [tuple(e["loc"]) for e in exc.errors()]


@pytest.mark.parametrize("extra, loc", [({"n": 2}, "n"), ({"temperature": 5}, "temperature"),
                                        ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
                                        ({"stop": ["", "x"]}, "stop"), ({"logprobs": True}, "logprobs")])
def test_chat_request_refuses_what_it_cannot_honour(extra: dict, loc: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **extra})
    assert _locs(info.value)[0][0] == loc


def test_chat_request_messages_validation() -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": []})
    assert _locs(info.value)[0][0] == "messages"
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": [{"role": "wizard", "content": "x"}]})


def test_chat_request_defaults_extras_and_parts() -> None:
    req = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "max_tokens": 10, "max_completion_tokens": 7, "stop": "\n", "seed": 3, "stream": True,
        "stream_options": {"include_usage": True}, "frequency_penalty": 0, "user": "u1", "metadata": {"k": "v"}})
    assert req.plain_messages()[1] == {"role": "user", "content": "a\nb"}
    assert req.include_usage
    assert req.engine_kwargs() == {"max_tokens": 7, "temperature": 1.0, "top_p": 1.0, "seed": 3, "stop": ["\n"]}
    plain = ChatCompletionRequest.model_validate({"messages": MESSAGES, "n": 1, "temperature": 0})
    assert plain.engine_kwargs()["max_tokens"] is None and plain.engine_kwargs()["temperature"] == 0
    assert not plain.include_usage and not ChatCompletionRequest.model_validate(
        {"messages": MESSAGES, "stream_options": {"include_usage": True}}).include_usage


def test_completion_request() -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": "Once"}).engine_kwargs()["max_tokens"] == 16
    assert CompletionRequest.model_validate({"prompt": [[1, 2, 3]]}).prompt == [1, 2, 3]
    assert CompletionRequest.model_validate({"prompt": ["x"]}).prompt == "x"
    assert CompletionRequest.model_validate({"prompt": [5, 6]}).prompt == [5, 6]
    for bad in ({"prompt": ["a", "b"]}, {"prompt": ""}, {"prompt": "x", "echo": True}, {"prompt": "x", "n": 3},
                {"prompt": "x", "best_of": 2}, {"prompt": "x", "logprobs": 1}, {"prompt": "x", "suffix": "y"}, {}):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate(bad)


def test_tokenize_bodies() -> None:
    assert TokenizeRequest.model_validate({"prompt": "hi"}).messages is None
    assert TokenizeRequest.model_validate({"model": "m", "messages": MESSAGES}).add_generation_prompt
    for bad in ({}, {"prompt": "x", "messages": MESSAGES}, {"messages": []}):
        with pytest.raises(ValidationError):
            TokenizeRequest.model_validate(bad)
    assert DetokenizeRequest.model_validate({"tokens": [1, 2]}).tokens == [1, 2]


def test_non_streaming_shapes() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 3}
    chat = chat_completion("m", "Hello", "length", usage, id="chatcmpl-1", created=7).model_dump(mode="json")
    assert chat == {"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None,
                                 "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}, "system_fingerprint": None}
    comp = completion("m", "x", "stop", usage).model_dump(mode="json")
    assert comp["object"] == "text_completion" and comp["id"].startswith("cmpl-")
    assert comp["choices"][0] == {"index": 0, "text": "x", "logprobs": None, "finish_reason": "stop"}
    models = model_list("m", 8192, created=1).model_dump(mode="json")
    assert models["object"] == "list" and models["data"][0]["id"] == "m" and models["data"][0]["object"] == "model"
    assert error_body("bad", param="n")["error"] == {"message": "bad", "type": "invalid_request_error", "param": "n", "code": 400}


def _events(lines: list[str]) -> list:
    assert all(line.startswith("data: ") and line.endswith("\n\n") for line in lines)
    assert lines[-1] == SSE_DONE
    return [json.loads(line[6:]) for line in lines[:-1]]


class _FakeGeneration:
    def __init__(self, pieces: list[str]) -> None:
        self.pieces, self.finish_reason, self.usage = pieces, None, {}

    async def _run(self):  # noqa: ANN202
        for piece in self.pieces:
            yield piece
        self.finish_reason = "length"
        self.usage = {"prompt_tokens": 4, "completion_tokens": len(self.pieces)}

    def __aiter__(self):  # noqa: ANN204
        return self._run()


async def test_chat_stream_with_usage() -> None:
    events = _events([line async for line in stream_chat(_FakeGeneration(["Hel", "lo"]), "m", include_usage=True)])
    assert [e["object"] for e in events] == ["chat.completion.chunk"] * 5
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["Hel", "lo"]
    assert events[3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all(e["usage"] is None for e in events[:4])
    assert events[4]["choices"] == [] and events[4]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


async def test_streams_without_usage() -> None:
    events = _events([line async for line in stream_chat(_FakeGeneration(["a"]), "m")])
    assert len(events) == 3 and all("usage" not in e for e in events)
    events = _events([line async for line in stream_completion(_FakeGeneration(["a", "b"]), "m", include_usage=True)])
    assert [e["object"] for e in events] == ["text_completion"] * 4
    assert [e["choices"][0]["text"] for e in events[:3]] == ["a", "b", ""]
    assert events[2]["choices"][0]["finish_reason"] == "length" and events[3]["usage"]["total_tokens"] == 6


def test_formatter_is_stable() -> None:
    fmt = ChatStreamFormatter("m", id="chatcmpl-x", created=1)
    assert fmt.delta("é") == ('data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m",'
                              '"choices":[{"index":0,"delta":{"content":"é"},"logprobs":null,"finish_reason":null}]}\n\n')
