"""Invoke and Inventory over the wire: dendrite -> a real axon -> real instance processes.

One miner for the module: the echo test chute with two instances (concurrency 2 each),
the chute whose startup hook raises, and two refused refs (one does not import, one needs
H100s), planned with real ``describe`` child processes on a CPU pseudo-device.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import pytest_asyncio

from protocol.options import AxonSettings
from node.wallets import create_devnet_wallet
from chain.base import Metagraph
from miner.chutes_service import ChutesService
from miner.hosting import ChuteEntry, HostingConfig, describe_chute, plan_hosting
from miner.instances import InstanceManager, State
from protocol import errors
from protocol.chutes import ChuteUnavailable, InstanceCrashed, Invoke, InvokeChunk, RemoteChuteError
from protocol.dendrite import Dendrite
from protocol.graval.synapses import Inventory
from tests.support import ROOT, free_port
from tests.support.chutes import BAD_HOOK, BROKEN_IMPORT, ECHO, GPU_ONLY, cpu_devices
from tests.support.network import NETUID, StaticChain, neuron

pytestmark = pytest.mark.asyncio(loop_scope="module")
PAYLOAD_CAP = 4096
RESERVED = 3 << 20  # what the GraVal service reports the instances hold on each device
AXON_CAP = 16 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def miner(tmp_path_factory):
    root = tmp_path_factory.mktemp("chutes-wallets")
    wallets = SimpleNamespace(miner=create_devnet_wallet("cminer", "default", root),
                              validator=create_devnet_wallet("cvalidator", "default", root))
    graph = Metagraph(netuid=NETUID, block=10, neurons=(neuron(0, wallets.miner, stake=0.0, permit=False),
                                                       neuron(1, wallets.validator, stake=1000.0, permit=True)))
    devices = cpu_devices(1)
    config = HostingConfig(chutes=[ChuteEntry(ref=ECHO, instances=2), ChuteEntry(ref=BAD_HOOK),
                                   ChuteEntry(ref=BROKEN_IMPORT), ChuteEntry(ref=GPU_ONLY)])
    plan = await plan_hosting(config, devices, describe=lambda ref: describe_chute(ref, cwd=ROOT))
    low = min(free_port(), 65000)
    manager = InstanceManager(plan.instance_specs(), port_range=(low, low + 40), log_dir=root / "logs", cwd=ROOT,
                              backoff_base_s=0.2, backoff_cap_s=5.0, grace_s=2.0, start_timeout_s=30)
    from miner.graval.service import GravalService
    from protocol.axon import Axon

    axon = Axon(wallets.miner, StaticChain(graph), NETUID,
                AxonSettings(ip="127.0.0.1", port=free_port(), max_body_bytes=AXON_CAP))
    verification = GravalService(devices, reserved=lambda device: RESERVED).attach(axon)  # wired as neurons/miner.py
    service = ChutesService(manager, plan.hosted_chutes(), refused=plan.refused, devices=devices,
                            max_payload_bytes=PAYLOAD_CAP, invoke_timeout_s=30, loads=verification.loads)
    service.attach(axon)
    await manager.start()
    await axon.start()
    dendrite = Dendrite(wallets.validator)
    chute_ids = {chute.name: chute.chute_id for chute in plan.hosted_chutes()}
    try:
        yield SimpleNamespace(axon=axon, manager=manager, service=service, dendrite=dendrite, echo=chute_ids["echo"],
                              bad=chute_ids["bad-hook"], devices=devices)
    finally:
        await dendrite.close()
        await axon.stop()
        await manager.stop()


async def invoke(miner, path: str, payload=None, *, chute: str | None = None, **fields) -> list[InvokeChunk]:
    synapse = Invoke(chute_id=chute or miner.echo, path=path, payload=payload, **fields)
    return [chunk async for chunk in miner.dendrite.stream(miner.axon, synapse, timeout=30)]


def body(chunks: list[InvokeChunk]) -> str:
    return "".join(chunk.data or "" for chunk in chunks)


async def test_a_json_cord_answers_in_one_final_chunk(miner):
    [chunk] = await invoke(miner, "/echo", {"text": "hi", "repeat": 3})
    assert chunk.done and chunk.status == 200 and chunk.content_type == "application/json"
    assert json.loads(chunk.data)["text"] == "hihihi"
    assert chunk.usage.prompt_tokens == 1 and chunk.usage.completion_tokens == 3
    assert 0 < chunk.compute_s < 5 and chunk.error is None
    [aliased] = await invoke(miner, "/v1/echo", {"text": "x"})
    assert json.loads(aliased.data)["text"] == "x", "a cord is reachable at its public_api_path too"


async def test_a_streaming_cord_streams_chunks_and_reports_usage(miner):
    before = miner.service.ledger.totals[miner.echo].completion_tokens if miner.echo in miner.service.ledger.totals else 0
    chunks = await invoke(miner, "/tokens", {"tokens": 5, "delay_s": 0.01})
    assert len(chunks) >= 3, "pieces are forwarded as they arrive"
    assert chunks[0].status == 200 and chunks[0].content_type.startswith("text/event-stream")
    final = chunks[-1]
    assert final.done and not any(chunk.done for chunk in chunks[:-1])
    assert final.usage.completion_tokens == 5 and final.usage.prompt_tokens == 2 and final.error is None
    text = body(chunks)
    assert [f"t{i} " in text for i in range(5)] == [True] * 5 and text.endswith("data: [DONE]\n\n")
    totals = miner.service.ledger.totals[miner.echo]
    assert totals.completion_tokens == before + 5 and totals.compute_s > 0
    assert miner.service.ledger.recent[-1].path == "/tokens" and miner.service.ledger.recent[-1].completion_tokens == 5


async def test_stream_false_collects_the_whole_body(miner):
    [chunk] = await invoke(miner, "/tokens", {"tokens": 4}, stream=False)
    assert chunk.done and chunk.status == 200 and chunk.usage.completion_tokens == 4
    assert chunk.data.count("data: ") == 6


async def test_inventory_lists_devices_hosted_chutes_with_load_and_refusals(miner):
    result = await miner.dendrite.call(miner.axon, Inventory(), timeout=10)
    assert result.ok, result.error
    inventory = result.response
    assert [d.uuid for d in inventory.devices] == [d.uuid for d in miner.devices]
    # what the instances hold on each device, from the GraVal service (a sweep proves the rest)
    assert [(load.uuid, load.reserved_bytes) for load in inventory.loads] == [(d.uuid, RESERVED) for d in miner.devices]
    chutes = {chute.name: chute for chute in inventory.chutes}
    echo, bad = chutes["echo"], chutes["bad-hook"]
    assert (echo.instances, echo.ready_instances, echo.concurrency, echo.in_flight) == (2, 2, 2, 0)
    assert echo.load == 0.0 and echo.capacity == 4
    cord = next(c for c in echo.cords if c.path == "/echo")
    assert cord.input_schema["required"] == ["text"] and cord.public_api_path == "/v1/echo"
    assert bad.instances == 1 and bad.ready_instances == 0
    refused = {r.ref: r.reason for r in inventory.refused}
    assert "this_module_does_not_exist" in refused[BROKEN_IMPORT] and "80 GB" in refused[GPU_ONLY]


async def test_unknown_chute_or_cord_is_404_and_a_wrong_method_405(miner):
    with pytest.raises(errors.NotFound, match="is not hosted on this miner"):
        await invoke(miner, "/echo", {"text": "x"}, chute="00000000-0000-0000-0000-000000000000")
    with pytest.raises(errors.NotFound, match=r"has no cord /nope \(its cords: .*/echo"):
        await invoke(miner, "/nope", {})
    with pytest.raises(errors.MethodNotAllowed):
        await invoke(miner, "/echo", {"text": "x"}, method="GET")


async def test_a_schema_violation_is_422_naming_the_field(miner):
    with pytest.raises(errors.InvalidPayload, match="text") as caught:
        await invoke(miner, "/echo", {"repeat": 2})
    assert caught.value.status == 422 and caught.value.detail[0]["loc"] == ["text"]
    with pytest.raises(errors.InvalidPayload, match="repeat"):
        await invoke(miner, "/echo", {"text": "x", "repeat": 1000})


async def test_an_oversized_payload_is_413(miner):
    with pytest.raises(errors.PayloadTooLarge, match=f"{PAYLOAD_CAP}-byte limit"):
        await invoke(miner, "/echo", {"text": "x" * (PAYLOAD_CAP + 10)})
    with pytest.raises(errors.PayloadTooLarge, match=f"{AXON_CAP}-byte limit"):
        await invoke(miner, "/echo", {"text": "x" * (AXON_CAP + 10)})


async def test_a_cord_that_raises_is_a_typed_remote_error(miner):
    with pytest.raises(RemoteChuteError, match="ValueError: boom") as caught:
        await invoke(miner, "/boom", {"seconds": 1})
    assert caught.value.status == 500 and caught.value.detail["remote"]["type"] == "ValueError"
    chunks = await invoke(miner, "/fail_midway", {})
    assert chunks[0].data.startswith("data: ") and chunks[-1].done
    assert chunks[-1].error.type == "remote_error" and "the stream broke" in chunks[-1].error.message
    assert chunks[-1].error.remote["type"] == "RuntimeError"


async def test_over_capacity_is_429_and_capacity_comes_back(miner):
    slow = [asyncio.create_task(invoke(miner, "/sleep", {"seconds": 1.5})) for _ in range(4)]
    for _ in range(200):
        if miner.manager.load(miner.echo)[2] == 4:
            break
        await asyncio.sleep(0.01)
    assert miner.manager.load(miner.echo) == (2, 2, 4)
    with pytest.raises(errors.Busy, match="at capacity"):
        await invoke(miner, "/echo", {"text": "x"})
    done = await asyncio.gather(*slow)
    instances = {json.loads(chunks[0].data)["instance"] for chunks in done}
    assert len(instances) == 2, "the load is spread over both instances"
    assert miner.service.ledger.totals[miner.echo].refused >= 1
    [chunk] = await invoke(miner, "/echo", {"text": "again"})
    assert chunk.status == 200


async def test_a_chute_whose_startup_failed_is_503_while_the_others_serve(miner):
    with pytest.raises(ChuteUnavailable, match="no instance .* is ready") as caught:
        await invoke(miner, "/ping", chute=miner.bad, method="POST")
    assert caught.value.status == 503 and caught.value.type == "chute_unavailable"
    [bad] = miner.manager.by_chute[miner.bad]
    assert "the model file is missing" in (bad.last_error or bad.failures[-1])
    [chunk] = await invoke(miner, "/echo", {"text": "still here"})
    assert json.loads(chunk.data)["text"] == "still here"


async def test_an_instance_crashing_mid_stream_gives_a_typed_error_chunk_and_is_restarted(miner):
    chunks = await invoke(miner, "/tokens", {"tokens": 50, "delay_s": 0.02, "crash_after": 3})
    final = chunks[-1]
    assert final.done and final.error is not None and final.error.type == InstanceCrashed.type
    assert "t0 " in body(chunks), "the caller got the tokens sent before the crash"
    crashed = [i for i in miner.manager.by_chute[miner.echo] if i.state is not State.READY]
    assert len(crashed) == 1, "the crashed instance is out of routing at once"
    [victim] = crashed
    for _ in range(5):  # the other instance keeps serving meanwhile
        [chunk] = await invoke(miner, "/echo", {"text": "ok"})
        assert chunk.status == 200
    assert await miner.manager.wait_ready(victim, 20), victim.last_error
    assert victim.restarts == 1 and victim.failures[-1].startswith("crashed (exit code 17;")
    assert miner.service.ledger.recent[-6].error == "instance_crashed"
    with pytest.raises(InstanceCrashed):  # a crash before the first byte is a 502
        for _ in range(2):
            await invoke(miner, "/tokens", {"tokens": 5, "crash_after": 0})
    await asyncio.gather(*(miner.manager.wait_ready(i, 20) for i in miner.manager.by_chute[miner.echo]))


async def test_usage_and_errors_are_found_in_sse_split_anywhere():
    from miner.chutes_service import _SseScanner

    body = ('data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
            'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7,"total_tokens":10}}\n\n'
            'data: [DONE]\n\n').encode()
    for cut in range(1, len(body)):
        scanner = _SseScanner()
        scanner.feed(body[:cut])
        scanner.feed(body[cut:])
        scanner.finish()
        assert (scanner.usage.prompt_tokens, scanner.usage.completion_tokens) == (3, 7) and scanner.error is None
    failing = _SseScanner()
    failing.feed(b'data: {"error": {"type": "remote_error", "message": "x", "remote": {"type": "KeyError"}}}\n\n')
    assert failing.error.type == "remote_error" and failing.error.remote == {"type": "KeyError"}


async def test_chute_error_kinds_survive_the_wire():
    sent = InstanceCrashed("gone", detail={"instance": "a"})
    received = errors.error_from_body(sent.status, sent.to_json())
    assert isinstance(received, InstanceCrashed) and received.status == 502 and received.detail == {"instance": "a"}


async def test_invoke_and_inventory_sit_behind_the_axons_signature_and_blacklist_checks(miner, tmp_path_factory):
    stranger = Dendrite(create_devnet_wallet("cstranger", "default", tmp_path_factory.mktemp("stranger")))
    try:
        with pytest.raises(errors.UnknownHotkey):
            synapse = Invoke(chute_id=miner.echo, path="/echo", payload={"text": "x"})
            [chunk async for chunk in stranger.stream(miner.axon, synapse, timeout=10)]
        result = await stranger.call(miner.axon, Inventory(), timeout=10)
        assert not result.ok and result.http_status == 403 and isinstance(result.error, errors.UnknownHotkey)
    finally:
        await stranger.close()


async def test_chutes_are_kept_per_revision_and_an_invoke_without_one_takes_the_newest_ready(tmp_path):
    from miner.instances import InstanceSpec
    from protocol.chutes import HostedChute, HostedCord

    old, new = "a" * 64, "b" * 64
    [cpu] = cpu_devices(1)
    manager = InstanceManager([InstanceSpec("c1", "c", "x:chute", (cpu,), revision=old),
                               InstanceSpec("c1", "c", "x:chute", (cpu,), revision=new)], log_dir=tmp_path)
    first, second = manager.instances
    cords = [HostedCord(path="/go")]
    service = ChutesService(manager, [HostedChute(chute_id="c1", name="c", revision=old, cords=cords)])
    service.register(HostedChute(chute_id="c1", name="c", revision=new, cords=[HostedCord(path="/go2")]))
    first.state = State.READY
    plain = Invoke(chute_id="c1", path="/go")
    assert service._target(plain) == ("c1", old), "the newest revision has no ready instance yet"
    second.state = State.READY
    assert service._target(plain) == ("c1", new)
    assert service._target(plain.model_copy(update={"revision": old})) == ("c1", old)
    listed = {chute.revision: (chute.instances, chute.ready_instances) for chute in service.hosted()}
    assert listed == {old: (1, 1), new: (1, 1)}
    with pytest.raises(errors.NotFound, match=f"is not hosted at revision {'c' * 64}"):
        service._target(plain.model_copy(update={"revision": "c" * 64}))
    service.unregister("c1", new)
    assert service._target(plain) == ("c1", old) and [c.revision for c in service.hosted()] == [old]
    service.unregister("c1", old)
    with pytest.raises(errors.NotFound, match="is not hosted on this miner"):
        service._target(plain)
