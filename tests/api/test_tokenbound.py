"""``api.tokenbound``: the most tokens a relayed reply can hold, however the miner cut it."""

from __future__ import annotations

import json

from api.tokenbound import SILENT_TOKENS, ReplyMeter, prompt_bound, text_bytes


def sse(*documents) -> str:
    return "".join(f"data: {json.dumps(document)}\n\n" for document in documents) + "data: [DONE]\n\n"


def chunk(content: str | None = None, finish: str | None = None, **delta) -> dict:
    if content is not None:
        delta["content"] = content
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta,
                                                                      "finish_reason": finish}]}


def metered(body: str, content_type: str, cut: int | None = None) -> int:
    meter = ReplyMeter(content_type)
    pieces = [body] if cut is None else [body[i:i + cut] for i in range(0, len(body), cut)]
    for piece in pieces:
        meter.feed(piece)
    return meter.completion_bound()


def test_an_sse_stream_is_bounded_by_its_choice_text_however_it_is_cut():
    body = sse(chunk(role="assistant"), chunk("héllo"), chunk(" wörld 🌲"), chunk(finish="length"),
               {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 10**6}})
    expected = len("assistant") + len("héllo wörld 🌲".encode()) + len("length") + SILENT_TOKENS
    assert metered(body, "text/event-stream") == expected
    for cut in (1, 3, 7, 50):  # events split across pieces, a multibyte character kept whole by the decoder
        assert metered(body, "text/event-stream; charset=utf-8", cut) == expected
    assert metered(body.replace("\n\n", "\r\n\r\n"), "text/event-stream", 5) == expected


def test_reasoning_and_tool_calls_count_as_text_and_keys_do_not():
    body = sse(chunk(reasoning_content="think"), chunk(tool_calls=[{"index": 0, "function": {"name": "f",
                                                                                            "arguments": "{}"}}]))
    assert metered(body, "text/event-stream") == len("think") + len("f") + len("{}") + SILENT_TOKENS


def test_a_json_reply_is_bounded_by_its_choices_and_anything_else_by_its_body():
    reply = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                       "finish_reason": "stop"}],
             "usage": {"completion_tokens": 10**6}}
    assert metered(json.dumps(reply), "application/json", 4) == len("assistant") + 2 + len("stop") + SILENT_TOKENS
    assert metered('{"image": "....."}', "application/json") == len('{"image": "....."}') + SILENT_TOKENS
    assert metered("not json at all", "text/plain") == len("not json at all") + SILENT_TOKENS
    assert metered("", "application/json") == SILENT_TOKENS
    garbage = "data: {not json}\n\n" + sse(chunk("a"))
    assert metered(garbage, "text/event-stream") == 1 + SILENT_TOKENS, "what does not parse adds nothing"


def test_the_prompt_is_bounded_by_the_payload_sent():
    payload = {"model": "m", "messages": [{"role": "user", "content": "日本"}]}
    assert prompt_bound(payload) == len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()) \
        + SILENT_TOKENS
    assert text_bytes({"a": ["é", {"b": "cd"}, 3, None]}) == 4
