"""Device identity across the network and sweeps (``validator.identity``, ``validator.loop``,
``validator.rounds.sweep``), in-process against real miner axons on a tmp devnet and the
validator's real SQLite store.

Miners ``victim``, ``thief`` and ``other`` (three wallets: three coldkeys) each serve one CPU
pseudo-device. The ownership and scheduling tests prove nothing for real: ``InstantVerifier``
asks for the Inventory through the loop's own ``ClaimFilter`` exactly as ``GravalVerifier``
does, then "proves" each claim at once and records when, so the tests run in seconds and
judge only what this module decides (who is challenged, when, what is stored and credited).
``test_one_device_cannot_answer_for_two_hotkeys_in_one_sweep`` runs the real verifier
against two axons sharing one device.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from canopy.cli.main import app as cli
from protocol.options import AxonSettings
from node.wallets import create_devnet_wallet
from chain.devnet import DevnetChain, DevnetLedger
from miner.graval.service import GravalService
from protocol.axon import Axon
from protocol.dendrite import Dendrite
from protocol.graval.synapses import Inventory, InventoryResponse
from tests.support import free_port
from tests.support.graval import NOISY_BOX_ATTEMPTS, cpu_row, devices, phase_macs
from tests.support.network import StaticChain, neuron
from tests.support.store import sqlite_url
from tests.support.validator import devnet_settings, sample
from validator.graval.schedule import MIN_GAP
from validator.graval.session import DeviceResult
from validator.loop import Validator

NETUID, TEMPO = 1, 100
MINERS = ("victim", "thief", "other")


class Offered(GravalService):
    """A miner whose offer can change between steps, and that can answer only the next
    ``shown`` Inventory calls with its devices (then none: the loop's Inventory sees them, the
    sweep's own Inventory right after does not)."""

    shown: int | None = None

    def offer(self, offered) -> None:
        self.claims = list(offered)
        self.devices = {device.uuid: device for device in offered}

    async def inventory(self, synapse, caller):
        if self.shown is not None:
            if self.shown <= 0:
                return InventoryResponse(devices=[])
            self.shown -= 1
        return await super().inventory(synapse, caller)


class InstantVerifier:
    """``verify_miner`` up to the challenge as ``GravalVerifier`` does it (Inventory through the
    dendrite given: the loop's ``ClaimFilter``), then every claim passes after ``prove_s``;
    ``challenged`` records (hotkey, uuid, when the challenge started), ``most`` the most
    miners in a challenge at once."""

    def __init__(self, dendrite, prove_s: float = 0.2) -> None:
        self.dendrite, self.prove_s = dendrite, prove_s
        self.challenged: list[tuple[str, str, float]] = []
        self.proving = self.most = 0

    async def verify_miner(self, target, hotkey: str = "", known=(), prove_at=None) -> list[DeviceResult]:
        hotkey = hotkey or target.hotkey
        answer = await self.dendrite.call(target, Inventory(), timeout=15)
        if not answer.ok or not answer.response.devices:
            return []
        claims = answer.response.devices
        self.challenged += [(hotkey, claim.uuid, time.perf_counter()) for claim in claims]
        self.proving += 1
        self.most = max(self.most, self.proving)
        await asyncio.sleep(self.prove_s)
        self.proving -= 1
        return [DeviceResult(hotkey, claim.uuid, True, "ok", model_id="cpu", name=claim.name,
                             memory_bytes=claim.memory_bytes) for claim in claims]

    def uuids_of(self, hotkey: str) -> list[str]:
        return [uuid for who, uuid, _ in self.challenged if who == hotkey]


@pytest.fixture(scope="module")
def wallets(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity-wallets")
    return SimpleNamespace(**{name: create_devnet_wallet(f"id-{name}", "default", root)
                              for name in (*MINERS, "validator", "newcomer")})


@pytest.fixture
async def subnet(tmp_path, wallets, monkeypatch):
    """The devnet, the staked validator and the three miners serving their axons."""
    monkeypatch.setenv("CANOPY_HOME", str(tmp_path))
    ledger = DevnetLedger(tmp_path / "devnet.sqlite", block_time=1.0)
    # Full at these four (no immunity): one more registration deregisters uid 0, the victim.
    ledger.create_subnet(NETUID, tempo=TEMPO, weights_rate_limit=0, stake_threshold=100, max_allowed_uids=4,
                         immunity_period=0)
    for name in (*MINERS, "validator"):
        ledger.register(NETUID, getattr(wallets, name).hotkey.ss58_address, getattr(wallets, name).coldkeypub.ss58_address)
    ledger.add_stake(NETUID, wallets.validator.hotkey.ss58_address, 1000)
    chain = DevnetChain(ledger.path, ledger=ledger)
    axons, services, device = {}, {}, {}
    for name in MINERS:
        (device[name],) = devices(1, f"id-{name}")
        axon = Axon(getattr(wallets, name), chain, NETUID, AxonSettings(ip="127.0.0.1", port=free_port()))
        services[name] = Offered([device[name]]).attach(axon)
        await axon.start()
        axons[name] = axon
    hk = {name: getattr(wallets, name).hotkey.ss58_address for name in (*MINERS, "validator")}
    yield SimpleNamespace(ledger=ledger, chain=chain, axons=axons, service=services, device=device, hk=hk,
                          url=sqlite_url(tmp_path / "validator.sqlite"))
    for axon in axons.values():
        await axon.stop()


@pytest.fixture
async def make_validator(subnet, wallets, store):
    """Validators over the subnet and the test's store, each with an ``InstantVerifier``."""
    made = []
    async with Dendrite(wallets.validator) as dendrite:
        def make(*flags: str) -> Validator:
            settings = devnet_settings(subnet.ledger.path, NETUID, *flags)
            validator = Validator(wallet=wallets.validator, chain=subnet.chain, settings=settings, store=store,
                                  dendrite=dendrite, table=[cpu_row()])
            validator.verifier = InstantVerifier(validator.claims)
            made.append(validator)
            return validator

        yield make
        for validator in made:
            await validator.close()


async def devices_cli(*args: str) -> str:
    """``canopy devices ...`` (its own event loop, so in a thread beside the test's)."""
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["devices", *args], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


async def test_a_victims_uuid_claimed_by_another_hotkey_is_refused_unchallenged_and_the_victims_credit_unchanged(
        subnet, make_validator, store):
    validator, hk, dev = make_validator(), subnet.hk, subnet.device
    victim, thief, stolen = hk["victim"], hk["thief"], dev["victim"].uuid
    first = await validator.step(wait=True)
    assert first.verifications_started == 3 and first.raw[victim] > 0
    victims_row = (await store.latest_verifications(victim))[(victim, stolen)]

    subnet.service["thief"].offer([dev["thief"], dev["victim"]])  # another coldkey claims the victim's uuid too
    second = await validator.step(wait=True)
    assert second.verifications_started == 1  # a device never challenged for the thief: its own first round
    assert validator.verifier.uuids_of(thief) == [dev["thief"].uuid] * 2  # the stolen uuid was never challenged
    latest = await store.latest_verifications()
    assert latest[(victim, stolen)].id == victims_row.id and latest[(victim, stolen)].ok  # untouched
    assert (latest[(thief, stolen)].ok, latest[(thief, stolen)].reason) == (False, "uuid_taken")
    assert victim in latest[(thief, stolen)].detail
    assert (await store.device_owners())[stolen].hotkey == victim
    assert second.raw[victim] == pytest.approx(first.raw[victim])  # credited exactly as before
    assert second.raw[thief] == pytest.approx(first.raw[thief])  # its own device only
    assert sample(validator, "canopy_validator_challenges_total", result="fail", reason="uuid_taken") == 1
    assert sample(validator, "canopy_validator_verified_devices", model="cpu", calibrated="false") == 3

    # The refusal is a failure: the thief is on probation, its next new uuid waits for a sweep.
    (fresh,) = devices(1, "id-thief-fresh")
    subnet.service["thief"].offer([dev["thief"], dev["victim"], fresh])
    assert (await validator.step(wait=True)).verifications_started == 0
    assert fresh.uuid not in validator.verifier.uuids_of(thief)
    validator.schedule.next_sweep_at = 0.0
    swept = await validator.step(wait=True)
    assert swept.verifications_started == 3 and fresh.uuid in validator.verifier.uuids_of(thief)
    assert stolen not in validator.verifier.uuids_of(thief)
    assert (await store.latest_verifications(victim))[(victim, stolen)].ok
    assert swept.raw[victim] > 0 and swept.raw[victim] == pytest.approx(swept.raw[hk["other"]])


async def test_first_verified_wins_across_a_restart(subnet, make_validator, store):
    hk, dev, stolen = subnet.hk, subnet.device, subnet.device["victim"].uuid
    first = make_validator()
    await first.step(wait=True)
    first.schedule.next_sweep_at = 0.0
    await first.step(wait=True)  # a sweep, so the store has one
    await first.close()
    last = await store.last_sweep()
    assert last.miners == 3 and last.devices == 3 and last.failed == 0 and last.finished_at >= last.started_at

    subnet.service["thief"].offer([dev["victim"]])  # after the restart the thief claims only the victim's uuid
    restored = make_validator()
    await restored.restore()
    assert restored.schedule.last_sweep_at == last.started_at
    assert restored.schedule.next_sweep_at >= last.started_at + MIN_GAP * restored.schedule.interval_s
    report = await restored.step(wait=True)
    assert report.verifications_started == 1 and stolen not in restored.verifier.uuids_of(hk["thief"])
    latest = await store.latest_verifications()
    assert latest[(hk["thief"], stolen)].reason == "uuid_taken" and latest[(hk["victim"], stolen)].ok
    assert report.raw[hk["thief"]] == 0.0 and report.raw[hk["victim"]] > 0
    assert (await store.device_owners())[stolen].hotkey == hk["victim"]


async def test_the_operator_reassigns_pins_and_releases_a_device(subnet, make_validator, store):
    validator, hk, dev, stolen = make_validator(), subnet.hk, subnet.device, subnet.device["victim"].uuid
    await validator.step(wait=True)
    subnet.service["thief"].offer([dev["victim"]])
    assert (await validator.step(wait=True)).raw[hk["thief"]] == 0.0  # refused

    out = await devices_cli("owner", stolen, "--hotkey", hk["thief"], "--pin", "--database-url", subnet.url)
    assert hk["thief"] in out and f"was {hk['victim']}" in out and "pinned" in out
    after = await validator.step(wait=True)  # the override counts from the next step
    assert after.raw[hk["victim"]] == 0.0 and after.raw[hk["thief"]] == 0.0  # the thief's last claim was refused
    validator.schedule.next_sweep_at = 0.0  # the thief is on probation: its claim is challenged in the next sweep
    swept = await validator.step(wait=True)
    assert stolen in validator.verifier.uuids_of(hk["thief"])
    assert validator.verifier.uuids_of(hk["victim"]).count(stolen) == 1  # the old owner's claim: refused, unchallenged
    latest = await store.latest_verifications()
    assert latest[(hk["thief"], stolen)].ok and latest[(hk["victim"], stolen)].reason == "uuid_taken"
    assert swept.raw[hk["thief"]] > 0 and swept.raw[hk["victim"]] == 0.0

    listed = await devices_cli("list", "--database-url", subnet.url)
    assert stolen in listed and hk["thief"] in listed and "yes" in listed
    out = await devices_cli("release", stolen, "--database-url", subnet.url)
    assert "released" in out and stolen not in await store.device_owners()


async def test_a_sweep_challenges_every_miners_devices_at_once_whatever_the_cap(subnet, make_validator, store):
    validator = make_validator("--validator.max_concurrent_verifications", "1")
    first = await validator.step(wait=True)
    assert first.verifications_started == 3 and validator.verifier.most == 1  # first rounds: one at a time
    validator.verifier.challenged.clear()
    validator.verifier.prove_s = 1.0  # long enough that every miner is seen proving at once, even on a busy box
    validator.schedule.next_sweep_at = 0.0
    report = await validator.step(wait=True)
    assert report.verifications_started == 3 and validator.verifier.most == 3  # the cap does not split a sweep
    starts = {hotkey: at for hotkey, _, at in validator.verifier.challenged}
    assert set(starts) == {subnet.hk[name] for name in MINERS}
    assert max(starts.values()) - min(starts.values()) < 0.5, starts
    assert sample(validator, "canopy_validator_sweeps_total") == 1
    assert validator.schedule.next_sweep_at > time.time()


async def test_a_device_hidden_from_the_sweep_fails_as_not_offered(subnet, make_validator, store):
    validator, hk, dev = make_validator(), subnet.hk, subnet.device
    await validator.step(wait=True)
    subnet.service["thief"].shown = 1  # the step's Inventory sees its device, the sweep's does not
    validator.schedule.next_sweep_at = 0.0
    report = await validator.step(wait=True)
    latest = await store.latest_verifications()
    assert (latest[(hk["thief"], dev["thief"].uuid)].ok, latest[(hk["thief"], dev["thief"].uuid)].reason) == (
        False, "not_offered")
    assert report.raw[hk["thief"]] == 0.0 and report.raw[hk["victim"]] > 0


async def test_a_deregistered_owners_devices_are_released(subnet, make_validator, store, wallets):
    validator, hk, dev, freed = make_validator(), subnet.hk, subnet.device, subnet.device["victim"].uuid
    await validator.step(wait=True)
    await store.set_device_owner(dev["other"].uuid, hk["victim"], pinned=True, now=time.time())  # pinned stays
    subnet.ledger.register(NETUID, wallets.newcomer.hotkey.ss58_address, wallets.newcomer.coldkeypub.ss58_address)
    assert hk["victim"] not in {n.hotkey for n in (await subnet.chain.metagraph(NETUID)).neurons}
    subnet.service["thief"].offer([dev["thief"], dev["victim"]])  # the victim's GPU, now in the thief's rig
    validator.synced_block = -(1 << 62)  # the next step reads the metagraph
    report = await validator.step(wait=True)
    owners = await store.device_owners()
    assert owners[freed].hotkey == hk["thief"] and owners[dev["other"].uuid].hotkey == hk["victim"]
    assert freed in validator.verifier.uuids_of(hk["thief"]) and report.raw[hk["thief"]] > 0


# --- one device, two hotkeys, one sweep: the real verifier ------------------------------------

class SharedDevice(GravalService):
    """One of two miners (two hotkeys) whose provers share one device (``device``, one lock for
    both): a proof holds it from its fill to the end of its access phase, as its matrices hold
    a GPU's memory, so the other's proof waits. ``proves`` records when each Prove arrived."""

    def __init__(self, claims, *, device: asyncio.Lock, proves: list, **options) -> None:
        super().__init__(claims, **options)
        self.device, self.proves = device, proves

    async def prove(self, synapse, caller):
        self.proves.append((synapse.spec.uuid, time.perf_counter()))
        held = False
        try:
            await self.device.acquire()
            held = True
            return await super().prove(synapse, caller)
        except BaseException:
            if held:
                self.device.release()
            raise

    async def access(self, synapse, caller):
        try:
            return await super().access(synapse, caller)
        finally:
            if self.device.locked():
                self.device.release()


def calibrated_row(honest: DeviceResult) -> object:
    """The cpu row at the per-phase speed ``honest`` showed (``phase_macs``: the work of each
    phase). Windows [0.05, 1.6]: one device proving two claims back to back takes 2x."""
    fill_macs, access_macs = phase_macs()
    return cpu_row(fill_macs_per_s=fill_macs / honest.fill_s, access_macs_per_s=access_macs / honest.access_s,
                   window_low=0.05, window_high=1.6)


@pytest.fixture
async def two_hotkeys_one_device(tmp_path_factory):
    """Two miner axons (two hotkeys, two coldkeys) in this process backed by one device, each
    claiming a same-class device under its own uuid; the validator's dendrite."""
    from chain.base import Metagraph

    root = tmp_path_factory.mktemp("shared-device")
    a, b, validator = (create_devnet_wallet(f"shared-{name}", "default", root) for name in ("a", "b", "validator"))
    graph = Metagraph(netuid=NETUID, block=10, neurons=(neuron(0, a, stake=0.0, permit=False),
                                                       neuron(1, b, stake=0.0, permit=False),
                                                       neuron(2, validator, stake=1000.0, permit=True)))
    device, proves, axons = asyncio.Lock(), [], []
    for wallet, salt in ((a, "shared-a"), (b, "shared-b")):
        axon = Axon(wallet, StaticChain(graph), NETUID, AxonSettings(ip="127.0.0.1", port=free_port()))
        SharedDevice(devices(1, salt), device=device, proves=proves).attach(axon)
        await axon.start()
        axons.append(axon)
    async with Dendrite(validator) as dendrite:
        yield SimpleNamespace(miners=[SimpleNamespace(hotkey=axon.hotkey, url=axon.url, uid=uid)
                                      for uid, axon in enumerate(axons)], proves=proves, dendrite=dendrite,
                              device=device)
    for axon in axons:
        await axon.stop()


async def test_one_device_cannot_answer_for_two_hotkeys_in_one_sweep(two_hotkeys_one_device, store):
    from validator import rounds
    from validator.graval.session import GravalVerifier
    from validator.identity import ClaimFilter

    shared = two_hotkeys_one_device
    claims = ClaimFilter(shared.dendrite)
    loose = cpu_row(window_low=1e-4, window_high=1e4)
    for _ in range(NOISY_BOX_ATTEMPTS):
        # The row: this machine's speed, the faster of each hotkey's claim proved alone.
        # (16 samples a phase: this test is about time, not about catching skipped work.)
        alone = [(await GravalVerifier(claims, [loose], allow_cpu=True, samples=16).verify_miner(miner))[0]
                 for miner in shared.miners]
        assert all(result.ok for result in alone), alone
        verifier = GravalVerifier(claims, [calibrated_row(min(alone, key=lambda r: r.elapsed_s))], allow_cpu=True,
                                  samples=16)
        # One sweep challenges both at once: the shared device cannot finish both inside the window.
        shared.proves.clear()
        swept = await rounds.sweep(verifier, store, [(miner, set(), set()) for miner in shared.miners], claims=claims,
                                   gather_s=2.0)
        if shared.device.locked():  # held by a fill the validator judged too slow (no access phase followed)
            shared.device.release()
        starts = [at for _, at in shared.proves]
        assert len(starts) == 2 and max(starts) - min(starts) < 0.5, starts  # the Prove calls arrived together
        reasons = sorted(result.reason for result in swept)
        assert reasons.count("ok") <= 1, swept  # never both, whatever the load
        if reasons == ["ok", "too_slow"]:  # the first in time, the second queued behind it
            return
    pytest.fail(f"both proofs missed the window in {NOISY_BOX_ATTEMPTS} attempts: the box is too loaded to judge")
