"""An in-memory ``bittensor.Substrate`` for the SubtensorChain tests: a tiny subtensor.

A test hands it to ``bittensor.Client(substrate=...)``. It implements the Substrate
methods the SDK calls on the adapter's paths: ``connect``, ``close``, ``balance``,
``block_number``, ``finalized_block_number``, ``block_hash``, ``block_time``, ``query``,
``query_map``, ``runtime_call``, ``compose``, ``estimate_fee``, ``account_next_index``,
``submit``, ``sign_extrinsic``, ``mev_next_key`` and ``find_extrinsic``. Anything else
the SDK asks for raises, so a changed SDK path shows up as a failing test rather than a
silent default.

Values come back decoded the way ``RpcSubstrate`` hands them over: ss58 strings for
AccountId, ints for integers and compacts, None for an absent Option, unit enum variants
as strings, ``{"bits": n}`` for fixed-point numbers, ``CallBytes`` for composed calls and
``ExtrinsicResult`` for writes. Extrinsics are really signed by the key the SDK resolves
(the signature is verified against the signer's address) and dispatched against the fake
state with the chain's own rules and error names for the calls Canopy makes. The only
shortcut: the fake cannot decrypt a MEV-shield carrier, so the inner extrinsic the SDK
signed for it (``sign_extrinsic``) is executed in the carrier's block, as the author would.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Callable, Optional

import bittensor_core
from bittensor import Balance, ExtrinsicResult
from bittensor._generated.errors import ERRORS
from bittensor._transport.contract import CallBytes
from bittensor.result import chain_error_from_dispatch, chain_error_from_substrate_request

SPEC_VERSION = 400
U16_MAX = 65535
TAO_WEIGHT_PERCENT = 18  # the chain's tao_weight (0.18): root TAO counts 18% towards stake weight
_MODULE_ERRORS = {info.name: key for key, info in ERRORS.items() if info.pallet == "SubtensorModule"}


@dataclass
class FakeNeuron:
    """One uid. Amounts are in rao; scores are the runtime's u16 (PerU16) values."""

    hotkey: str
    coldkey: str
    alpha_stake: int = 0
    tao_stake: int = 0
    validator_permit: bool = False
    axon: Optional[dict] = None  # the runtime's AxonInfo record; None = never served
    incentive: int = 0
    dividends: int = 0
    consensus: int = 0
    trust: int = 0
    rank: int = 0
    emission: int = 0
    last_update: int = 0
    registered_at: int = 0

    @property
    def total_stake(self) -> int:
        return self.alpha_stake + self.tao_stake * TAO_WEIGHT_PERCENT // 100


@dataclass
class FakeSubnet:
    """A subnet's hyperparameters (raw chain values) and its neurons, uid = list index."""

    netuid: int
    owner_hotkey: str
    owner_coldkey: str
    tempo: int = 360
    weights_rate_limit: int = 100
    commit_reveal: bool = False
    reveal_period: int = 1
    max_validators: int = 64
    max_allowed_uids: int = 256
    immunity_period: int = 5000
    min_allowed_weights: int = 1
    max_weights_limit: int = U16_MAX
    weights_version: int = 0
    burn: int = 500_000_000
    registered_at: int = 10
    last_epoch_block: int = 0
    symbol: str = "\u03b3"
    neurons: list[FakeNeuron] = field(default_factory=list)
    weights: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    commits: dict[int, list[dict]] = field(default_factory=dict)

    def uid_of(self, hotkey: str) -> Optional[int]:
        for uid, neuron in enumerate(self.neurons):
            if neuron.hotkey == hotkey:
                return uid
        return None


@dataclass
class FakeExtrinsic:
    """A signed extrinsic as the fake saw it, with where it landed (if it did)."""

    module: str
    function: str
    params: dict
    signer: str
    nonce: int
    payload: bytes
    signature: bytes
    block: Optional[int] = None
    index: Optional[int] = None
    error: Optional[str] = None  # the chain error name when dispatch failed

    @property
    def data(self) -> bytes:
        return self.payload + self.signature

    @property
    def hash(self) -> str:
        return "0x" + blake2b(self.data, digest_size=32).hexdigest()


