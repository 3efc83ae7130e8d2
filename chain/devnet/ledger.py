"""The devnet's state machine: an embedded chain in one SQLite file that processes share.

The synchronous core under ``chain.devnet.chain.DevnetChain`` (the async Chain adapter
the neurons use); the ``canopy devnet`` CLI also opens it directly to create subnets,
register and stake. Several processes on one machine open the same file: every write is
one ``BEGIN IMMEDIATE`` transaction in WAL mode, so writers serialise on the file lock and
readers never see half a write.

What it models: subnets with hyperparameters, hotkey registration (uid assignment,
replacement of the lowest-emission uid outside its immunity period when the subnet is
full), stake per hotkey, validator permits (top ``max_validators`` by stake, refreshed on
every stake change and at each epoch), axon records, weights with the rate limit and an
optional commit-reveal delay, block height from the clock (``block_time`` seconds per
block, fixed at genesis), and a Yuma-style epoch every ``tempo + 1`` blocks (see
``yuma.py``) whose emission is added to the stake of the hotkeys that earned it.
Epochs run lazily: the first transaction after an epoch boundary runs the epochs due.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from bittensor.wallets import is_bittensor_address

from chain.base import (
    AxonInfo,
    ChainError,
    Hyperparameters,
    InvalidWeights,
    Metagraph,
    Neuron,
    NotRegistered,
    NoValidatorPermit,
    RateLimited,
    SubnetNotFound,
    WeightsSubmission,
)
from chain.devnet import yuma

DEFAULT_BLOCK_TIME = 12.0
DEFAULT_STAKE_THRESHOLD = 100.0
#: An idle devnet does not replay every missed epoch: at most this many run on catch-up.
MAX_CATCH_UP_EPOCHS = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subnets (
    netuid INTEGER PRIMARY KEY, owner_coldkey TEXT NOT NULL, tempo INTEGER NOT NULL,
    weights_rate_limit INTEGER NOT NULL, max_allowed_uids INTEGER NOT NULL,
    max_validators INTEGER NOT NULL, immunity_period INTEGER NOT NULL,
    commit_reveal INTEGER NOT NULL, commit_reveal_period INTEGER NOT NULL,
    min_allowed_weights INTEGER NOT NULL, emission_per_block REAL NOT NULL,
    kappa REAL NOT NULL, stake_threshold REAL NOT NULL, created_at INTEGER NOT NULL, last_epoch_block INTEGER NOT NULL,
    owner_emission REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS hotkey_owners (hotkey TEXT PRIMARY KEY, coldkey TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS neurons (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, coldkey TEXT NOT NULL,
    registered_at INTEGER NOT NULL, last_update INTEGER NOT NULL,
    validator_permit INTEGER NOT NULL DEFAULT 0,
    axon_ip TEXT, axon_port INTEGER, axon_protocol INTEGER, axon_version INTEGER,
    incentive REAL NOT NULL DEFAULT 0, dividends REAL NOT NULL DEFAULT 0,
    emission REAL NOT NULL DEFAULT 0, consensus REAL NOT NULL DEFAULT 0,
    trust REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (netuid, uid), UNIQUE (netuid, hotkey));
CREATE TABLE IF NOT EXISTS stakes (
    netuid INTEGER NOT NULL, hotkey TEXT NOT NULL, tao REAL NOT NULL,
    PRIMARY KEY (netuid, hotkey));
CREATE TABLE IF NOT EXISTS weights (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, target INTEGER NOT NULL,
    weight REAL NOT NULL, set_at INTEGER NOT NULL,
    PRIMARY KEY (netuid, uid, target));
CREATE TABLE IF NOT EXISTS pending_weights (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, reveal_block INTEGER NOT NULL,
    set_at INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (netuid, uid));
"""


