"""The API's view of the miners: who serves which chute, at which revision, how verified, how loaded.

Seam: the gateway's ``Directory`` (``api.gateway``): ``models`` and ``candidates`` for the
LLM routes, ``chute``/``chute_candidates``/``instances``/``wait_for_capacity`` for the chute
routes (``api.chute_routes``, ``api.public_routes``), ``acquire``/``release`` around every
miner call, a ``refresh`` loop (``start``/``stop``). It reads through the same seams the
validator uses: the ``Chain`` port (metagraph: uids, axons, incentive), an ``Inventory``
fan-out over the dendrite signed with the validator's hotkey (hosted chutes, their
revisions, ready instances, concurrency), the validator's store (``load_scores``,
``latest_verifications``) and the chute registry on its engine (``store.registry``).

Only the registry's chutes are routed, and only at their current revision: a miner's hosted
chute is a ``Route`` when its ``revision`` is the registry's current one for its id (a
miner still running an older revision, or code the registry never saw, gets no traffic),
with one exception, a rollout: a redeployed chute's calls go to hosts of the revision it
replaced while no host of the new one is ready (``ROLLOVER_GRACE_S`` at most), so a
redeploy drops no call and waits for no cold start. A miner whose answer to one of the
validator's probes of a non-LLM chute disagreed with the chute's other hosts (``flagged``:
a deterministic cord answered otherwise, so other code under the chute's id and revision)
gets none of that chute's calls for ``FLAG_BAN_S``.
Private chutes are not offered by model name (``models``/``candidates``): their owner calls
them at ``/chutes/OWNER/NAME/...``. While a call waits for a chute nobody hosts yet
(``wait_for_capacity``) the view is refreshed every ``hurry_s`` instead of ``interval_s``,
one refresh at a time however many wait.

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
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from loguru import logger

from chain.base import Chain, Metagraph, Neuron
from protocol.chutes import HostedChute
from protocol.graval.synapses import Inventory
from store.registry import ChuteRecord, ChuteRegistry

if TYPE_CHECKING:
    from api.gateway import Store

CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"
#: How long a redeployed chute's previous revision may take calls while the new one starts.
ROLLOVER_GRACE_S = 600.0
#: How long a host whose answer to a deterministic probe differed from the others gets no calls of that chute.
FLAG_BAN_S = 3600.0


@dataclass(frozen=True)
class Route:
    """One miner's chute (at the registry's current revision): where to send the call and how it ranks."""

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


def host_label(owner: str, name: str) -> str:
    """The first DNS label of a chute's own host (``OWNER-NAME``, lower case)."""
    return f"{owner}-{name}".lower()