def axon_record(
    ip: int, port: int, *, ip_type: int = 4, protocol: int = 4, version: int = 1, block: int = 0
) -> dict:
    """The runtime's ``AxonInfo`` as decoded (ip is the u128 integer)."""
    return {
        "block": block,
        "version": version,
        "ip": ip,
        "port": port,
        "ip_type": ip_type,
        "protocol": protocol,
        "placeholder1": 0,
        "placeholder2": 0,
    }


class FakeSubstrate:
    """Chain state at the head block, plus every extrinsic signed, included or rejected."""

    def __init__(self, *, block: int = 5000, block_time: float = 12.0) -> None:
        self.head = block
        self.seconds_per_block = block_time
        self.stake_threshold_rao = 1000 * 10**9
        self.subnets: dict[int, FakeSubnet] = {}
        self.token_symbols: dict[int, str] = {}
        self.connected = False
        self.closed = False
        self.storage_reads: list[str] = []
        self.composed: list[tuple[str, str, dict]] = []
        self.signed: list[FakeExtrinsic] = []
        self.extrinsics: list[FakeExtrinsic] = []  # included, in block order
        self.rejected: list[tuple[FakeExtrinsic, str]] = []  # refused by the pool
        #: RPC messages the pool answers the next submissions with, e.g. "Custom error: 6".
        self.pool_rejections: list[str] = []
        #: Called with each extrinsic just before it is dispatched (to stage races).
        self.before_dispatch: list[Callable[[FakeExtrinsic], None]] = []
        self.mev_key = _mlkem768_public_key(seed=block)
        self._calls: dict[bytes, tuple[str, str, dict]] = {}
        self._nonces: dict[str, int] = {}
        self._shielded: list[FakeExtrinsic] = []
        self._results: dict[int, dict[str, ExtrinsicResult]] = {}
        self._handed_out: dict[str, int] = {}  # block hashes given to the SDK

    def add_subnet(self, netuid: int, owner_hotkey: str, owner_coldkey: str, **settings: Any) -> FakeSubnet:
        subnet = FakeSubnet(netuid, owner_hotkey, owner_coldkey, **settings)
        self.subnets[netuid] = subnet
        return subnet

    # Lifecycle and display ---------------------------------------------------------

    def balance(self, rao: int, netuid: int = 0) -> Balance:
        return Balance(int(rao), netuid, self.token_symbols.get(netuid) if netuid else None)

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.closed = True

    # Reads ---------------------------------------------------------------------------

    async def block_number(self) -> int:
        return self.head

    async def finalized_block_number(self) -> int:
        return self.head

    async def block_hash(self, block: Optional[int] = None) -> Optional[str]:
        number = self.head if block is None else int(block)
        if not 0 <= number <= self.head:
            return None
        self._handed_out[_block_hash(number)] = number
        return _block_hash(number)

    async def block_time(self) -> float:
        return self.seconds_per_block

    async def query(
        self, module: str, storage_function: str, params: Optional[list] = None, block_hash: Optional[str] = None
    ) -> Any:
        self._check_hash(block_hash)
        self.storage_reads.append(storage_function)
        return self._storage(module, storage_function, list(params or []))

    async def query_map(
        self, module: str, storage_function: str, params: Optional[list] = None, block_hash: Optional[str] = None
    ) -> list[tuple[Any, Any]]:
        self._check_hash(block_hash)
        if (module, storage_function) == ("SubtensorModule", "TokenSymbol"):
            return [(netuid, "0x" + subnet.symbol.encode().hex()) for netuid, subnet in self.subnets.items()]
        raise NotImplementedError(f"the fake has no storage map {module}.{storage_function}")

    async def runtime_call(self, api: str, method: str, params: list, block_hash: Optional[str] = None) -> Any:
        self._check_hash(block_hash)
        subnet = self.subnets.get(int(params[0])) if params else None
        if (api, method) == ("SubnetInfoRuntimeApi", "get_metagraph"):
            return None if subnet is None else self._metagraph_record(subnet)
        if (api, method) == ("SubnetInfoRuntimeApi", "get_subnet_hyperparams_v3"):
            return None if subnet is None else _hyperparams_record(subnet)
        raise NotImplementedError(f"the fake has no runtime API {api}.{method}")

    def _check_hash(self, block_hash: Optional[str]) -> None:
        if block_hash is not None and block_hash not in self._handed_out:
            raise AssertionError(f"unknown block hash {block_hash}")

    def _storage(self, module: str, name: str, params: list) -> Any:
        if module != "SubtensorModule":
            raise NotImplementedError(f"the fake has no storage {module}.{name}")
        if name == "StakeThreshold":
            return self.stake_threshold_rao
        netuid = int(params[0]) % 4096 if params else None  # mechanism 0 storage index == netuid
        subnet = self.subnets.get(netuid) if netuid is not None else None
        if name == "NetworksAdded":
            return subnet is not None
        if name == "Uids":
            return None if subnet is None else subnet.uid_of(params[1])
        if name in _SUBNET_VALUES:
            attribute, default = _SUBNET_VALUES[name]
            return default if subnet is None else getattr(subnet, attribute)
        neurons = subnet.neurons if subnet is not None else []
        if name == "LastUpdate":
            return [n.last_update for n in neurons]
        if name == "ValidatorPermit":
            return [n.validator_permit for n in neurons]
        if name == "SubnetEpochConsensus":
            return "Yuma"  # a unit enum variant decodes to its name
        if name in ("PendingEpochAt", "CollateralLockShare"):
            return 0
        if name == "SubnetEpochIndex":
            return 0 if subnet is None else self.head // (subnet.tempo + 1)
        if name == "BlocksSinceLastStep":
            return 0 if subnet is None else self.head - subnet.last_epoch_block
        raise NotImplementedError(f"the fake has no storage SubtensorModule.{name}")

    def _metagraph_record(self, subnet: FakeSubnet) -> dict:
        """``SubnetInfoRuntimeApi.get_metagraph`` as decoded: one column per field."""
        neurons = subnet.neurons
        column = lambda attribute: [getattr(n, attribute) for n in neurons]  # noqa: E731
        unserved = axon_record(0, 0, protocol=0, version=0)
        return {
            "netuid": subnet.netuid,
            "name": list(f"subnet {subnet.netuid}".encode()),  # Vec<Compact<u8>>
            "symbol": list(subnet.symbol.encode()),
            "identity": None,
            "network_registered_at": subnet.registered_at,
            "owner_hotkey": subnet.owner_hotkey,
            "owner_coldkey": subnet.owner_coldkey,
            "block": self.head,
            "tempo": subnet.tempo,
            "last_step": subnet.last_epoch_block,
            "blocks_since_last_step": self.head - subnet.last_epoch_block,
            "subnet_emission": 0,
            "alpha_in": 2_000_000_000_000,
            "alpha_out": 1_000_000_000_000,
            "tao_in": 500_000_000_000,
            "moving_price": {"bits": 1 << 30},  # I96F32: 0.25
            "rho": 10,
            "kappa": 32767,
            "min_allowed_weights": subnet.min_allowed_weights,
            "max_weights_limit": subnet.max_weights_limit,
            "weights_version": subnet.weights_version,
            "weights_rate_limit": subnet.weights_rate_limit,
            "activity_cutoff": 5000,
            "max_validators": subnet.max_validators,
            "num_uids": len(neurons),
            "max_uids": subnet.max_allowed_uids,
            "burn": subnet.burn,
            "immunity_period": subnet.immunity_period,
            "commit_reveal_weights_enabled": subnet.commit_reveal,
            "commit_reveal_period": subnet.reveal_period,
            "hotkeys": column("hotkey"),
            "coldkeys": column("coldkey"),
            "identities": [None] * len(neurons),
            "axons": [n.axon or unserved for n in neurons],
            "active": [True] * len(neurons),
            "validator_permit": column("validator_permit"),
            "pruning_score": [0] * len(neurons),
            "last_update": column("last_update"),
            "emission": column("emission"),
            "dividends": column("dividends"),
            "incentives": column("incentive"),
            "consensus": column("consensus"),
            "trust": column("trust"),
            "rank": column("rank"),
            "block_at_registration": column("registered_at"),
            "alpha_stake": column("alpha_stake"),
            "tao_stake": column("tao_stake"),
            "total_stake": [n.total_stake for n in neurons],
            "tao_dividends_per_hotkey": [(n.hotkey, 0) for n in neurons],
            "alpha_dividends_per_hotkey": [(n.hotkey, 0) for n in neurons],
        }

    # Calls and fees -------------------------------------------------------------------

    async def compose(self, call: Any) -> CallBytes:
        module, function, params = call
        pallet = 7 if module == "SubtensorModule" else 0xFF
        digest = blake2b(repr((module, function, params, len(self._calls))).encode(), digest_size=16)
        data = bytes([pallet]) + digest.digest()
        self._calls[data] = (module, function, dict(params))
        self.composed.append((module, function, dict(params)))
        return CallBytes(data=data, spec_version=SPEC_VERSION)

    async def estimate_fee(self, call: Any, keypair: Any) -> Balance:
        return Balance.from_rao(125_000)

    async def account_next_index(self, address: str) -> int:
        return self._nonces.get(address, 0)

    async def mev_next_key(self) -> Optional[bytes]:
        return self.mev_key

    # Writes -----------------------------------------------------------------------------

    async def sign_extrinsic(self, call: CallBytes, keypair: Any, *, nonce: int, period: int) -> tuple[bytes, str]:
        """Sign without submitting: the inner extrinsic of a MEV-shield carrier."""
        extrinsic = await self._sign(call, keypair, nonce)
        self._shielded.append(extrinsic)
        return extrinsic.data, extrinsic.hash

    async def submit(
        self,
        call: CallBytes,
        keypair: Any,
        *,
        nonce: Optional[int] = None,
        period: Optional[int] = None,
        wait_for_inclusion: bool = True,
        wait_for_finalization: bool = True,
    ) -> ExtrinsicResult:
        extrinsic = await self._sign(call, keypair, nonce)
        rejection = self._pool_check(extrinsic)
        if rejection is not None:
            self.rejected.append((extrinsic, rejection))
            error = chain_error_from_substrate_request(Exception(rejection))
            return ExtrinsicResult(success=False, message=error.message, error=error)
        batch = [extrinsic]
        if (extrinsic.module, extrinsic.function) == ("MevShield", "submit_encrypted"):
            batch += self._shielded  # the author decrypts and includes them in the same block
            self._shielded = []
        results = self._produce_block(batch)
        if not (wait_for_inclusion or wait_for_finalization):
            return ExtrinsicResult(success=True, message="Submitted (not waiting).")
        return results[0]

    async def find_extrinsic(self, extrinsic_hash: str, block_hash: str) -> Optional[ExtrinsicResult]:
        for number, results in self._results.items():
            if _block_hash(number) == block_hash:
                return results.get(extrinsic_hash)
        return None

    async def _sign(self, call: CallBytes, keypair: Any, nonce: Optional[int]) -> FakeExtrinsic:
        module, function, params = self._calls[call.data]
        address = keypair.ss58_address
        nonce = self._nonces.get(address, 0) if nonce is None else nonce
        payload = call.data + nonce.to_bytes(8, "little") + bytes.fromhex(_block_hash(0)[2:])
        signature = keypair.sign(payload)
        if inspect.isawaitable(signature):
            signature = await signature
        extrinsic = FakeExtrinsic(module, function, params, address, nonce, payload, bytes(signature))
        self.signed.append(extrinsic)
        return extrinsic

    def _pool_check(self, extrinsic: FakeExtrinsic) -> Optional[str]:
        if self.pool_rejections:
            return self.pool_rejections.pop(0)
        if not bittensor_core.verify_signature(extrinsic.payload, extrinsic.signature, extrinsic.signer):
            return "Invalid Transaction: Transaction has a bad signature"
        return None

    def _produce_block(self, batch: list[FakeExtrinsic]) -> list[ExtrinsicResult]:
        self.head += 1
        block, block_hash = self.head, _block_hash(self.head)
        results = []
        for index, extrinsic in enumerate(batch):
            extrinsic.block, extrinsic.index = block, index
            self._nonces[extrinsic.signer] = extrinsic.nonce + 1
            for hook in self.before_dispatch:
                hook(extrinsic)
            extrinsic.error = self._dispatch(extrinsic, block)
            self.extrinsics.append(extrinsic)
            common = {"block_hash": block_hash, "extrinsic_id": f"{block}-{index:04d}"}
            if extrinsic.error is None:
                success = {"module_id": "System", "event_id": "ExtrinsicSuccess", "attributes": {}}
                event = {"phase": {"ApplyExtrinsic": index}, "event": success, "topics": []}
                fee = Balance.from_rao(125_000)
                results.append(ExtrinsicResult(success=True, message="Success", fee=fee, events=[event], **common))
            else:
                pallet, error_index = _MODULE_ERRORS[extrinsic.error]
                error = chain_error_from_dispatch({"Module": {"index": pallet, "error": f"0x{error_index:02x}000000"}})
                results.append(ExtrinsicResult(success=False, message=error.message, error=error, **common))
        self._results[block] = {e.hash: r for e, r in zip(batch, results)}
        return results

    def _dispatch(self, extrinsic: FakeExtrinsic, block: int) -> Optional[str]:
        """Apply one call with the chain's checks; the error name on failure."""
        call, params = (extrinsic.module, extrinsic.function), extrinsic.params
        if call == ("MevShield", "submit_encrypted"):
            return None
        if call[0] != "SubtensorModule":
            raise NotImplementedError(f"the fake cannot dispatch {call}")
        subnet = self.subnets.get(int(params["netuid"]))
        if subnet is None:
            return "MechanismDoesNotExist" if "weights" in call[1] else "SubnetNotExists"
        if call[1] == "burned_register":
            if subnet.uid_of(params["hotkey"]) is not None:
                return "HotKeyAlreadyRegisteredInSubNet"
            if len(subnet.neurons) >= subnet.max_allowed_uids:
                return "NoNeuronIdAvailable"
            subnet.neurons.append(FakeNeuron(params["hotkey"], extrinsic.signer, registered_at=block))
            return None
        uid = subnet.uid_of(extrinsic.signer)
        if call[1] == "serve_axon":
            if uid is None:
                return "HotKeyNotRegisteredInNetwork"
            if params["ip_type"] not in (4, 6):
                return "InvalidIpType"
            if not params["ip"]:
                return "InvalidIpAddress"
            if not params["port"]:
                return "InvalidPort"
            fields = ("version", "ip", "port", "ip_type", "protocol", "placeholder1", "placeholder2")
            subnet.neurons[uid].axon = {"block": block, **{name: params[name] for name in fields}}
            return None
        if call[1] in ("set_mechanism_weights", "commit_timelocked_mechanism_weights"):
            return self._weights(subnet, uid, call[1], params, block)
        raise NotImplementedError(f"the fake cannot dispatch {call}")

    def _weights(
        self, subnet: FakeSubnet, uid: Optional[int], function: str, params: dict, block: int
    ) -> Optional[str]:
        if uid is None:
            return "HotKeyNotRegisteredInSubNet"
        neuron = subnet.neurons[uid]
        too_fast = neuron.last_update > 0 and block - neuron.last_update < subnet.weights_rate_limit
        if function == "commit_timelocked_mechanism_weights":
            if not subnet.commit_reveal:
                return "CommitRevealDisabled"
            if too_fast:
                return "CommittingWeightsTooFast"
            subnet.commits.setdefault(uid, []).append({**params, "block": block})
            neuron.last_update = block
            return None
        dests, values = list(params["dests"]), list(params["weights"])
        if subnet.commit_reveal:
            return "CommitRevealEnabled"
        if len(dests) != len(values):
            return "WeightVecNotEqualSize"
        if len(set(dests)) != len(dests):
            return "DuplicateUids"
        if any(dest >= len(subnet.neurons) for dest in dests):
            return "UidVecContainInvalidOne"
        if len(dests) < subnet.min_allowed_weights and dests != [uid]:
            return "WeightVecLengthIsLow"
        if params["version_key"] < subnet.weights_version:
            return "IncorrectWeightVersionKey"
        if too_fast:
            return "SettingWeightsTooFast"
        subnet.weights[uid] = list(zip(dests, values))
        neuron.last_update = block
        return None