class DevnetLedger:
    """Synchronous access to a devnet chain file; safe to use from several processes.

    ``block_time`` is used only when the file is created (genesis); an existing chain
    keeps its own. ``clock`` is injectable so tests can move time by hand.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        block_time: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path).expanduser()
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('genesis_time', ?), ('block_time', ?)",
                (repr(clock()), repr(block_time or DEFAULT_BLOCK_TIME)),
            )
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.genesis_time = float(meta["genesis_time"])
        self.block_time = float(meta["block_time"])

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: takes the file's write lock up front (BEGIN IMMEDIATE)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @contextlib.contextmanager
    def _chain_at_head(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """A write transaction with every epoch due by the current block already run."""
        with self._transaction() as db:
            block = self.block()
            self._run_due_epochs(db, block)
            yield db, block

    @contextlib.contextmanager
    def _snapshot_at_head(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """A consistent read at the current block; takes the write lock only when an epoch is due."""
        db = self._connect()
        try:
            db.execute("BEGIN")
            block = self.block()
            if not self._epochs_due(db, block):
                yield db, block
                db.execute("COMMIT")
                return
            db.execute("ROLLBACK")
        finally:
            db.close()
        with self._chain_at_head() as (db, block):
            yield db, block

    # -- reads -----------------------------------------------------------------------

    def block(self) -> int:
        """Blocks since genesis, from the clock."""
        return max(0, int((self._clock() - self.genesis_time) // self.block_time))

    def subnets(self) -> list[int]:
        with contextlib.closing(self._connect()) as db:
            return [row[0] for row in db.execute("SELECT netuid FROM subnets ORDER BY netuid")]

    def hyperparameters(self, netuid: int) -> Hyperparameters:
        with contextlib.closing(self._connect()) as db:
            row = self._subnet_row(db, netuid)
        return Hyperparameters(
            tempo=row["tempo"],
            weights_rate_limit=row["weights_rate_limit"],
            commit_reveal_enabled=bool(row["commit_reveal"]),
            commit_reveal_period=row["commit_reveal_period"],
            max_validators=row["max_validators"],
            max_allowed_uids=row["max_allowed_uids"],
            immunity_period=row["immunity_period"],
            min_allowed_weights=row["min_allowed_weights"],
            stake_threshold=row["stake_threshold"],
        )

    def metagraph(self, netuid: int) -> Metagraph:
        with self._snapshot_at_head() as (db, block):
            self._subnet_row(db, netuid)
            rows = db.execute(
                "SELECT n.*, COALESCE(s.tao, 0) AS stake FROM neurons n LEFT JOIN stakes s "
                "ON s.netuid = n.netuid AND s.hotkey = n.hotkey WHERE n.netuid = ? ORDER BY n.uid",
                (netuid,),
            ).fetchall()
        return Metagraph(netuid=netuid, block=block, neurons=tuple(_neuron_from_row(row) for row in rows))

    def weights(self, netuid: int) -> dict[int, dict[int, float]]:
        """Revealed weights as {validator uid: {target uid: normalised weight}}."""
        with self._snapshot_at_head() as (db, _):
            rows = db.execute("SELECT uid, target, weight FROM weights WHERE netuid = ?", (netuid,)).fetchall()
        table: dict[int, dict[int, float]] = {}
        for uid, target, weight in rows:
            table.setdefault(uid, {})[target] = weight
        return table

    # -- writes ----------------------------------------------------------------------

    def create_subnet(
        self,
        netuid: int,
        owner_coldkey: str = "",
        *,
        tempo: int = 10,
        weights_rate_limit: int = 5,
        max_allowed_uids: int = 256,
        max_validators: int = 64,
        immunity_period: int = 20,
        commit_reveal: bool = False,
        commit_reveal_period: int = 1,
        min_allowed_weights: int = 0,
        emission_per_block: float = 1.0,
        kappa: float = yuma.DEFAULT_KAPPA,
        stake_threshold: float = DEFAULT_STAKE_THRESHOLD,
    ) -> None:
        """Create a subnet; refuses a netuid that exists and out-of-range settings."""
        checks = {
            "netuid": 0 <= netuid <= 65535,
            "tempo": 1 <= tempo <= 10_000,
            "weights_rate_limit": weights_rate_limit >= 0,
            "max_allowed_uids": 1 <= max_allowed_uids <= 4096,
            "max_validators": max_validators >= 1,
            "immunity_period": immunity_period >= 0,
            "commit_reveal_period": commit_reveal_period >= 1,
            "min_allowed_weights": min_allowed_weights >= 0,
            "emission_per_block": emission_per_block >= 0,
            "kappa": 0 < kappa <= 1,
            "stake_threshold": math.isfinite(stake_threshold) and stake_threshold >= 0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ChainError(f"invalid subnet settings: {', '.join(wrong)}")
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM subnets WHERE netuid = ?", (netuid,)).fetchone():
                raise ChainError(f"subnet {netuid} already exists")
            block = self.block()
            db.execute(
                "INSERT INTO subnets (netuid, owner_coldkey, tempo, weights_rate_limit, max_allowed_uids, "
                "max_validators, immunity_period, commit_reveal, commit_reveal_period, min_allowed_weights, "
                "emission_per_block, kappa, stake_threshold, created_at, last_epoch_block) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (netuid, owner_coldkey, tempo, weights_rate_limit, max_allowed_uids, max_validators,
                 immunity_period, int(commit_reveal), commit_reveal_period, min_allowed_weights,
                 emission_per_block, kappa, stake_threshold, block, block),
            )

    def register(self, netuid: int, hotkey: str, coldkey: str) -> int:
        """Give ``hotkey`` a uid on the subnet; returns the uid (the existing one if registered)."""
        _require_address(hotkey, "hotkey")
        _require_address(coldkey, "coldkey")
        with self._chain_at_head() as (db, block):
            subnet = self._subnet_row(db, netuid)
            owner = db.execute("SELECT coldkey FROM hotkey_owners WHERE hotkey = ?", (hotkey,)).fetchone()
            if owner and owner[0] != coldkey:
                raise ChainError(f"hotkey {hotkey} belongs to another coldkey ({owner[0]})")
            existing = db.execute("SELECT uid FROM neurons WHERE netuid = ? AND hotkey = ?", (netuid, hotkey)).fetchone()
            if existing:
                return int(existing[0])
            db.execute("INSERT OR IGNORE INTO hotkey_owners VALUES (?, ?)", (hotkey, coldkey))
            count: int = db.execute("SELECT COUNT(*) FROM neurons WHERE netuid = ?", (netuid,)).fetchone()[0]
            if count < subnet["max_allowed_uids"]:
                uid = count
            else:
                uid = self._uid_to_replace(db, netuid, block, subnet["immunity_period"])
                db.execute("DELETE FROM neurons WHERE netuid = ? AND uid = ?", (netuid, uid))
                db.execute("DELETE FROM weights WHERE netuid = ? AND uid = ?", (netuid, uid))
                db.execute("DELETE FROM pending_weights WHERE netuid = ? AND uid = ?", (netuid, uid))
            db.execute(
                "INSERT INTO neurons (netuid, uid, hotkey, coldkey, registered_at, last_update) VALUES (?,?,?,?,?,?)",
                (netuid, uid, hotkey, coldkey, block, block),
            )
            self._refresh_permits(db, subnet)
            return uid

    def add_stake(self, netuid: int, hotkey: str, tao: float) -> float:
        """Add stake to a registered hotkey (a devnet faucet: no balance is debited); returns the total."""
        if not math.isfinite(tao) or tao <= 0:
            raise ChainError("stake amount must be a positive number of TAO")
        return self._change_stake(netuid, hotkey, tao)

    def remove_stake(self, netuid: int, hotkey: str, tao: float) -> float:
        """Remove stake from a hotkey; refuses to go below zero. Returns the total left."""
        if not math.isfinite(tao) or tao <= 0:
            raise ChainError("unstake amount must be a positive number of TAO")
        return self._change_stake(netuid, hotkey, -tao)

    def serve_axon(self, netuid: int, hotkey: str, ip: str, port: int, *, protocol: int = 4, version: int = 0) -> None:
        """Record where the hotkey serves. Validates the address like the chain does."""
        info = AxonInfo(ip=ip, port=port, protocol=protocol, version=version)
        if not 1 <= port <= 65535 or not info.is_serving:
            raise ChainError(f"invalid axon address {ip}:{port}")
        with self._chain_at_head() as (db, _):
            uid = self._uid_of(db, netuid, hotkey)
            db.execute(
                "UPDATE neurons SET axon_ip = ?, axon_port = ?, axon_protocol = ?, axon_version = ? "
                "WHERE netuid = ? AND uid = ?",
                (ip, port, protocol, version, netuid, uid),
            )

    def set_weights(
        self,
        netuid: int,
        hotkey: str,
        uids: Sequence[int],
        weights: Sequence[float],
        *,
        version_key: int = 0,
    ) -> WeightsSubmission:
        """Set (or, on a commit-reveal subnet, commit) the hotkey's weights.

        Refusals: NotRegistered, NoValidatorPermit (unless only self-weight), InvalidWeights,
        RateLimited (fewer than ``weights_rate_limit`` blocks since the last update).
        """
        with self._chain_at_head() as (db, block):
            subnet = self._subnet_row(db, netuid)
            uid = self._uid_of(db, netuid, hotkey)
            neuron = db.execute(
                "SELECT validator_permit, last_update FROM neurons WHERE netuid = ? AND uid = ?", (netuid, uid)
            ).fetchone()
            known_uids = {row[0] for row in db.execute("SELECT uid FROM neurons WHERE netuid = ?", (netuid,))}
            normalised = _validated_weights(uids, weights, known_uids, subnet["min_allowed_weights"])
            if not neuron["validator_permit"] and set(normalised) != {uid}:
                raise NoValidatorPermit(f"uid {uid} has no validator permit: stake more, or set only its own weight")
            since = block - neuron["last_update"]
            if since < subnet["weights_rate_limit"]:
                wait = subnet["weights_rate_limit"] - since
                raise RateLimited(f"weights set {since} blocks ago; the rate limit is {subnet['weights_rate_limit']} blocks", wait)
            commit_reveal = bool(subnet["commit_reveal"])
            if commit_reveal:
                reveal_block = block + subnet["commit_reveal_period"] * (subnet["tempo"] + 1)
                db.execute(
                    "INSERT OR REPLACE INTO pending_weights VALUES (?,?,?,?,?)",
                    (netuid, uid, reveal_block, block, json.dumps(sorted(normalised.items()))),
                )
                message = f"committed; revealed at block {reveal_block}"
            else:
                self._store_weights(db, netuid, uid, normalised, block)
                message = "set"
            db.execute("UPDATE neurons SET last_update = ? WHERE netuid = ? AND uid = ?", (block, netuid, uid))
        ordered = sorted(normalised.items())
        return WeightsSubmission(
            block=block,
            uids=tuple(u for u, _ in ordered),
            weights=tuple(w for _, w in ordered),
            commit_reveal=commit_reveal,
            message=message,
        )

    # -- internals -------------------------------------------------------------------

    @staticmethod
    def _subnet_row(db: sqlite3.Connection, netuid: int) -> sqlite3.Row:
        row: sqlite3.Row | None = db.execute("SELECT * FROM subnets WHERE netuid = ?", (netuid,)).fetchone()
        if row is None:
            raise SubnetNotFound(f"subnet {netuid} does not exist on the devnet: create it with `canopy devnet init --netuid {netuid}`")
        return row

    @staticmethod
    def _uid_of(db: sqlite3.Connection, netuid: int, hotkey: str) -> int:
        row = db.execute("SELECT uid FROM neurons WHERE netuid = ? AND hotkey = ?", (netuid, hotkey)).fetchone()
        if row is None:
            raise NotRegistered(f"hotkey {hotkey} is not registered on netuid {netuid}: run `canopy devnet register --netuid {netuid}`")
        return int(row[0])

    def _change_stake(self, netuid: int, hotkey: str, delta: float) -> float:
        with self._chain_at_head() as (db, _):
            subnet = self._subnet_row(db, netuid)
            self._uid_of(db, netuid, hotkey)
            row = db.execute("SELECT tao FROM stakes WHERE netuid = ? AND hotkey = ?", (netuid, hotkey)).fetchone()
            total = (row[0] if row else 0.0) + delta
            if total < -1e-9:
                raise ChainError(f"hotkey {hotkey} holds only {row[0] if row else 0.0:.4f} TAO on netuid {netuid}")
            db.execute("INSERT OR REPLACE INTO stakes VALUES (?, ?, ?)", (netuid, hotkey, max(total, 0.0)))
            self._refresh_permits(db, subnet)
            return max(total, 0.0)

    @staticmethod
    def _uid_to_replace(db: sqlite3.Connection, netuid: int, block: int, immunity_period: int) -> int:
        rows = db.execute(
            "SELECT uid, emission, registered_at FROM neurons WHERE netuid = ? ORDER BY emission, registered_at, uid",
            (netuid,),
        ).fetchall()
        for uid, _, registered_at in rows:
            if block - registered_at >= immunity_period:
                return int(uid)
        return int(rows[0][0])

    @staticmethod
    def _refresh_permits(db: sqlite3.Connection, subnet: sqlite3.Row) -> None:
        netuid = subnet["netuid"]
        rows = db.execute(
            "SELECT n.uid, COALESCE(s.tao, 0) FROM neurons n LEFT JOIN stakes s ON s.netuid = n.netuid "
            "AND s.hotkey = n.hotkey WHERE n.netuid = ? ORDER BY n.uid",
            (netuid,),
        ).fetchall()
        if not rows:
            return
        uids = [uid for uid, _ in rows]
        stake = np.zeros(max(uids) + 1)
        for uid, tao in rows:
            stake[uid] = tao
        permits = yuma.top_k_permits(stake, subnet["max_validators"], subnet["stake_threshold"])
        db.executemany(
            "UPDATE neurons SET validator_permit = ? WHERE netuid = ? AND uid = ?",
            [(int(permits[uid]), netuid, uid) for uid in uids],
        )

    @staticmethod
    def _store_weights(db: sqlite3.Connection, netuid: int, uid: int, weights: dict[int, float], set_at: int) -> None:
        db.execute("DELETE FROM weights WHERE netuid = ? AND uid = ?", (netuid, uid))
        db.executemany(
            "INSERT INTO weights VALUES (?,?,?,?,?)",
            [(netuid, uid, target, weight, set_at) for target, weight in weights.items()],
        )

    @staticmethod
    def _epochs_due(db: sqlite3.Connection, block: int) -> bool:
        return any(
            epoch_blocks(netuid, tempo, after=last, upto=block)
            for netuid, tempo, last in db.execute("SELECT netuid, tempo, last_epoch_block FROM subnets")
        )

    def _run_due_epochs(self, db: sqlite3.Connection, block: int) -> None:
        for netuid, tempo, last in db.execute("SELECT netuid, tempo, last_epoch_block FROM subnets").fetchall():
            due = epoch_blocks(netuid, tempo, after=last, upto=block)
            for epoch_block in due[-MAX_CATCH_UP_EPOCHS:]:
                self._epoch(db, netuid, epoch_block)
            if due:
                db.execute("UPDATE subnets SET last_epoch_block = ? WHERE netuid = ?", (due[-1], netuid))

    def _epoch(self, db: sqlite3.Connection, netuid: int, block: int) -> None:
        subnet = self._subnet_row(db, netuid)
        for uid, set_at, payload in db.execute(
            "SELECT uid, set_at, payload FROM pending_weights WHERE netuid = ? AND reveal_block <= ?", (netuid, block)
        ).fetchall():
            self._store_weights(db, netuid, uid, {int(t): float(w) for t, w in json.loads(payload)}, set_at)
        db.execute("DELETE FROM pending_weights WHERE netuid = ? AND reveal_block <= ?", (netuid, block))
        self._refresh_permits(db, subnet)

        rows = db.execute(
            "SELECT n.uid, n.hotkey, n.registered_at, n.validator_permit, COALESCE(s.tao, 0) FROM neurons n "
            "LEFT JOIN stakes s ON s.netuid = n.netuid AND s.hotkey = n.hotkey WHERE n.netuid = ? ORDER BY n.uid",
            (netuid,),
        ).fetchall()
        if not rows:
            return
        size = max(row[0] for row in rows) + 1
        stake, permit = np.zeros(size), np.zeros(size, dtype=bool)
        registered_at, weights_set_at = np.zeros(size), np.full(size, -1.0)
        matrix = np.zeros((size, size))
        hotkeys = {}
        for uid, hotkey, reg, has_permit, tao in rows:
            stake[uid], permit[uid], registered_at[uid], hotkeys[uid] = tao, bool(has_permit), reg, hotkey
        for uid, target, weight, set_at in db.execute(
            "SELECT uid, target, weight, set_at FROM weights WHERE netuid = ?", (netuid,)
        ):
            if uid < size and target < size:
                matrix[uid, target] = weight
                weights_set_at[uid] = set_at
        result = yuma.run_epoch(
            matrix, stake, permit,
            weights_set_at=weights_set_at, registered_at=registered_at,
            emission_per_epoch=subnet["emission_per_block"] * (subnet["tempo"] + 1),
            kappa=subnet["kappa"],
        )
        db.executemany(
            "UPDATE neurons SET incentive = ?, dividends = ?, emission = ?, consensus = ?, trust = ? "
            "WHERE netuid = ? AND uid = ?",
            [(float(result.incentive[u]), float(result.dividends[u]), float(result.emission[u]),
              float(result.consensus[u]), float(result.trust[u]), netuid, u) for u in hotkeys],
        )
        db.executemany(
            "INSERT INTO stakes VALUES (?, ?, ?) ON CONFLICT (netuid, hotkey) DO UPDATE SET tao = tao + excluded.tao",
            [(netuid, hotkeys[u], float(result.emission[u])) for u in hotkeys if result.emission[u] > 0],
        )
        db.execute("UPDATE subnets SET owner_emission = owner_emission + ? WHERE netuid = ?", (result.owner_emission, netuid))


def epoch_blocks(netuid: int, tempo: int, *, after: int, upto: int) -> list[int]:
    """Blocks in (after, upto] at which subnet ``netuid`` runs its epoch, as subtensor schedules them."""
    period = tempo + 1
    remainder = (after + netuid + 1) % period
    first = after + (period - remainder if remainder else period)
    return list(range(first, upto + 1, period))


def _require_address(value: str, what: str) -> None:
    if not isinstance(value, str) or not is_bittensor_address(value):
        raise ChainError(f"{what} {value!r} is not a valid ss58 address")


def _validated_weights(
    uids: Sequence[int], weights: Sequence[float], known_uids: set[int], min_allowed: int
) -> dict[int, float]:
    """Check a weights vector like the chain does and normalise it to sum 1."""
    try:
        uids = [int(u) for u in uids]
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise InvalidWeights("uids must be integers and weights numbers") from None
    if len(uids) != len(weights):
        raise InvalidWeights(f"{len(uids)} uids but {len(weights)} weights")
    if not uids:
        raise InvalidWeights("empty weights vector")
    if len(set(uids)) != len(uids):
        raise InvalidWeights("duplicate uids")
    unknown = sorted(set(uids) - known_uids)
    if unknown:
        raise InvalidWeights(f"unknown uids {unknown}")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise InvalidWeights("weights must be finite and non-negative")
    total = float(sum(weights))
    if total <= 0:
        raise InvalidWeights("weights sum to zero")
    nonzero = sum(1 for w in weights if w > 0)
    if nonzero < min_allowed:
        raise InvalidWeights(f"at least {min_allowed} non-zero weights are required, got {nonzero}")
    return {u: w / total for u, w in zip(uids, weights) if w > 0}


def _neuron_from_row(row: sqlite3.Row) -> Neuron:
    axon = None
    if row["axon_ip"] is not None:
        axon = AxonInfo(ip=row["axon_ip"], port=row["axon_port"], protocol=row["axon_protocol"], version=row["axon_version"])
    return Neuron(
        uid=row["uid"], hotkey=row["hotkey"], coldkey=row["coldkey"], stake=float(row["stake"]),
        validator_permit=bool(row["validator_permit"]), axon=axon, incentive=row["incentive"],
        dividends=row["dividends"], emission=row["emission"], consensus=row["consensus"], trust=row["trust"],
        last_update=row["last_update"], registered_at=row["registered_at"],
    )