class MinerDirectory:
    def __init__(self, chain: Chain, netuid: int, dendrite: Any, store: Store, *, interval_s: float = 5.0,
                 inventory_timeout_s: float = 5.0, hurry_s: float = 0.5) -> None:
        self.chain, self.netuid, self.dendrite, self.store = chain, netuid, dendrite, store
        self.interval_s, self.inventory_timeout_s, self.hurry_s = interval_s, inventory_timeout_s, hurry_s
        self.registry = ChuteRegistry(store.engine)
        self.graph: Metagraph | None = None
        self.routes: list[Route] = []
        self.chutes: dict[str, ChuteRecord] = {}  # the registry's, by chute id
        self._by_ref: dict[tuple[str, str], ChuteRecord] = {}
        self._by_host: dict[str, ChuteRecord] = {}
        self.in_flight: dict[tuple[str, str], int] = {}
        self.refreshed_at = 0.0
        self._task: asyncio.Task | None = None
        self._refreshing: asyncio.Task | None = None
        self._attempted_at = 0.0  # when the last refresh started (loop time)
        # A redeployed chute's previous revision: (revision, since when, loop time). Its hosts
        # take the chute's calls while no host of the new revision is ready (ROLLOVER_GRACE_S).
        self._previous: dict[str, tuple[str, float]] = {}
        self.fallback: list[Route] = []

    # --- refresh -------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the metagraph and the registry, ask every serving miner what it hosts, reload
        scores and verifications; keep the hosted chutes at the registry's current revision."""
        graph = await self.chain.metagraph(self.netuid)
        miners = graph.serving_miners()
        results = await self.dendrite.query(miners, Inventory(), timeout=self.inventory_timeout_s)
        records = await self.registry.list_all()
        scores, _step = await self.store.load_scores()
        verified: dict[str, int] = {}
        for row in (await self.store.latest_verifications()).values():
            if row.ok:
                verified[row.miner_hotkey] = verified.get(row.miner_hotkey, 0) + 1
        current = {record.chute_id: record.revision for record in records}
        now = asyncio.get_running_loop().time()
        for record in records:
            self._note_revision(record, now)
        flagged = await self.store.flagged_since(time.time() - FLAG_BAN_S)
        routes, fallback = [], []
        for neuron, result in zip(miners, results):
            if not result.ok:
                continue
            for chute in result.response.chutes:
                if not chute.model and (neuron.hotkey, chute.chute_id) in flagged:
                    continue  # answered a deterministic probe unlike the chute's other hosts: other code
                route = Route(neuron, chute, verified.get(neuron.hotkey, 0) > 0, float(scores.get(neuron.hotkey, 0.0)))
                if chute.revision and current.get(chute.chute_id) == chute.revision:
                    routes.append(route)
                elif chute.revision and self._previous.get(chute.chute_id, ("", 0.0))[0] == chute.revision:
                    fallback.append(route)
        self.graph, self.routes, self.fallback = graph, routes, fallback
        self._index(records)
        self.refreshed_at = now

    def _note_revision(self, record: ChuteRecord, now: float) -> None:
        """Remember the revision ``record`` replaces (for ``ROLLOVER_GRACE_S``)."""
        known = self.chutes.get(record.chute_id)
        if known is not None and known.revision != record.revision:
            self._previous[record.chute_id] = (known.revision, now)
        for chute_id, (_, since) in list(self._previous.items()):
            if now - since > ROLLOVER_GRACE_S:
                del self._previous[chute_id]

    def _index(self, records: list[ChuteRecord]) -> None:
        self.chutes = {record.chute_id: record for record in records}
        self._by_ref = {(record.owner, record.name): record for record in records}
        self._by_host = {}
        for record in sorted(records, key=lambda r: (r.owner, r.name)):  # a clash: the first by owner, name
            self._by_host.setdefault(host_label(record.owner, record.name), record)

    async def refresh_now(self) -> None:
        """One refresh shared by everyone who asks while it runs (no stampede); a failed one is logged."""
        if self._refreshing is None or self._refreshing.done():
            self._attempted_at = asyncio.get_running_loop().time()
            self._refreshing = asyncio.create_task(self._refresh_logged(), name="miner-directory-refresh")
        await asyncio.shield(self._refreshing)

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # keep serving the last view
            logger.warning("miner directory refresh failed: {}: {}", type(error).__name__, error)

    async def _loop(self) -> None:
        while True:
            await self.refresh_now()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="miner-directory")

    async def stop(self) -> None:
        for task in (self._task, self._refreshing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._refreshing = None

    # --- the registry's chutes -------------------------------------------------------------

    def chute(self, owner: str, name: str) -> ChuteRecord | None:
        """Registry chute ``owner/name`` as of the last refresh (or ``registered`` since)."""
        return self._by_ref.get((owner, name))

    def chute_by_id(self, chute_id: str) -> ChuteRecord | None:
        return self.chutes.get(chute_id)

    def chute_by_host(self, label: str) -> ChuteRecord | None:
        """The chute served at host label ``OWNER-NAME`` (case-insensitive)."""
        return self._by_host.get(label.lower())

    def registered(self, record: ChuteRecord) -> None:
        """Take a deploy made here at once: ``record`` is current; the routes of the revision it
        replaces serve only until a host of the new one is ready."""
        self._note_revision(record, asyncio.get_running_loop().time())
        previous = self._previous.get(record.chute_id, ("", 0.0))[0]
        self.fallback = [r for r in self.fallback if r.chute.chute_id != record.chute_id] + [
            r for r in self.routes if r.chute.chute_id == record.chute_id and r.chute.revision == previous]
        self.chutes[record.chute_id] = record
        self._by_ref[(record.owner, record.name)] = record
        self._by_host.setdefault(host_label(record.owner, record.name), record)
        self.routes = [r for r in self.routes if r.chute.chute_id != record.chute_id
                       or r.chute.revision == record.revision]

    def unregistered(self, chute_id: str) -> None:
        """Take a delete made here at once: the chute and its routes go."""
        record = self.chutes.pop(chute_id, None)
        if record is not None:
            self._by_ref.pop((record.owner, record.name), None)
            if self._by_host.get(host_label(record.owner, record.name)) is record:
                self._by_host.pop(host_label(record.owner, record.name))
        self.routes = [r for r in self.routes if r.chute.chute_id != chute_id]
        self.fallback = [r for r in self.fallback if r.chute.chute_id != chute_id]
        self._previous.pop(chute_id, None)

    # --- queries -------------------------------------------------------------------------

    def _public_llm(self, route: Route) -> bool:
        record = self.chutes.get(route.chute.chute_id)
        return bool(route.chute.model) and record is not None and record.public

    def models(self, allowed: Callable[[str], bool] | None = None) -> list[str]:
        """The LLM models of public chutes served by verified miners with a ready instance
        (``allowed(model)`` filters)."""
        names = {r.chute.model for r in self.routes if r.verified and r.chute.ready_instances > 0 and self._public_llm(r)}
        return sorted(name for name in names if allowed is None or allowed(name))

    def known_model(self, model: str) -> bool:
        return bool(model) and any(r.chute.model == model and self._public_llm(r) for r in self.routes)

    def candidates(self, model: str, strategy: str = "default", path: str = CHAT_PATH) -> list[Route]:
        """The miners to call for ``model`` (public LLM chutes serving ``path``), by ``strategy``."""
        hosts = [r for r in self.routes if model and r.chute.model == model and r.serves(path) and self._public_llm(r)]
        return self._pick(hosts, strategy)

    def chute_candidates(self, chute_id: str, strategy: str = "default") -> list[Route]:
        """The miners to call for chute ``chute_id`` (at the registry's current revision; during a
        rollout, until a host of it is ready, at the revision it replaces), by ``strategy``:
        ``default`` is the least-loaded verified hosts with a ready instance and free capacity."""
        hosts = [r for r in self.routes if r.chute.chute_id == chute_id]
        if not any(r.chute.ready_instances > 0 for r in hosts):  # a rollout: the previous revision serves meanwhile
            hosts = [r for r in self.fallback if r.chute.chute_id == chute_id]
        return self._pick(hosts, strategy)

    def instances(self, chute_id: str) -> int:
        """Ready instances of ``chute_id`` at its current revision, network-wide (as of the last refresh)."""
        return sum(r.chute.ready_instances for r in self.routes if r.chute.chute_id == chute_id)

    async def wait_for_capacity(self, chute_id: str, timeout_s: float, strategy: str = "default") -> list[Route]:
        """``chute_candidates`` once there are some, refreshing every ``hurry_s`` meanwhile;
        [] when ``timeout_s`` passed without any."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            routes = self.chute_candidates(chute_id, strategy)
            left = deadline - loop.time()
            if routes or left <= 0:
                return routes
            due = self._attempted_at + self.hurry_s - loop.time()  # at most one refresh per hurry_s
            if due > 0:
                await asyncio.sleep(min(due, left))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.refresh_now(), left)  # shared: one refresh for every waiter

    def _pick(self, hosts: list[Route], strategy: str) -> list[Route]:
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
