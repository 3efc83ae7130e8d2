"""Setting weights on chain: once per tempo, inside the rate limit, with retries and a record.

Run after each step's scoring. ``WeightSetter.maybe_set`` decides whether this block is the
time (a tempo since the last successful submission, and at least ``weights_rate_limit``
blocks since the chain last saw our weights), turns the smoothed scores into a normalised
vector (``validator.scoring.to_weights`` after the coldkey dedupe), and submits it through
the Chain port with ``version_key`` (the Chain's ``SetWeights`` commits instead where the
subnet runs commit-reveal). A refusal is recorded and retried with exponential backoff in
blocks (capped at the tempo); a rate-limit refusal waits the blocks the chain names. Every
attempt, ok or not, lands in the store, and a successful one is logged with the top miners.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import bittensor as bt
from loguru import logger

from chain import Chain, ChainError, Hyperparameters, InvalidWeights, Metagraph, NoValidatorPermit, RateLimited
from validator.scoring import dedupe_coldkeys, to_weights
from store.queries import ValidatorStore


@dataclass
class WeightsOutcome:
    block: int
    ok: bool
    uids: list[int]
    weights: list[float]
    message: str = ""
    commit_reveal: bool = False


class WeightSetter:
    def __init__(self, chain: Chain, wallet: bt.Wallet, netuid: int, store: ValidatorStore, *, version_key: int,
                 retry_blocks: int = 2, top_n: int = 5) -> None:
        self.chain = chain
        self.wallet = wallet
        self.netuid = netuid
        self.store = store
        self.version_key = version_key
        self.retry_blocks = retry_blocks
        self.top_n = top_n
        self.last_set_block: int | None = None
        self.next_attempt_block = 0
        self._failures = 0

    async def restore(self) -> None:
        """Resume the tempo from the last successful submission in the store."""
        last = await self.store.last_weights()
        self.last_set_block = last.block if last is not None else None

    def vector(self, scores: Mapping[str, float], graph: Metagraph) -> tuple[list[int], list[float]]:
        """(uids, weights) for the registered hotkeys, one hotkey per coldkey keeping its score."""
        coldkeys = {neuron.hotkey: neuron.coldkey for neuron in graph.neurons}
        registered = {hotkey: score for hotkey, score in scores.items() if hotkey in coldkeys}
        return to_weights(dedupe_coldkeys(registered, coldkeys), {n.hotkey: n.uid for n in graph.neurons})

    async def maybe_set(self, block: int, scores: Mapping[str, float], graph: Metagraph,
                        hyper: Hyperparameters | None = None) -> WeightsOutcome | None:
        """Submit this block if it is time; None when it is not (or nothing can be set yet).
        ``hyper``: the subnet's hyperparameters when the caller has read them this step."""
        if block < self.next_attempt_block:
            return None
        hyper = hyper or await self.chain.hyperparameters(self.netuid)
        if self.last_set_block is not None and block - self.last_set_block < hyper.tempo:
            return None
        me = graph.by_hotkey(self.wallet.hotkey.ss58_address)
        if me is not None and graph.block - me.last_update < hyper.weights_rate_limit:
            self.next_attempt_block = me.last_update + hyper.weights_rate_limit
            return None
        uids, weights = self.vector(scores, graph)
        if not uids:
            logger.info("weights: no miner has a score yet; the weights on chain stay as they are")
            self.next_attempt_block = block + max(1, hyper.tempo // 2)
            return None
        try:
            submission = await self.chain.set_weights(self.wallet, self.netuid, uids, weights, version_key=self.version_key)
        except ChainError as error:
            outcome = WeightsOutcome(block, False, uids, weights, f"{type(error).__name__}: {error}")
            self._back_off(block, hyper.tempo, error)
            await self._record(outcome)
            return outcome
        self._failures = 0
        self.last_set_block = submission.block or block
        outcome = WeightsOutcome(self.last_set_block, True, list(submission.uids), list(submission.weights),
                                 submission.message, submission.commit_reveal)
        await self._record(outcome)
        self._log(outcome, scores, graph)
        return outcome

    def _back_off(self, block: int, tempo: int, error: ChainError) -> None:
        self._failures += 1
        if isinstance(error, RateLimited):
            wait = max(1, error.retry_in_blocks)
        elif isinstance(error, (NoValidatorPermit, InvalidWeights)):
            wait = max(1, tempo)  # retrying at once cannot help; the next tempo may (stake, metagraph change)
        else:
            wait = min(max(1, tempo), self.retry_blocks * 2 ** (self._failures - 1))
        self.next_attempt_block = block + wait
        logger.warning("weights: set_weights failed at block {} ({}); next try in {} block(s)", block, error, wait)

    async def _record(self, outcome: WeightsOutcome) -> None:
        await self.store.record_weights(block=outcome.block, ok=outcome.ok, uids=outcome.uids, weights=outcome.weights,
                                        version_key=self.version_key, commit_reveal=outcome.commit_reveal,
                                        message=outcome.message, now=time.time())

    def _log(self, outcome: WeightsOutcome, scores: Mapping[str, float], graph: Metagraph) -> None:
        top = sorted(zip(outcome.uids, outcome.weights), key=lambda pair: -pair[1])[: self.top_n]
        neurons = {uid: graph.by_uid(uid) for uid, _ in top}
        names = ", ".join(f"uid {uid} {weight:.3f} ({neuron.hotkey[:8] if (neuron := neurons[uid]) else '?'})"
                          for uid, weight in top)
        how = "committed (commit-reveal)" if outcome.commit_reveal else "set"
        logger.info("weights {} at block {} for {} miners (version {}); top: {}", how, outcome.block, len(outcome.uids),
                    self.version_key, names)
