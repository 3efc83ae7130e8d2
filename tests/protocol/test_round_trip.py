"""Dendrite to axon over real sockets: round trips, fan-out, streaming, versions, metagraph."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import pytest
from bittensor import http_auth

from chain.base import Metagraph
from protocol import errors
from protocol.dendrite import Dendrite, Target
from protocol.synapse import Echo, EchoResponse, Ping, Pong, Synapse, SynapseResponse
from tests.support import free_port
from tests.support.network import NETUID, neuron


async def test_echo_round_trip(echo_axon, dendrite, wallets, chain):
    result = await dendrite.call(Target(echo_axon.hotkey, echo_axon.url), Echo(text="hello wire"), timeout=5)
    assert result.ok, result.error
    assert result.status == "ok" and result.http_status == 200 and result.error is None
    assert isinstance(result.response, EchoResponse) and result.response.text == "hello wire"
    assert 0 < result.latency_s < 5
    [(request, caller)] = echo_axon.spy.calls
    assert request == Echo(text="hello wire")
    assert caller.hotkey == wallets.validator.hotkey.ss58_address and caller.uid == 1 and caller.stake == 1000.0
    assert chain.served == [(echo_axon.hotkey, NETUID, "127.0.0.1", echo_axon.axon.port)], "start() publishes ip:port"


async def test_sequential_calls_are_not_held_back_by_delayed_acks(echo_axon, dendrite):
    target = Target(echo_axon.hotkey, echo_axon.url)
    await dendrite.call(target, Echo(text="warm"), timeout=5)
    started = time.perf_counter()
    for _ in range(20):
        assert (await dendrite.call(target, Echo(text="quick"), timeout=5)).ok
    assert time.perf_counter() - started < 0.4, "TCP_NODELAY missing: each reply waits ~40 ms"


async def test_ping_is_built_in_and_targets_can_be_neurons(echo_axon, dendrite, wallets):
    miner = neuron(0, wallets.miner, stake=0.0, permit=False, port=echo_axon.axon.port)
    result = await dendrite.call(miner, Ping(), timeout=5)
    assert result.ok and isinstance(result.response, Pong) and result.response.hotkey == echo_axon.hotkey
    assert (await dendrite.call((echo_axon.hotkey, echo_axon.url), Ping(), timeout=5)).ok


async def test_refusal_comes_back_as_typed_error(echo_axon, wallets):
    async with Dendrite(wallets.stranger) as stranger:
        result = await stranger.call(Target(echo_axon.hotkey, echo_axon.url), Echo(text="x"), timeout=5)
    assert result.status == "http_error" and result.http_status == 403
    assert isinstance(result.error, errors.UnknownHotkey) and result.error.type == "unknown_hotkey"
    assert result.response is None and echo_axon.spy.calls == []


async def test_protocol_version_mismatch_is_refused(echo_axon, dendrite):
    class FutureEcho(Echo):
        route_name: ClassVar[str] = "Echo"
        protocol_version: ClassVar[str] = "2.0"

    result = await dendrite.call(Target(echo_axon.hotkey, echo_axon.url), FutureEcho(text="x"), timeout=5)
    assert result.status == "http_error" and result.http_status == 400
    assert isinstance(result.error, errors.ProtocolMismatch)
    assert echo_axon.spy.calls == [] and echo_axon.store.stored == []


def test_dendrite_signature_is_plain_btauth(wallets):
    dendrite = Dendrite(wallets.validator)
    receiver = wallets.miner.hotkey.ss58_address
    body = Echo(text="golden").to_json()
    headers = dendrite.sign(Target(receiver, "http://127.0.0.1:1"), Echo.route(), body, Echo.protocol_version)
    reference = http_auth.sign(wallets.validator, method="POST", path=Echo.route(), body=body, receiver_ss58=receiver)
    assert set(reference) <= set(headers)
    assert headers["X-Canopy-Protocol"] == "1.0" and headers["Content-Type"] == "application/json"
    caller = http_auth.verify(headers, body, method="POST", path=Echo.route(), self_hotkey_ss58=receiver,
                              nonce_store=http_auth.InMemoryNonceStore())
    assert caller.hotkey_ss58 == wallets.validator.hotkey.ss58_address
    with pytest.raises(http_auth.BadSignature):
        http_auth.verify(headers, body + b" ", method="POST", path=Echo.route(), self_hotkey_ss58=receiver,
                         nonce_store=http_auth.InMemoryNonceStore())


async def test_every_call_signs_a_fresh_increasing_nonce(echo_axon, dendrite):
    target = Target(echo_axon.hotkey, echo_axon.url)
    results = await dendrite.query([target] * 20, Echo(text="same body"), timeout=5)
    assert all(r.ok for r in results)
    nonces = [caller.nonce_ns for _, caller in echo_axon.spy.calls]
    assert len(set(nonces)) == 20


async def test_fan_out_returns_one_result_per_axon_in_order(make_axon, dendrite):
    async def slow(request, caller):
        await asyncio.sleep(1.5)
        return EchoResponse(text=request.text)

    fast = await make_axon()
    sleepy = await make_axon(handler=slow)
    down = Target(fast.hotkey, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    targets = [Target(fast.hotkey, fast.url), down, Target(sleepy.hotkey, sleepy.url), Target(fast.hotkey, fast.url)]

    started = time.perf_counter()
    results = await dendrite.query(targets, Echo(text="fan"), timeout=0.5)
    elapsed = time.perf_counter() - started

    assert [r.status for r in results] == ["ok", "connection_error", "timeout", "ok"]
    assert [r.target for r in results] == targets
    assert results[0].response.text == "fan" and results[3].response.text == "fan"
    assert isinstance(results[1].error, errors.ConnectionFailed) and results[1].http_status == 0
    assert isinstance(results[2].error, errors.RequestTimeout) and results[2].response is None
    assert 0.45 < results[2].latency_s < 1.5
    assert elapsed < 1.5, "the slow axon must not hold up the others beyond the timeout"


async def test_unreachable_targets_are_connection_errors_not_exceptions(dendrite, wallets):
    idle = neuron(5, wallets.miner, stake=0, permit=False)  # registered, but serves no axon
    nonsense = Target(wallets.miner.hotkey.ss58_address, "http://127.0.0.1:99999")  # a port no socket can have
    results = await dendrite.query([idle, nonsense], Echo(text="x"), timeout=1)
    assert [r.status for r in results] == ["connection_error", "connection_error"]
    assert results[0].hotkey == idle.hotkey and results[0].target.url == ""
    with pytest.raises(errors.ConnectionFailed):
        async for _ in dendrite.stream(idle, Count(upto=1), timeout=1):
            pass


class Count(Synapse):
    response_model: ClassVar[type[SynapseResponse]] = EchoResponse
    streaming: ClassVar[bool] = True
    upto: int


async def test_streaming_yields_chunks_as_they_are_produced(make_axon, dendrite):
    proceed = asyncio.Event()

    async def count(request: Count, caller):
        yield EchoResponse(text="0")
        await proceed.wait()  # the rest only exists once the client has seen chunk 0
        for n in range(1, request.upto):
            yield EchoResponse(text=str(n))

    served = await make_axon(synapse=Count, handler=count)
    stream = dendrite.stream(Target(served.hotkey, served.url), Count(upto=5), timeout=5)
    first = await asyncio.wait_for(anext(stream), timeout=2)
    assert first == EchoResponse(text="0")
    proceed.set()
    rest = [chunk.text async for chunk in stream]
    assert rest == ["1", "2", "3", "4"]
    assert served.axon.gate.in_flight == 0, "the admission slot is returned when the stream ends"


async def test_stream_failure_midway_raises_typed_error(make_axon, dendrite):
    async def broken(request: Count, caller):
        yield EchoResponse(text="0")
        raise RuntimeError("disk on fire")

    served = await make_axon(synapse=Count, handler=broken)
    seen = []
    with pytest.raises(errors.HandlerError):
        async for chunk in dendrite.stream(Target(served.hotkey, served.url), Count(upto=3), timeout=5):
            seen.append(chunk.text)
    assert seen == ["0"]


async def test_stream_refusal_raises_typed_error(make_axon, wallets):
    async def count(request: Count, caller):
        yield EchoResponse(text="never")

    served = await make_axon(synapse=Count, handler=count)
    async with Dendrite(wallets.minnow) as minnow:
        with pytest.raises(errors.LowStake):
            async for _ in minnow.stream(Target(served.hotkey, served.url), Count(upto=1), timeout=5):
                pass


async def test_metagraph_is_cached_and_refreshed_in_background(make_axon, wallets, chain):
    served = await make_axon(axon_kwargs={"metagraph_refresh_s": 0.1})
    target = Target(served.hotkey, served.url)
    async with Dendrite(wallets.stranger) as stranger:
        assert (await stranger.call(target, Echo(text="a"), timeout=5)).http_status == 403
        reads = chain.metagraph_reads
        for _ in range(20):
            await stranger.call(target, Echo(text="a"), timeout=5)
        assert chain.metagraph_reads - reads <= 3, "requests must not read the chain"

        graph = chain.graph
        chain.graph = Metagraph(NETUID, graph.block + 1, graph.neurons + (neuron(9, wallets.stranger, stake=50.0, permit=True),))
        await asyncio.sleep(0.3)
        result = await stranger.call(target, Echo(text="now registered"), timeout=5)
    assert result.ok and result.response.text == "now registered"


async def test_abandoned_stream_stops_the_handler_and_frees_its_slot(make_axon, dendrite):
    finished = asyncio.Event()

    async def endless(request: Count, caller):
        try:
            n = 0
            while True:
                yield EchoResponse(text=str(n))
                n += 1
                await asyncio.sleep(0.01)
        finally:
            finished.set()

    served = await make_axon(synapse=Count, handler=endless)
    async for chunk in dendrite.stream(Target(served.hotkey, served.url), Count(upto=0), timeout=5):
        if chunk.text == "3":
            break
    await asyncio.wait_for(finished.wait(), timeout=5)
    await asyncio.sleep(0.05)
    assert served.axon.gate.in_flight == 0
