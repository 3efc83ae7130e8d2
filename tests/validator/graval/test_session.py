"""GraVal over the wire: a real axon with the miner's GraVal service, the validator's dendrite.

Devices are CPU pseudo-devices matched to test rows of the GPU table
(``tests.support.graval``). Timing cheats are judged against a throughput calibrated in the
same test on this machine, so the honest prover and the cheat run under the same conditions.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from protocol.options import AxonSettings
from node.wallets import create_devnet_wallet
from chain.base import Metagraph
from miner.graval import adversaries as cheats
from miner.graval import service as service_module
from miner.graval.prover import Prover
from miner.graval.service import GravalService
from protocol.axon import Axon
from protocol.dendrite import Dendrite
from protocol import errors
from protocol.graval.spec import ChallengeSpec, plan
from protocol.graval.synapses import Access, LeafRef, Open, Prove
from tests.support import free_port
from tests.support.graval import BIG_MEMORY, MEMORY, NOISY_BOX_ATTEMPTS, B, N, cpu_row, devices, phase_macs
from tests.support.network import NETUID, StaticChain, neuron
from tests.support.store import sqlite_url
from validator.graval.session import GravalVerifier
from store.queries import ValidatorStore


@pytest.fixture(scope="module")
def wallets(tmp_path_factory):
    root = tmp_path_factory.mktemp("graval-wallets")
    return SimpleNamespace(miner=create_devnet_wallet("gminer", "default", root),
                           validator=create_devnet_wallet("gvalidator", "default", root),
                           other=create_devnet_wallet("gother", "default", root))


@pytest.fixture
async def miner(wallets):
    graph = Metagraph(netuid=NETUID, block=10, neurons=(
        neuron(0, wallets.miner, stake=0.0, permit=False),
        neuron(1, wallets.validator, stake=1000.0, permit=True),
        neuron(2, wallets.other, stake=1000.0, permit=True),
    ))
    axons: list[Axon] = []

    async def start(devices, service_class=GravalService, **service_options):
        axon = Axon(wallets.miner, StaticChain(graph), NETUID,
                    AxonSettings(ip="127.0.0.1", port=free_port(), require_permit=True))
        service = service_class(devices, **service_options).attach(axon)
        await axon.start()
        axons.append(axon)
        return SimpleNamespace(axon=axon, service=service)

    yield start
    for axon in axons:
        await axon.stop()


@pytest.fixture
async def dendrite(wallets):
    async with Dendrite(wallets.validator) as client:
        yield client


async def wire_rates(miner, dendrite, memory: int = MEMORY) -> dict[str, float]:
    """This machine's honest per-phase rates, measured over the wire as the validator sees them.

    The best of three honest verifications under a loose window: the same path (axon,
    prover thread, event loop) as the test that follows, so a cheat's slowdown is judged
    against the honest prover in the same conditions, not against a bare in-process run.
    """
    honest = await miner(devices(1, f"calibration{memory}", memory))
    verifier = GravalVerifier(dendrite, [cpu_row(window_low=0.0001, window_high=10_000)], allow_cpu=True)
    fill_macs, access_macs = phase_macs(memory)
    best = {"fill_macs_per_s": 0.0, "access_macs_per_s": 0.0}
    for _ in range(3):
        (result,) = await verifier.verify_miner(honest.axon)
        assert result.ok, result
        best["fill_macs_per_s"] = max(best["fill_macs_per_s"], fill_macs / result.fill_s)
        best["access_macs_per_s"] = max(best["access_macs_per_s"], access_macs / result.access_s)
    return best


async def test_honest_devices_pass_and_every_result_is_stored(miner, dendrite, tmp_path):
    started = await miner(devices(2), prover_factory=lambda spec, backend: Prover(spec, backend))
    verifier = GravalVerifier(dendrite, [cpu_row()], allow_cpu=True)
    results = await verifier.verify_miner(started.axon)
    assert [result.reason for result in results] == ["ok", "ok"]
    assert all(result.samples == 2 * verifier.samples and result.fill_s > 0 and result.access_s > 0 for result in results)
    assert all(result.proven_bytes > 0 and result.multiplier == cpu_row().compute_multiplier for result in results)

    store = await ValidatorStore.open(sqlite_url(tmp_path / "validator.sqlite"))
    try:
        await store.record_device_results(results)
        history = await store.verifications_of(started.axon.hotkey)
        assert len(history) == 2 and history[0].model_id == "cpu" and all(row.ok for row in history)
    finally:
        await store.close()


async def test_cpu_devices_are_refused_unless_the_validator_allows_them(miner, dendrite):
    started = await miner(devices(1))
    results = await GravalVerifier(dendrite, [cpu_row()], allow_cpu=False).verify_miner(started.axon)
    assert [result.reason for result in results] == ["cpu_not_allowed"]


async def test_a_uuid_claimed_twice_is_refused(miner, dendrite):
    twice = devices(1) * 2
    started = await miner(twice)
    results = await GravalVerifier(dendrite, [cpu_row()], allow_cpu=True).verify_miner(started.axon)
    assert [result.reason for result in results] == ["duplicate_uuid", "duplicate_uuid"]


async def test_live_readings_that_disagree_with_the_claim_are_refused(miner, dendrite, monkeypatch):
    started = await miner(devices(1))
    real = service_module.live_info
    monkeypatch.setattr(service_module, "live_info",
                        lambda spec: real(spec).model_copy(update={"memory_total_bytes": spec.memory_bytes // 2, "memory_used_bytes": 0}))
    results = await GravalVerifier(dendrite, [cpu_row()], allow_cpu=True).verify_miner(started.axon)
    assert [result.reason for result in results] == ["memory_mismatch"]


@pytest.mark.parametrize(("cheat", "reason"), [
    (cheats.Replayed, "wrong_product"),
    (cheats.OtherUuid, "wrong_product"),
    (cheats.ForgedOpening, "bad_opening"),
    (cheats.RandomRoots, "bad_opening"),
    (cheats.AdaptiveForgedDigests, "bad_opening"),
    (cheats.Grinding, "wrong_product|bad_opening"),
])
async def test_wire_cheats_are_caught(miner, dendrite, cheat, reason):
    started = await miner(devices(1), prover_factory=lambda spec, backend: cheat(spec, backend))
    results = await GravalVerifier(dendrite, [cpu_row()], allow_cpu=True).verify_miner(started.axon)
    assert [result.reason for result in results][0] in reason.split("|"), results


async def test_a_prover_keeping_half_the_matrices_misses_the_access_window(miner, dendrite):
    """Over the wire, the attack that passed at 1.02-1.04x before: half the matrices kept,
    the rest rebuilt with Belady's optimal policy (right answers, so only the clock can tell)."""
    honest = await miner(devices(1, "h", BIG_MEMORY))
    cheat = await miner(devices(1, "r", BIG_MEMORY), prover_factory=lambda spec, backend: cheats.Rebuilding(spec, backend))
    for _ in range(NOISY_BOX_ATTEMPTS):
        row = cpu_row(**await wire_rates(miner, dendrite, BIG_MEMORY), window_low=0.2, window_high=1.6)
        verifier = GravalVerifier(dendrite, [row], allow_cpu=True)
        honest_reasons = [result.reason for result in await verifier.verify_miner(honest.axon)]
        caught = await verifier.verify_miner(cheat.axon)
        assert [result.reason for result in caught] == ["too_slow"], caught  # never passes, whatever the load
        assert "access" in caught[0].detail
        if honest_reasons == ["ok"]:
            return
    pytest.fail(f"the honest device missed the window in {NOISY_BOX_ATTEMPTS} attempts: the box is too loaded to judge")


