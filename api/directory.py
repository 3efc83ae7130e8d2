"""The API's view of the miners: who serves which model, how verified, how loaded.

Seam: the gateway's ``Directory`` (``api.gateway``): ``models`` and ``candidates`` for the
routes, ``acquire``/``release`` around every miner call, a ``refresh`` loop (``start``/
``stop``). It reads through the same seams the validator uses: the ``Chain`` port
(metagraph: uids, axons, incentive), an ``Inventory`` fan-out over the dendrite signed
with the validator's hotkey (hosted chutes, ready instances, concurrency), and the
validator's store (``load_scores``, ``latest_verifications``).

Strategies (``api.keys.parse_strategy``):

- ``default``: verified miners (at least one device whose newest GraVal result passed)
  hosting the model with a ready instance, least connections first (the API's own
  in-flight count per miner and chute), ties by the validator's score; a miner whose
  in-flight count reached ready_instances x concurrency is skipped;
- ``top_n:N``: the N hosts of the model with the highest metagraph incentive;
- ``uids:1,2``: those uids, in that order, when they host the model.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from loguru import logger

from chain.base import Chain, Metagraph, Neuron
from protocol.chutes import HostedChute
from protocol.graval.synapses import Inventory

if TYPE_CHECKING:
    from api.gateway import Store

CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"


@dataclass(frozen=True)
class Route:
    """One miner's chute that can serve a model: where to send the call and how it ranks."""

    neuron: Neuron
    chute: HostedChute
    verified: bool
    score: float

    @property
    def uid(self) -> int:
        return self.neuron.uid

    @property
    def hotkey(self) -> str:
        return self.neuron.hotkey

    @property
    def slot(self) -> tuple[str, str]:
        return self.neuron.hotkey, self.chute.chute_id

    def serves(self, path: str) -> bool:
        return any(cord.path == path for cord in self.chute.cords)


class MinerDirectory:
    def __init__(self, chain: Chain, netuid: int, dendrite: Any, store: Store, *, interval_s: float = 5.0,
                 inventory_timeout_s: float = 5.0) -> None:
        self.chain, self.netuid, self.dendrite, self.store = chain, netuid, dendrite, store
        self.interval_s, self.inventory_timeout_s = interval_s, inventory_timeout_s
        self.graph: Metagraph | None = None
        self.routes: list[Route] = []
        self.in_flight: dict[tuple[str, str], int] = {}
        self.refreshed_at = 0.0
        self._task: asyncio.Task | None = None

    # --- refresh -------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the metagraph, ask every serving miner what it hosts, reload scores and verifications."""
        graph = await self.chain.metagraph(self.netuid)
        miners = graph.serving_miners()
        results = await self.dendrite.query(miners, Inventory(), timeout=self.inventory_timeout_s)
        scores, _step = await self.store.load_scores()
        verified: dict[str, int] = {}
        for row in (await self.store.latest_verifications()).values():
            if row.ok:
                verified[row.miner_hotkey] = verified.get(row.miner_hotkey, 0) + 1
        routes = []
        for neuron, result in zip(miners, results):
            if not result.ok:
                continue
            for chute in result.response.chutes:
                if chute.model:
                    routes.append(Route(neuron, chute, verified.get(neuron.hotkey, 0) > 0,
                                        float(scores.get(neuron.hotkey, 0.0))))
        self.graph, self.routes = graph, routes
        self.refreshed_at = asyncio.get_running_loop().time()

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # keep serving the last view
                logger.warning("miner directory refresh failed: {}: {}", type(error).__name__, error)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="miner-directory")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- queries -------------------------------------------------------------------------

    def models(self, allowed: Callable[[str], bool] | None = None) -> list[str]:
        """The LLM models served by verified miners with a ready instance (``allowed(model)`` filters)."""
        names = {r.chute.model for r in self.routes if r.verified and r.chute.ready_instances > 0}
        return sorted(name for name in names if allowed is None or allowed(name))

    def known_model(self, model: str) -> bool:
        return any(r.chute.model == model for r in self.routes)

    def candidates(self, model: str, strategy: str = "default", path: str = CHAT_PATH) -> list[Route]:
        hosts = [r for r in self.routes if r.chute.model == model and r.serves(path)]
        kind, _, argument = strategy.partition(":")
        if kind == "top_n":
            ready = [r for r in hosts if r.chute.ready_instances > 0]
            return sorted(ready, key=lambda r: (-r.neuron.incentive, -r.score, r.uid))[: int(argument)]
        if kind == "uids":
            order = [int(uid) for uid in argument.split(",")]
            return sorted((r for r in hosts if r.uid in order), key=lambda r: order.index(r.uid))
        ready = [r for r in hosts if r.verified and r.chute.ready_instances > 0
                 and self.in_flight.get(r.slot, 0) < r.chute.capacity]
        return sorted(ready, key=lambda r: (self.in_flight.get(r.slot, 0), -r.score, r.uid))

    def acquire(self, route: Route) -> None:
        self.in_flight[route.slot] = self.in_flight.get(route.slot, 0) + 1

    def release(self, route: Route) -> None:
        count = self.in_flight.get(route.slot, 0) - 1
        if count > 0:
            self.in_flight[route.slot] = count
        else:
            self.in_flight.pop(route.slot, None)