# storage name -> (FakeSubnet attribute, the chain's default for a missing subnet)
_SUBNET_VALUES = {
    "Tempo": ("tempo", 360),
    "WeightsSetRateLimit": ("weights_rate_limit", 100),
    "CommitRevealWeightsEnabled": ("commit_reveal", False),
    "RevealPeriodEpochs": ("reveal_period", 1),
    "MaxAllowedValidators": ("max_validators", 128),
    "MaxAllowedUids": ("max_allowed_uids", 256),
    "ImmunityPeriod": ("immunity_period", 4096),
    "MinAllowedWeights": ("min_allowed_weights", 0),
    "MaxWeightsLimit": ("max_weights_limit", U16_MAX),
    "WeightsVersionKey": ("weights_version", 0),
    "Burn": ("burn", 1_000_000_000),
    "LastEpochBlock": ("last_epoch_block", 0),
}


def _hyperparams_record(subnet: FakeSubnet) -> list[dict]:
    """``get_subnet_hyperparams_v3`` as decoded: ``{name, value: {type_tag: payload}}``
    entries. Like the real API it omits owner settings such as max_allowed_uids."""
    entries = [
        ("rho", "U16", 10),
        ("kappa", "U16", 32767),
        ("immunity_period", "U16", subnet.immunity_period),
        ("min_allowed_weights", "U16", subnet.min_allowed_weights),
        ("max_weights_limit", "U16", subnet.max_weights_limit),
        ("tempo", "U16", subnet.tempo),
        ("min_difficulty", "U64", 10_000_000),
        ("max_difficulty", "U64", 2**64 - 1),
        ("weights_version", "U64", subnet.weights_version),
        ("weights_rate_limit", "U64", subnet.weights_rate_limit),
        ("adjustment_interval", "U16", 112),
        ("activity_cutoff", "U16", 5000),
        ("registration_allowed", "Bool", True),
        ("target_regs_per_interval", "U16", 2),
        ("min_burn", "U64", 500_000),
        ("max_burn", "U64", 100_000_000_000),
        ("bonds_moving_avg", "U64", 900_000),
        ("max_regs_per_block", "U16", 1),
        ("serving_rate_limit", "U64", 50),
        ("max_validators", "U16", subnet.max_validators),
        ("adjustment_alpha", "U64", 0),
        ("difficulty", "U64", 10_000_000),
        ("commit_reveal_period", "U64", subnet.reveal_period),
        ("commit_reveal_weights_enabled", "Bool", subnet.commit_reveal),
        ("alpha_high", "U16", 58982),
        ("alpha_low", "U16", 45875),
        ("liquid_alpha_enabled", "Bool", False),
        ("alpha_sigmoid_steepness", "I32F32", {"bits": 1000 << 32}),
        ("yuma3_enabled", "Bool", False),
        ("bonds_reset_enabled", "Bool", False),
        ("burn_increase_mult", "U64F64", {"bits": 2 << 64}),
    ]
    return [{"name": name, "value": {tag: payload}} for name, tag, payload in entries]


def _block_hash(number: int) -> str:
    return "0x" + blake2b(b"fake-block-%d" % number, digest_size=32).hexdigest()


def _mlkem768_public_key(seed: int) -> bytes:
    """A well-formed ML-KEM-768 encapsulation key: 3x256 coefficients < q packed in
    12 bits, then 32 bytes of rho (what ``MevShield.NextKey`` holds)."""
    rng = random.Random(seed)
    coefficients = [rng.randrange(3329) for _ in range(3 * 256)]
    packed = bytearray()
    for low, high in zip(coefficients[::2], coefficients[1::2]):
        packed += bytes([low & 0xFF, (low >> 8) | ((high & 0x0F) << 4), high >> 4])
    return bytes(packed) + rng.randbytes(32)
