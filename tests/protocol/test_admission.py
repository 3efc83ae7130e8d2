"""Stake-priority admission: the gate on its own, then a saturated axon over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from protocol import errors
from protocol.admission import PriorityGate
from protocol.dendrite import Dendrite, Target
from protocol.synapse import Echo, EchoResponse


async def wait_until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_gate_hands_freed_slots_to_the_highest_stake_first():
    gate = PriorityGate(capacity=1, queue_size=3)
    await gate.acquire(5.0)
    order: list[float] = []

    async def take(stake: float) -> None:
        await gate.acquire(stake)
        order.append(stake)

    tasks = [asyncio.create_task(take(stake)) for stake in (1.0, 9.0, 3.0)]
    await wait_until(lambda: gate.waiting == 3)
    for _ in range(3):
        gate.release()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [9.0, 3.0, 1.0]
    gate.release()
    assert gate.in_flight == 0 and gate.waiting == 0


async def test_full_gate_refuses_the_lowest_stake_and_ties_go_against_the_newcomer():
    gate = PriorityGate(capacity=1, queue_size=1, retry_after_s=2)
    await gate.acquire(5.0)
    queued = asyncio.create_task(gate.acquire(5.0))
    await wait_until(lambda: gate.waiting == 1)
    with pytest.raises(errors.Busy) as refused:
        await gate.acquire(5.0)  # equal stake: the one already waiting keeps its place
    assert refused.value.headers == {"Retry-After": "2"}
    outranker = asyncio.create_task(gate.acquire(6.0))
    with pytest.raises(errors.Busy):
        await queued
    gate.release()
    await outranker
    assert gate.in_flight == 1 and gate.waiting == 0


async def test_waiters_give_up_after_max_wait_and_cancelled_waiters_leave_no_trace():
    gate = PriorityGate(capacity=1, queue_size=4, max_wait_s=0.05)
    await gate.acquire(1.0)
    with pytest.raises(errors.Busy):
        await gate.acquire(1.0)
    assert gate.waiting == 0
    gate.max_wait_s = 5.0
    waiter = asyncio.create_task(gate.acquire(1.0))
    await wait_until(lambda: gate.waiting == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    assert gate.in_flight == 0 and gate.waiting == 0


async def test_saturated_axon_serves_high_stake_and_answers_429_to_low_stake(make_axon, wallets):
    release = asyncio.Event()

    async def blocking_echo(request: Echo, caller) -> EchoResponse:
        await release.wait()
        return EchoResponse(text=f"{request.text}:{caller.stake:g}")

    served = await make_axon(handler=blocking_echo, max_concurrency=1, axon_kwargs={"queue_size": 1})
    gate = served.axon.gate
    target = Target(served.hotkey, served.url)
    async with Dendrite(wallets.validator) as validator, Dendrite(wallets.whale) as whale:
        holder = asyncio.create_task(validator.call(target, Echo(text="holder"), timeout=10))
        await wait_until(lambda: gate.in_flight == 1)
        queued_low = asyncio.create_task(validator.call(target, Echo(text="queued"), timeout=10))
        await wait_until(lambda: gate.waiting == 1)
        high = asyncio.create_task(whale.call(target, Echo(text="whale"), timeout=10))

        bumped = await asyncio.wait_for(queued_low, timeout=5)  # the whale takes its queue place
        assert bumped.http_status == 429 and isinstance(bumped.error, errors.Busy)
        late_low = await validator.call(target, Echo(text="late"), timeout=5)  # outranked by the queued whale
        assert late_low.http_status == 429 and late_low.error.type == "busy"
        assert not high.done()

        release.set()
        first, served_high = await asyncio.gather(holder, high)
    assert first.ok and first.response.text == "holder:1000"
    assert served_high.ok and served_high.response.text == "whale:10000"
    assert gate.in_flight == 0 and gate.waiting == 0


async def test_busy_reply_carries_retry_after(make_axon, wallets):
    release = asyncio.Event()

    async def blocking_echo(request: Echo, caller) -> EchoResponse:
        await release.wait()
        return EchoResponse(text=request.text)

    served = await make_axon(handler=blocking_echo, max_concurrency=1, axon_kwargs={"queue_size": 0})
    target = Target(served.hotkey, served.url)
    async with Dendrite(wallets.validator) as validator:
        holder = asyncio.create_task(validator.call(target, Echo(text="holder"), timeout=10))
        await wait_until(lambda: served.axon.gate.in_flight == 1)
        session = validator.session
        body = Echo(text="x").to_json()
        headers = validator.sign(target, Echo.route(), body, Echo.protocol_version)
        async with session.post(served.url + Echo.route(), data=body, headers=headers) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["type"] == "busy"
        release.set()
        assert (await holder).ok
