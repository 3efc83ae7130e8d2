"""The validator's step (``validator.loop.Validator``) in-process, against two real miner axons
in the same event loop on a tmp devnet: ``honest`` (one CPU pseudo-device, GravalService) and
``cheat`` (one device, its prover commits random roots: ``cheats.RandomRoots``).

Checked through ``await validator.step(wait=True)``: the first step verifies both miners and
scores them (honest > 0, cheat 0) and sets weights on the honest uid only; the next step
re-verifies nobody (the schedule); a device claimed later is verified at once (expedite); a
fresh Validator restored from the same store carries on without re-verifying; the StepReport
and the Prometheus counters. Devices are the GraVal tests' 4 MiB ones at n=512 (a 16 MiB
device at the table's n=1024 takes ~6 s of CPU per proof), so the module runs in seconds.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from canopy import __spec_version__
from protocol.options import AxonSettings
from node.wallets import create_devnet_wallet
from chain.devnet import DevnetChain, DevnetLedger
from miner.graval.service import GravalService
from protocol.axon import Axon
from protocol.dendrite import Dendrite
from tests.support import free_port
from miner.graval.adversaries import RandomRoots
from tests.support.graval import cpu_row, devices
from tests.support.validator import devnet_settings, sample
from validator.loop import StepReport, Validator

NETUID, TEMPO = 1, 100


@pytest.fixture(scope="module")
def wallets(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop-wallets")
    return SimpleNamespace(**{name: create_devnet_wallet(f"loop-{name}", "default", root)
                              for name in ("validator", "honest", "cheat")})


@pytest.fixture
async def subnet(tmp_path, wallets, monkeypatch):
    """The devnet with the staked validator and both miners serving their axons."""
    monkeypatch.setenv("CANOPY_HOME", str(tmp_path))
    ledger = DevnetLedger(tmp_path / "devnet.sqlite", block_time=1.0)
    ledger.create_subnet(NETUID, tempo=TEMPO, weights_rate_limit=0, stake_threshold=100)
    uid = {name: ledger.register(NETUID, getattr(wallets, name).hotkey.ss58_address,
                                 getattr(wallets, name).coldkeypub.ss58_address)
           for name in ("honest", "cheat", "validator")}
    ledger.add_stake(NETUID, wallets.validator.hotkey.ss58_address, 1000)
    chain = DevnetChain(ledger.path, ledger=ledger)
    axons = {}
    for name, options in (("honest", {}), ("cheat", {"prover_factory": lambda spec, backend: RandomRoots(spec, backend)})):
        axon = Axon(getattr(wallets, name), chain, NETUID, AxonSettings(ip="127.0.0.1", port=free_port()))
        GravalService(devices(1, name), **options).attach(axon)
        await axon.start()  # publishes its address on the devnet
        axons[name] = axon
    settings = devnet_settings(ledger.path, NETUID, "--validator.history_every_steps", "1")
    hk = {name: getattr(wallets, name).hotkey.ss58_address for name in uid}
    yield SimpleNamespace(ledger=ledger, chain=chain, axons=axons, settings=settings, uid=uid, hk=hk)
    for axon in axons.values():
        await axon.stop()


@pytest.fixture
async def make_validator(subnet, wallets, store):
    """Validators over the subnet and the test's store (closed at the end)."""
    made = []
    async with Dendrite(wallets.validator) as dendrite:
        def make() -> Validator:
            validator = Validator(wallet=wallets.validator, chain=subnet.chain, settings=subnet.settings, store=store,
                                  dendrite=dendrite, table=[cpu_row()])
            made.append(validator)
            return validator

        yield make
        for validator in made:
            await validator.close()


