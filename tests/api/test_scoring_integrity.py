"""What a miner controls cannot buy score: both attacks played against real miners, scored for real.

A subnet of its own (``serve_gateway``): three verified miners host the honest fake LLM
(``tests.api.chutes.gateway_llm:chute``) with equal devices and scores, each call taking
0.15 s more; uid 2 runs a modified ``ChutesService`` whose done chunk claims 10^6 compute
seconds and 10^6 tokens every call.
Each test sends its calls through the gateway on uvicorn, then scores the store's rows the
way the validator loop does (``activity_since`` -> ``MinerWindow``s -> ``raw_scores``).

- inflated reports: the same calls, routed by the gateway to the honest uid 1 and to uid 2,
  credit what the gateway measured (duration, text); uid 2 scores no more than uid 1;
- self-dealing: a key steering calls to uid 3 (``uids:``/``top_n:`` on ``/v1``, a key's
  default strategy, ``/chat`` ``uids``/``top_n``/``top_incentive``/a narrowing ``exclude``)
  is served and billed, but uid 3 scores as if it got no call; the same calls routed by the
  gateway (``default``) count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import pytest_asyncio
from sqlalchemy import select

from api.tokenbound import SILENT_TOKENS
from miner.chutes_service import ChutesService
from protocol.chutes import Usage
from tests.support.gateway import HONEST, MODEL, PROMPT, chat, new_key, post, serve_gateway
from tests.validator.chutes.fake_llm import completion_words
from validator.scoring import DeviceEntry, MinerWindow, ScoringSettings, raw_scores
from store.queries import MinerActivity
from store.tables import Invocation
from validator.windows import latency_quality

pytestmark = pytest.mark.asyncio(loop_scope="module")
LIE = 10**6
WORK_S = 0.15
WORDS = len(completion_words(PROMPT, 3, 8))


class Working(ChutesService):
    """Every call takes ``WORK_S`` more (the fake LLM answers in milliseconds): the work dominates
    the gateway's timing noise, so equal work measures about equal."""

    async def invoke(self, synapse, caller):
        await asyncio.sleep(WORK_S)
        async for chunk in super().invoke(synapse, caller):
            yield chunk


class InflatingService(Working):
    """A miner that serves like the others but claims 10^6 s and 10^6 tokens in every done chunk."""

    async def invoke(self, synapse, caller):
        async for chunk in super().invoke(synapse, caller):
            if chunk.done:
                chunk = chunk.model_copy(update={"compute_s": float(LIE), "usage": Usage(
                    prompt_tokens=LIE, completion_tokens=LIE, total_tokens=2 * LIE)})
            yield chunk


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def subnet(tmp_path_factory):
    async with serve_gateway(tmp_path_factory.mktemp("integrity"), [[HONEST], [HONEST], [HONEST]],
                             verified={0: "dev-1", 1: "dev-2", 2: "dev-3"}, scores=[0.5, 0.5, 0.5],
                             services=[Working, InflatingService, Working]) as running:
        yield running


@contextlib.contextmanager
def only(subnet, uid: int):
    """The gateway knows one miner for a while: ``default`` routing (and /chat ``random``) picks it."""
    saved = subnet.directory.routes
    subnet.directory.routes = [route for route in saved if route.uid == uid]
    try:
        yield
    finally:
        subnet.directory.routes = saved


async def rows_since(subnet, since: float) -> list[Invocation]:
    await subnet.upstream.drain()
    async with subnet.store.sessions() as session:
        return list((await session.scalars(select(Invocation).where(Invocation.created_at >= since)
                                           .order_by(Invocation.id))).all())


async def scored(subnet, since: float):
    """(activity, raw scores) of the three miners over the rows since ``since``, as the validator
    loop scores them (the window sums of the store, one equal verified device each)."""
    await subnet.upstream.drain()
    activity = await subnet.store.activity_since(since)
    quality = latency_quality(activity)
    windows = []
    for i, hotkey in enumerate(subnet.hotkeys):
        record = activity.get(hotkey, MinerActivity())
        windows.append(MinerWindow(
            hotkey=hotkey, coldkey=f"cold-{i}", uid=i + 1, devices=[DeviceEntry(f"dev-{i + 1}", "gpu", 1.0, True)],
            compute_seconds=record.compute_seconds, invocations_ok=record.invocations_ok,
            chutes_served=record.chutes_served, synthetic_ok=record.synthetic_ok,
            synthetic_total=record.synthetic_total, latency_quality=quality.get(hotkey, 0.5)))
    return activity, raw_scores(windows, ScoringSettings())


def completion(**extra) -> dict:
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "seed": 3, **extra}


def validator_shape(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "seed": 3, **extra}


def sn1_shape(**extra) -> dict:
    return {"model": MODEL, "roles": ["user"], "messages": [PROMPT], "max_tokens": 8, "seed": 3, **extra}


# The same work for every miner: /v1 chat (JSON and SSE), /v1 completions, /chat.
WORK = [("/v1/chat/completions", chat()), ("/v1/chat/completions", chat(stream=True)),
        ("/v1/completions", completion()), ("/chat", validator_shape())]


