"""Synthetic work: probes planned per chute, sent over the wire to real miners, judged and compared.

Three miners on one module-scoped event loop, each a real axon with ``ChutesService`` and
real chute instance processes (the set-up of ``tests/miner/test_chutes_service.py``):

- miner 0 hosts the fake OpenAI chute (``tests.validator.chutes.fake_llm:chute``), the
  schema chute (``tests.validator.chutes.shapes:chute``) and the chute whose startup fails;
- miner 1 hosts the same fake OpenAI chute;
- miner 2 hosts ``fake_llm:liar``: the same chute id, other completions.

Chutes are described in this process (``load_chute(ref).describe()``), not by child
processes, to keep the start-up short.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import SimpleNamespace

import pytest
import pytest_asyncio

from canopy.chute import load_chute
from protocol.options import AxonSettings
from node.wallets import create_devnet_wallet
from chain.base import Metagraph
from miner.chutes_service import ChutesService
from miner.hosting import ChuteEntry, HostingConfig, plan_hosting
from miner.instances import InstanceManager
from protocol.axon import Axon
from protocol.chutes import HostedChute, HostedCord, InvokeChunk
from protocol.dendrite import Dendrite
from tests.support import ROOT, free_port
from tests.support.chutes import BAD_HOOK, cpu_devices
from tests.support.network import NETUID, StaticChain, neuron
from tests.validator.chutes.fake_llm import completion_words
from tests.validator.chutes.shapes import Order, Receipt
from validator.synthetic import (
    LLM_PATH, PROMPTS, Probe, ProbeResult, _Reply, flag_disagreements, outputs_agree, probes_for, run_probe,
)

HONEST, LIAR = "tests.validator.chutes.fake_llm:chute", "tests.validator.chutes.fake_llm:liar"
SHAPES = "tests.validator.chutes.shapes:chute"
TIMEOUT = 20.0


def hosted(ref: str) -> HostedChute:
    """The Inventory view of a test chute, as a miner would list it."""
    info = load_chute(ref).describe()
    return HostedChute(chute_id=info.chute_id, name=info.name, username=info.username, ref=ref, instances=1,
                       ready_instances=1, cords=[HostedCord.model_validate(c.model_dump()) for c in info.cords])


def only(chute: HostedChute, path: str) -> HostedChute:
    return chute.model_copy(update={"cords": [c for c in chute.cords if c.path == path]})


# --- planning (no processes) ---------------------------------------------------------------------


def test_llm_probes_are_deterministic_per_round_and_differ_across_rounds():
    chute = hosted(HONEST)
    first = probes_for(chute, round_seed=7, llm_prompts=3, max_tokens=16)
    assert first == probes_for(chute, round_seed=7, llm_prompts=3, max_tokens=16)
    assert first == probes_for(hosted(LIAR), round_seed=7, llm_prompts=3, max_tokens=16), "same chute id, same probes"
    assert len(first) == 3 and len({p.key for p in first}) == 3
    probe = first[0]
    assert (probe.kind, probe.path, probe.method, probe.stream, probe.output_schema) == ("llm", LLM_PATH, "POST", True, None)
    payload = probe.payload
    assert "model" not in payload and payload["temperature"] == 0 and payload["max_tokens"] == 16
    assert payload["stream"] is True and payload["stream_options"] == {"include_usage": True}
    assert isinstance(payload["seed"], int) and payload["messages"][0]["content"] in PROMPTS
    others = [probes_for(chute, round_seed=seed, llm_prompts=3, max_tokens=16) for seed in range(8, 20)]
    assert len({p.key for run in others for p in run}) > 10, "round seeds pick other prompts and seeds"
    assert {p.payload["seed"] for run in others for p in run} != {payload["seed"]}


def test_schema_probes_pick_one_callable_cord_with_a_valid_payload():
    chute = hosted(SHAPES)
    picked = {}
    for seed in range(40):
        [probe] = probes_for(chute, round_seed=seed)
        assert probe == probes_for(chute, round_seed=seed)[0]
        picked[probe.path] = probe
        assert probe.kind == "schema" and not probe.stream and probe.path != "/tokens", "never a streaming cord"
    assert set(picked) == {"/order", "/wrong", "/sleep"}
    order = picked["/order"]
    Order.model_validate(order.payload)
    assert order.output_schema == Receipt.model_json_schema()
    orders = [probes_for(only(chute, "/order"), round_seed=seed)[0] for seed in range(5)]
    assert len({p.key for p in orders}) == 5, "each round samples another payload"


def test_unsamplable_cords_are_skipped_and_the_minimal_schema_is_a_fallback():
    patterned = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
                 "required": ["code"]}
    bad = HostedCord(path="/bad", input_schema=patterned)
    good = HostedCord(path="/good", input_schema={"type": "object", "properties": {"n": {"type": "integer"}}})
    chute = HostedChute(chute_id="c1", name="c1", cords=[bad, good])
    assert {probes_for(chute, round_seed=s)[0].path for s in range(20)} == {"/good"}
    assert probes_for(chute.model_copy(update={"cords": [bad]}), round_seed=1) == []
    minimal = bad.model_copy(update={"minimal_input_schema": {"type": "object", "properties": {}}})
    [probe] = probes_for(chute.model_copy(update={"cords": [minimal]}), round_seed=1)
    assert probe.payload == {}
    get = HostedCord(path="/status", method="GET")
    [probe] = probes_for(chute.model_copy(update={"cords": [get]}), round_seed=1)
    assert (probe.method, probe.payload) == ("GET", None)
    streaming = HostedCord(path="/s", stream=True)
    passthrough = HostedCord(path="/p", passthrough=True)
    assert probes_for(chute.model_copy(update={"cords": [streaming, passthrough]}), round_seed=1) == []


def result(hotkey: str, output: str, *, key: str = "k", ok: bool = True, kind: str = "llm") -> ProbeResult:
    return ProbeResult(hotkey, "c", key, kind, ok=ok, output=output)


def test_flag_disagreements_needs_a_strict_majority_of_at_least_two():
    rows = [result("a", "x"), result("b", "x"), result("c", "y"), result("d", "x", ok=False),
            result("e", "y", key="other"), result("f", "z", key="other"), result("g", "q", kind="schema")]
    assert [r.miner_hotkey for r in flag_disagreements(rows)] == ["c"]
    assert [r.miner_hotkey for r in rows if r.flagged] == ["c"], "failed, lone and no-majority rows stay unflagged"
    assert flag_disagreements([result("a", "x"), result("b", "y")]) == []
    assert flag_disagreements([result("a", "x"), result("b", "x"), result("c", "y"), result("d", "y")]) == []
    assert flag_disagreements([result("a", "x")]) == []


def test_a_deterministic_cord_answered_otherwise_by_one_host_is_flagged():
    """A host running other code under the chute's id and revision answers the echo cord
    differently from the honest hosts: flagged. A cord whose answers all differ flags nobody."""
    echo = '{"text":"sampled"}'
    rows = [result(h, echo, kind="schema") for h in ("a", "b")] + [result("tamper", '{"text":"pwned"}', kind="schema")]
    assert [r.miner_hotkey for r in flag_disagreements(rows)] == ["tamper"]
    drifted = echo[:-3] + '"}'  # a prefix match is enough for greedy text, never for a cord's output
    assert [r.miner_hotkey for r in flag_disagreements([result("a", echo, kind="schema"), result("b", echo, kind="schema"),
                                                         result("c", drifted, kind="schema")])] == ["c"]
    clocks = [result(h, f'{{"now":{t}}}', kind="schema") for h, t in (("a", 1), ("b", 2), ("c", 3))]
    assert flag_disagreements(clocks) == []


def test_greedy_outputs_that_drift_apart_late_still_agree():
    honest = "The capital of France is Paris. It is known for the Eiffel Tower"
    drifted = "The capital of France is Paris. It has many museums and cafes"
    other_model = "Paris is the capital city of France, on the Seine"
    rows = [result("a", honest), result("b", drifted), result("c", other_model)]
    assert outputs_agree(honest, drifted) and not outputs_agree(honest, other_model)
    assert [r.miner_hotkey for r in flag_disagreements(rows)] == ["c"]


def judged(*events) -> tuple[str, str]:
    """(error, detail) of an LLM reply streaming ``events`` (dicts as JSON, strings as they are)."""
    reply = _Reply(Probe("c", "llm", LLM_PATH, "POST", {"max_tokens": 8}, "k", True))
    body = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    reply.add(InvokeChunk(status=200, content_type="text/event-stream", data=body), 0.1)
    reply.add(InvokeChunk(done=True), 0.2)
    return reply.judge(ProbeResult("m", "c", "k", "llm", ok=False))


def test_every_event_must_parse_as_the_sdks_openai_chunk():
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    text = {**head, "choices": [{"index": 0, "delta": {"content": "hello there"}, "finish_reason": "stop"}]}
    usage = {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    assert judged(text, usage) == ("", "")
    no_object = {k: v for k, v in text.items() if k != "object"}
    refused = {
        "not JSON": ("hello", usage), "no object": (no_object, usage), "choices not a list": ({**text, "choices": {}},),
        "no delta": ({**head, "choices": [{"index": 0, "finish_reason": "stop"}]}, usage),
        "a non-text delta": ({**head, "choices": [{"index": 0, "delta": {"content": 5}}]}, usage),
        "a count as text": (text, {**usage, "usage": {**usage["usage"], "prompt_tokens": "3"}}),
        "a count as a bool": (text, {**usage, "usage": {**usage["usage"], "completion_tokens": True}}),
        "a count as a float": (text, {**usage, "usage": {**usage["usage"], "total_tokens": 5.0}}),
    }
    for case, events in refused.items():
        error, detail = judged(*events)
        assert error == "bad_response" and "is not a chat.completion.chunk (" in detail, (case, detail)
    assert judged(text) == ("bad_response", "no usage event")


# --- over the wire ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def subnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    validator = create_devnet_wallet("svalidator", "default", root)
    wallets = [create_devnet_wallet(f"sminer{i}", "default", root) for i in range(3)]
    graph = Metagraph(netuid=NETUID, block=10, neurons=(
        neuron(0, validator, stake=1000.0, permit=True),
        *(neuron(i + 1, wallet, stake=0.0, permit=False) for i, wallet in enumerate(wallets))))
    devices = cpu_devices(1, salt="synthetic")

    async def describe(ref: str):
        return load_chute(ref).describe()

    miners, managers, axons = [], [], []
    for wallet, refs in zip(wallets, [[HONEST, SHAPES, BAD_HOOK], [HONEST], [LIAR]]):
        plan = await plan_hosting(HostingConfig(chutes=[ChuteEntry(ref=ref) for ref in refs]), devices, describe=describe)
        low = min(free_port(), 65000)
        manager = InstanceManager(plan.instance_specs(), port_range=(low, low + 40), log_dir=root / "logs", cwd=ROOT,
                                  backoff_base_s=30.0, backoff_cap_s=60.0, grace_s=1.0, start_timeout_s=60)
        service = ChutesService(manager, plan.hosted_chutes(), devices=devices, invoke_timeout_s=30)
        axon = Axon(wallet, StaticChain(graph), NETUID, AxonSettings(ip="127.0.0.1", port=free_port()))
        service.attach(axon)
        managers.append(manager)
        axons.append(axon)
        miners.append(SimpleNamespace(axon=axon, hotkey=wallet.hotkey.ss58_address, service=service,
                                      chutes={c.name: c for c in plan.hosted_chutes()}))
    dendrite = Dendrite(validator)
    try:
        await asyncio.gather(*(manager.start() for manager in managers), *(axon.start() for axon in axons))
        yield SimpleNamespace(miners=miners, dendrite=dendrite)
    finally:
        await dendrite.close()
        await asyncio.gather(*(axon.stop() for axon in axons), return_exceptions=True)
        await asyncio.gather(*(manager.stop() for manager in managers), return_exceptions=True)


async def probe(subnet, miner, probe: Probe, timeout: float = TIMEOUT) -> ProbeResult:
    return await run_probe(subnet.dendrite, miner.axon, miner.hotkey, probe, timeout=timeout)


@pytest.mark.asyncio(loop_scope="module")
async def test_llm_probes_on_three_miners_flag_the_one_that_disagrees(subnet):
    [llm] = probes_for(subnet.miners[0].chutes["fake-llm"], round_seed=11, max_tokens=8)
    results = await asyncio.gather(*(probe(subnet, miner, llm) for miner in subnet.miners))
    honest, twin, liar = results
    assert all(r.ok for r in results), [(r.error, r.detail) for r in results]
    prompt = llm.payload["messages"][0]["content"]
    assert honest.output == twin.output == "".join(completion_words(prompt, llm.payload["seed"], 8))
    assert liar.output != honest.output and liar.output
    for r in results:
        assert r.key == llm.key and r.kind == "llm" and r.error == "" and r.detail == ""
        assert r.completion_tokens == len(r.output.split()) and r.prompt_tokens == len(prompt.split())
        assert 0 < r.ttft_s <= r.latency_s < TIMEOUT and r.compute_s > 0
        assert r.tokens_per_s is None or r.tokens_per_s > 0
    assert flag_disagreements(results) == [liar] and liar.flagged and not honest.flagged and not twin.flagged

    [again] = probes_for(subnet.miners[0].chutes["fake-llm"], round_seed=12, max_tokens=8)
    pair = await asyncio.gather(probe(subnet, subnet.miners[0], again), probe(subnet, subnet.miners[2], again))
    assert all(r.ok for r in pair) and pair[0].output != pair[1].output
    assert flag_disagreements(pair) == [] and not any(r.flagged for r in pair), "1 vs 1 is no majority"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_broken_openai_reply_is_a_bad_response(subnet):
    [llm] = probes_for(subnet.miners[1].chutes["fake-llm"], round_seed=5, max_tokens=8)
    faults = {"wrong_object": "not a chat.completion.chunk", "no_usage": "no usage event",
              "bad_total": "inconsistent usage", "too_many_tokens": "completion tokens for max_tokens 8",
              "empty": "empty completion", "no_finish": "no finish_reason", "json": "expected an SSE stream"}
    probes = [dataclasses.replace(llm, payload={**llm.payload, "fake_fault": fault}) for fault in faults]
    results = await asyncio.gather(*(probe(subnet, subnet.miners[1], p) for p in probes))
    for fault, r in zip(faults, results):
        assert (r.ok, r.error) == (False, "bad_response"), (fault, r)
        assert faults[fault] in r.detail, (fault, r.detail)
    other_model = dataclasses.replace(llm, payload={**llm.payload, "model": "other"})
    r = await probe(subnet, subnet.miners[1], other_model)
    assert (r.ok, r.error) == (False, "http_404") and "does not exist" in r.detail


@pytest.mark.asyncio(loop_scope="module")
async def test_schema_probes_pass_on_the_declared_output_and_fail_on_another(subnet):
    miner = subnet.miners[0]
    shapes = miner.chutes["shapes"]
    for seed in (1, 2, 3):
        [order] = probes_for(only(shapes, "/order"), round_seed=seed)
        r = await probe(subnet, miner, order)
        assert r.ok, (r.error, r.detail)
        receipt = Receipt.model_validate_json(r.output)
        assert str(receipt.order_id) == order.payload["order_id"] and receipt.items >= 1
        assert r.output == json.dumps(json.loads(r.output), sort_keys=True, separators=(",", ":"))
        assert r.compute_s > 0 and r.latency_s > 0 and r.ttft_s is None
    [wrong] = probes_for(only(shapes, "/wrong"), round_seed=1)
    r = await probe(subnet, miner, wrong)
    assert (r.ok, r.error) == (False, "schema_mismatch") and "$." in r.detail and "free" in r.output


@pytest.mark.asyncio(loop_scope="module")
async def test_failures_come_back_as_their_protocol_kind(subnet):
    miner = subnet.miners[0]
    [unavailable] = probes_for(miner.chutes["bad-hook"], round_seed=1)
    r = await probe(subnet, miner, unavailable)
    assert (r.ok, r.error) == (False, "chute_unavailable") and "no instance" in r.detail

    [sleep] = probes_for(only(miner.chutes["shapes"], "/sleep"), round_seed=1)
    slow = dataclasses.replace(sleep, payload={"seconds": 1.0})  # short: the instance sleeps on after we leave
    r = await probe(subnet, miner, slow, timeout=0.3)
    assert (r.ok, r.error) == (False, "timeout") and r.latency_s >= 0.25

    [llm] = probes_for(miner.chutes["fake-llm"], round_seed=1)
    r = await probe(subnet, subnet.miners[2], dataclasses.replace(llm, chute_id="00000000-0000-0000-0000-000000000000"))
    assert (r.ok, r.error) == (False, "not_found")
    r = await run_probe(subnet.dendrite, ("nobody", f"http://127.0.0.1:{free_port()}"), "nobody", llm, timeout=2)
    assert (r.ok, r.error, r.miner_hotkey) == (False, "connection_error", "nobody")
    r = await probe(subnet, miner, dataclasses.replace(llm, chute_id="x" * 300))
    assert (r.ok, r.error) == (False, "invalid_payload"), "a chute id no Invoke can carry fails, it does not raise"