async def test_first_step_verifies_scores_and_sets_weights_then_the_next_one_reverifies_nobody(
        subnet, make_validator, store):
    validator, hk, uid = make_validator(), subnet.hk, subnet.uid
    first = await validator.step(wait=True)
    assert isinstance(first, StepReport)
    assert (first.step, first.miners, first.reachable, first.verifications_started) == (1, 2, 2, 2)
    assert first.synthetic_started and first.duration_s > 0 and 0 <= first.block <= subnet.ledger.block()
    assert first.raw[hk["honest"]] > 0 and first.raw[hk["cheat"]] == 0
    assert first.scores[hk["honest"]] == pytest.approx(first.raw[hk["honest"]])  # the EMA starts at raw
    assert first.scores.get(hk["cheat"], 0.0) == 0.0 and hk["validator"] not in first.raw

    honest_rows, cheat_rows = (await store.verifications_of(hk["honest"]), await store.verifications_of(hk["cheat"]))
    assert [(row.ok, row.reason) for row in honest_rows] == [(True, "ok")]
    assert [(row.ok, row.reason) for row in cheat_rows] == [(False, "bad_opening")]

    assert first.weights.ok and (first.weights.uids, first.weights.weights) == ([uid["honest"]], [1.0])
    assert subnet.ledger.weights(NETUID)[uid["validator"]] == {uid["honest"]: 1.0}
    submitted = await store.last_weights()
    assert submitted.version_key == __spec_version__ > 0 and json.loads(submitted.uids) == [uid["honest"]]
    assert (await store.load_scores())[1] == 1

    assert sample(validator, "canopy_validator_steps_total") == 1
    assert sample(validator, "canopy_validator_challenges_total", result="pass", reason="ok") == 1
    assert sample(validator, "canopy_validator_challenges_total", result="fail", reason="bad_opening") == 1
    assert sample(validator, "canopy_validator_weights_set_total", result="ok") == 1
    assert sample(validator, "canopy_validator_miners", state="reachable") == 2
    assert sample(validator, "canopy_validator_score", uid=str(uid["honest"])) == pytest.approx(first.scores[hk["honest"]])
    assert sample(validator, "canopy_validator_block") == first.block

    second = await validator.step(wait=True)
    assert (second.step, second.reachable, second.verifications_started) == (2, 2, 0)
    assert not second.synthetic_started and second.weights is None  # the next round and tempo are later
    assert second.scores[hk["honest"]] == pytest.approx(first.scores[hk["honest"]])
    assert len(await store.verifications_of(hk["honest"])) == 1 and len(await store.verifications_of(hk["cheat"])) == 1
    assert (await store.latest_verifications(hk["honest"]))[(hk["honest"], honest_rows[0].uuid)].ok  # device info agreed
    assert sample(validator, "canopy_validator_steps_total") == 2
    assert sample(validator, "canopy_validator_weights_set_total", result="ok") == 1
    assert [row.step for row in await store.score_history(hk["honest"])] == [1, 2]


async def test_a_device_claimed_later_is_verified_at_once(subnet, make_validator, store):
    validator, honest = make_validator(), subnet.hk["honest"]
    await validator.step(wait=True)
    (old,) = devices(1, "honest")
    new = devices(2, "honest-added")[1]
    GravalService([old, new]).attach(subnet.axons["honest"])  # the miner now offers two devices

    report = await validator.step(wait=True)
    assert report.verifications_started == 1
    latest = await store.latest_verifications(honest)
    assert set(latest) == {(honest, old.uuid), (honest, new.uuid)} and all(row.ok for row in latest.values())
    rows = {row.uuid: row for row in (await store.verifications_of(honest, limit=2))}
    assert rows[old.uuid].samples < rows[new.uuid].samples  # a device that passed before is re-sampled lighter
    assert sample(validator, "canopy_validator_challenges_total", result="pass", reason="ok") == 3
    assert (await validator.step(wait=True)).verifications_started == 0


async def test_a_restored_validator_carries_on_without_reverifying(subnet, make_validator, store):
    first = make_validator()
    await first.step(wait=True)
    await first.close()
    verified = {name: len(await store.verifications_of(subnet.hk[name])) for name in ("honest", "cheat")}

    restored = make_validator()
    await restored.restore()
    assert restored.scores == first.scores and restored.step_number == 1
    assert restored.weights.last_set_block == first.weights.last_set_block is not None
    report = await restored.step(wait=True)
    assert report.step == 2 and report.verifications_started == 0 and report.weights is None
    assert report.scores[subnet.hk["honest"]] == pytest.approx(first.scores[subnet.hk["honest"]])
    assert report.raw[subnet.hk["cheat"]] == 0.0
    assert {name: len(await store.verifications_of(subnet.hk[name])) for name in verified} == verified
    assert sample(restored, "canopy_validator_challenges_total", result="pass", reason="ok") == 0