async def test_inflated_compute_and_tokens_are_credited_what_the_gateway_measured(subnet):
    key = await new_key(subnet, "integrity-work")
    for uid in (1, 2):  # warm both instances up with steered calls, which count for nothing
        for path, body in WORK:
            steer = {"uids": [uid]} if path == "/chat" else {"strategy": f"uids:{uid}"}
            assert (await post(subnet, key, {**body, **steer}, path=path)).status_code == 200
    since = time.time()
    for round_ in range(2):
        for path, body in WORK:
            for uid in ((1, 2) if round_ == 0 else (2, 1)):
                with only(subnet, uid):
                    response = await post(subnet, key, body, path=path)
                assert response.status_code == 200, response.text
                assert response.headers["x-canopy-miner-uid"] == str(uid)
    honest, liar = subnet.hotkeys[0], subnet.hotkeys[1]

    rows = await rows_since(subnet, since)
    assert len(rows) == 16 and all(row.ok and not row.steered for row in rows)
    for row in rows:
        assert WORK_S < row.compute_s <= row.latency_s < 5, "credited compute: the duration the gateway saw"
        assert row.prompt_tokens <= 1000 and row.completion_tokens <= WORDS * 10 + SILENT_TOKENS
    lies = [row for row in rows if row.miner_hotkey == liar]
    truths = [row for row in rows if row.miner_hotkey == honest]
    assert len(lies) == len(truths) == 8
    assert all(row.measured_compute_s == LIE for row in lies), "the miner's report is kept, not credited"
    assert all(row.completion_tokens < LIE and row.prompt_tokens < LIE for row in lies)
    assert all(row.completion_tokens == WORDS for row in truths), "an honest count is within the bound"
    assert all(0 < row.measured_compute_s <= row.compute_s for row in truths)

    activity, raw = await scored(subnet, since)
    assert activity[liar].compute_seconds <= sum(row.latency_s for row in lies)
    assert (activity[liar].invocations_ok, activity[liar].chutes_served) == (8, 1)
    assert (activity[honest].invocations_ok, activity[honest].chutes_served) == (8, 1)
    # Equal work, both measured by the gateway: equal up to timing noise (before, the liar took
    # the whole compute share: about a third more than the honest miner's score).
    assert activity[liar].compute_seconds <= 1.25 * activity[honest].compute_seconds
    assert raw[liar] <= raw[honest] * 1.03, raw
    assert raw[liar] > raw[subnet.hotkeys[2]], "it did the work: that still counts"


async def test_calls_the_caller_steered_to_a_miner_earn_it_nothing_and_default_routing_does(subnet):
    self_dealer, target = subnet.hotkeys[2], 3
    key = await new_key(subnet, "self-dealer", credits=100)
    pinned = await new_key(subnet, "self-dealer-pinned", credits=100, default_strategy=f"uids:{target}")
    since = time.time()
    steered = [  # (key, path, body, headers): every way a caller can pick uid 3
        (key, "/v1/chat/completions", chat(), {"x-canopy-strategy": f"uids:{target}"}),
        (key, "/v1/chat/completions", chat(), {"x-canopy-strategy": f"uids:{target}"}),
        (key, "/v1/chat/completions", chat(strategy=f"uids:{target}", stream=True), {}),
        (key, "/v1/chat/completions", chat(), {"x-canopy-strategy": "top_n:1"}),  # uid 3 has the most incentive
        (key, "/v1/completions", completion(strategy=f"uids:{target}"), {}),
        (pinned, "/v1/chat/completions", chat(), {}),
        (key, "/chat", validator_shape(uids=[target]), {}),
        (key, "/chat", validator_shape(top_n=1), {}),
        (pinned, "/chat", validator_shape(), {}),
        (key, "/chat", sn1_shape(k=1, sampling_mode="top_incentive", stream=False), {}),
        (key, "/chat", sn1_shape(k=1, exclude=[1, 2], stream=False), {}),
        (key, "/chat", sn1_shape(k=1, exclude=[1, 2]), {}),
    ]
    for secret, path, body, headers in steered:
        response = await post(subnet, secret, body, path=path, headers=headers)
        assert response.status_code == 200, (path, body, response.text)
        assert response.headers["x-canopy-miner-uid"] == str(target), (path, body)
    rows = await rows_since(subnet, since)
    assert [(row.miner_hotkey, row.ok, row.steered) for row in rows] == [(self_dealer, True, True)] * len(steered)
    billed = sum([100 - (await subnet.keys.get(name)).credits for name in ("self-dealer", "self-dealer-pinned")])
    assert billed == len(steered), "steered calls are served and billed as before"

    activity, raw = await scored(subnet, since)
    nothing = activity.get(subnet.hotkeys[0])
    mine = activity.get(self_dealer)
    for record in (mine, nothing):
        assert record is None or (record.compute_seconds, record.invocations_ok, record.chutes_served) == (0, 0, 0)
    assert raw[self_dealer] == raw[subnet.hotkeys[0]] == raw[subnet.hotkeys[1]], "as if it got no call"

    routed = [(key, "/v1/chat/completions", chat()), (key, "/v1/chat/completions", chat()),
              (key, "/v1/chat/completions", chat(stream=True)), (key, "/v1/completions", completion()),
              (key, "/chat", validator_shape()), (key, "/chat", sn1_shape(k=1, stream=False)),
              (key, "/chat", sn1_shape(k=1))]
    with only(subnet, target):  # the same kind of calls, the miner chosen by the gateway
        for secret, path, body in routed:
            response = await post(subnet, secret, body, path=path)
            assert response.status_code == 200 and response.headers["x-canopy-miner-uid"] == str(target), response.text
    activity, raw = await scored(subnet, since)
    mine = activity[self_dealer]
    assert (mine.invocations_ok, mine.chutes_served, mine.organic_ok) == (len(routed), 1, len(routed))
    assert 0 < mine.compute_seconds < 5 * len(routed)
    assert raw[self_dealer] > raw[subnet.hotkeys[0]] == raw[subnet.hotkeys[1]]