async def test_a_slower_device_claiming_a_faster_model_misses_the_window(miner, dendrite):
    rates = await wire_rates(miner, dendrite)
    faster = cpu_row(**{name: 5 * rate for name, rate in rates.items()}, window_low=0.2, window_high=1.6)
    started = await miner(devices(1))
    results = await GravalVerifier(dendrite, [faster], allow_cpu=True).verify_miner(started.axon)
    assert [result.reason for result in results] == ["too_slow"]


class OneDeviceBehindTwoClaims(GravalService):
    """Claims two devices but has one: every phase of one challenge waits for the other's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.only_device = asyncio.Lock()

    async def _run(self, session, work, *args):
        async with self.only_device:
            return await super()._run(session, work, *args)


async def test_one_device_cannot_answer_for_two_claims(miner, dendrite):
    """Both claims are challenged at once; with one device behind them the phases queue, so
    at least one (with interleaved phases, both) misses its window, while a device that
    really is one passes the same window."""
    honest = await miner(devices(1, "single", BIG_MEMORY))
    started = await miner(devices(2, "d", BIG_MEMORY), service_class=OneDeviceBehindTwoClaims)
    for _ in range(NOISY_BOX_ATTEMPTS):
        row = cpu_row(**await wire_rates(miner, dendrite, BIG_MEMORY), window_low=0.2, window_high=1.6)
        verifier = GravalVerifier(dendrite, [row], allow_cpu=True)
        reasons = sorted(result.reason for result in await verifier.verify_miner(started.axon))
        assert "ok" not in reasons or reasons.count("ok") == 1, "one device answered for two claims"
        assert "too_slow" in reasons, reasons  # never both in time, whatever the load
        if [result.reason for result in await verifier.verify_miner(honest.axon)] == ["ok"]:
            return
    pytest.fail(f"the honest device missed the window in {NOISY_BOX_ATTEMPTS} attempts: the box is too loaded to judge")


async def test_two_validators_at_once_both_verify_an_honest_device(miner, dendrite, wallets):
    """The second validator's Prove finds the device busy, checks the first one's signed
    challenge offered as evidence, waits and retries: both pass, the first is not dropped."""
    started = await miner(devices(1, "two"))
    validator_hotkeys = {wallets.validator.hotkey.ss58_address, wallets.other.hotkey.ss58_address}
    async with Dendrite(wallets.other) as other:
        first = GravalVerifier(dendrite, [cpu_row()], allow_cpu=True, is_validator=validator_hotkeys.__contains__)
        second = GravalVerifier(other, [cpu_row()], allow_cpu=True, is_validator=validator_hotkeys.__contains__)
        first_task = asyncio.create_task(first.verify_miner(started.axon))
        await asyncio.sleep(0.3)  # the first validator's Prove is running
        second_results = await second.verify_miner(started.axon)
        first_results = await first_task
    assert [r.reason for r in first_results] == ["ok"] and [r.reason for r in second_results] == ["ok"]


class PleadsBusy(GravalService):
    """One device for two claims that dodges the second claim's challenge by pleading busy
    with no earlier challenge of another validator to show (here: its own, forged)."""

    async def prove(self, synapse, caller):
        if synapse.spec.uuid == self.claims[1].uuid:
            raise errors.DeviceBusy("busy", detail={"evidence": {"method": "POST", "path": Prove.route(),
                                                                 "headers": {}, "body": ""}, "retry_after_s": 1})
        return await super().prove(synapse, caller)


async def test_a_busy_plea_without_a_valid_earlier_challenge_fails_the_device(miner, dendrite, wallets):
    started = await miner(devices(2, "plea"), service_class=PleadsBusy)
    verifier = GravalVerifier(dendrite, [cpu_row()], allow_cpu=True, is_validator=lambda hotkey: True)
    reasons = [result.reason for result in await verifier.verify_miner(started.axon)]
    assert reasons == ["ok", "busy_unproven"]


async def test_a_prove_its_validator_gave_up_on_frees_the_device(miner, dendrite, wallets):
    device = devices(1, "gaveup", BIG_MEMORY)[0]
    started = await miner([device])
    spec = plan(device.uuid, device.memory_bytes, n=N, b=B, steps_per_matrix=16)
    answer = await dendrite.call(started.axon, Prove(spec=spec), timeout=0.05)  # hangs up mid-fill
    assert answer.status == "timeout"
    for _ in range(100):
        if not started.service._occupant:
            break
        await asyncio.sleep(0.05)
    assert not started.service._occupant, "the device stayed locked after its validator left"
    async with Dendrite(wallets.other) as other:  # another validator gets the device, not device_busy
        other_spec = plan(device.uuid, device.memory_bytes, n=N, b=B, steps_per_matrix=16)
        assert (await other.call(started.axon, Prove(spec=other_spec))).ok


async def test_the_miner_refuses_bad_challenges_with_typed_errors(miner, dendrite, wallets):
    device = devices(1)[0]
    started = await miner([device])
    unknown = ChallengeSpec.fresh("CPU-unknown", n=64, b=8, m=2, steps=2)
    answer = await dendrite.call(started.axon, Prove(spec=unknown))
    assert answer.http_status == 422 and "no such device" in answer.error.message
    too_big = ChallengeSpec.fresh(device.uuid, n=1024, b=16, m=64, steps=2)
    answer = await dendrite.call(started.axon, Prove(spec=too_big))
    assert answer.http_status == 422 and "needs" in answer.error.message
    answer = await dendrite.call(started.axon, Open(challenge_id="f" * 32, leaves=[LeafRef(kind="M", index=0, leaf=0)]))
    assert answer.http_status == 404

    spec = ChallengeSpec.fresh(device.uuid, n=64, b=8, m=2, steps=2)
    assert (await dendrite.call(started.axon, Prove(spec=spec))).ok
    early = Open(challenge_id=spec.challenge_id, leaves=[LeafRef(kind="M", index=0, leaf=0)])
    assert (await dendrite.call(started.axon, early)).http_status == 422  # no access phase yet
    async with Dendrite(wallets.other) as other:  # another validator cannot drive my challenge
        stolen = Access(challenge_id=spec.challenge_id, access_seed="ab" * 32)
        assert (await other.call(started.axon, stolen)).http_status == 404
    assert (await dendrite.call(started.axon, Access(challenge_id=spec.challenge_id, access_seed="ab" * 32))).ok
    outside = Open(challenge_id=spec.challenge_id, leaves=[LeafRef(kind="X", index=0, leaf=0)])
    assert (await dendrite.call(started.axon, outside)).http_status == 422
    mine = Open(challenge_id=spec.challenge_id, leaves=[LeafRef(kind="M", index=0, leaf=0)])
    assert (await dendrite.call(started.axon, mine)).ok
    assert (await dendrite.call(started.axon, mine)).http_status == 404  # a session opens once


async def test_a_serving_device_proves_the_memory_its_instances_leave_free_and_earns_that_share(miner, dendrite):
    """Instances hold 3/4 of the device: the sweep's proof fills the free quarter beside them
    (no instance stops) and the device's capacity credit is that quarter, so reserving memory
    cannot make credit out of nothing (two hotkeys splitting one device earn one device)."""
    device = devices(1, "serving", BIG_MEMORY)[0]
    started = await miner([device], reserved=lambda spec: 3 * spec.memory_bytes // 4)
    (result,) = await GravalVerifier(dendrite, [cpu_row()], allow_cpu=True).verify_miner(started.axon)
    assert result.ok and result.serving, result
    assert result.proven_bytes <= device.memory_bytes // 4
    assert 0.15 < result.proven_fraction < 0.3
    assert result.multiplier == pytest.approx(result.proven_fraction * cpu_row().compute_multiplier)
    idle = await miner([devices(1, "idle", BIG_MEMORY)[0]])
    (whole,) = await GravalVerifier(dendrite, [cpu_row()], allow_cpu=True).verify_miner(idle.axon)
    assert whole.ok and not whole.serving and whole.proven_fraction == 1.0


async def test_a_device_whose_instances_leave_too_little_is_not_challenged(miner, dendrite):
    device = devices(1, "full", MEMORY)[0]
    started = await miner([device], reserved=lambda spec: spec.memory_bytes - (1 << 20))
    (result,) = await GravalVerifier(dendrite, [cpu_row()], allow_cpu=True).verify_miner(started.axon)
    assert result.reason == "no_free_memory"


class SlowToAnswer(GravalService):
    """Answers Inventory late (to push its Prove after another hotkey's) and records when
    each Prove arrives."""

    delay = 1.0
    arrivals: list[float] = []

    async def inventory(self, synapse, caller):
        await asyncio.sleep(self.delay)
        return await super().inventory(synapse, caller)

    async def prove(self, synapse, caller):
        self.arrivals.append(time.monotonic())
        return await super().prove(synapse, caller)


class RecordsArrival(GravalService):
    async def prove(self, synapse, caller):
        SlowToAnswer.arrivals.append(time.monotonic())
        return await super().prove(synapse, caller)


async def test_a_sweep_sends_every_prove_at_one_instant_and_refuses_late_answers(miner, dendrite):
    """A miner cannot shift its challenge in time by answering Inventory slowly: all Proves
    go out at the sweep's instant, and answers after it fail ``late_for_sweep``."""
    SlowToAnswer.arrivals = []
    slow = await miner(devices(1, "slow"), service_class=SlowToAnswer)
    fast = await miner(devices(1, "fast"), service_class=RecordsArrival)
    verifier = GravalVerifier(dendrite, [cpu_row()], allow_cpu=True)
    prove_at = time.monotonic() + 2.5
    results = await asyncio.gather(verifier.verify_miner(slow.axon, prove_at=prove_at),
                                   verifier.verify_miner(fast.axon, prove_at=prove_at))
    assert [r.reason for batch in results for r in batch] == ["ok", "ok"]
    assert len(SlowToAnswer.arrivals) == 2 and abs(SlowToAnswer.arrivals[0] - SlowToAnswer.arrivals[1]) < 0.3
    late = await verifier.verify_miner(slow.axon, prove_at=time.monotonic() + 0.2)
    assert [r.reason for r in late] == ["late_for_sweep"]
