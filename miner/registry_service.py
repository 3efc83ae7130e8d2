"""The miner's registry handlers on its axon: Announce (what validators want hosted) and DeliverBundle.

Attached as ``RegistryService(announcements, bundles, autoscaler).attach(axon)``; the seam
between the validators' announcer (``protocol.registry``) and the miner's autoscaler.

- ``Announce``: kept as the caller's latest announcement, weighed by its stake
  (``miner.announcements``); then the autoscaler decides once, and the reply names the
  revisions this miner's ready instances run (``running``) and the bundles it decided to
  host and holds no verified copy of (``wanted``).
- ``DeliverBundle``: kept only for the current revision of an announced chute and only when
  its sha256 is that revision (``miner.bundles.BundleStore.put``); a refusal is a receipt
  with ``stored=False`` and the reason. A stored bundle pokes the autoscaler, which starts
  the instance it was waiting for.

Without an autoscaler (``--chutes.autoscale false``) announcements are still recorded and
answered with what runs (``running``, from the manager), but no bundle is wanted or kept.
"""

from __future__ import annotations

import time
from typing import Callable

from loguru import logger

from miner.announcements import Announcements
from miner.autoscaler import Autoscaler
from miner.bundles import BundleRejected, BundleStore
from protocol.axon import Axon, Caller
from protocol.registry import Announce, AnnounceResponse, BundleReceipt, DeliverBundle


class RegistryService:
    """Announce and DeliverBundle handlers over the announcements, the bundles and the autoscaler."""

    def __init__(self, announcements: Announcements, bundles: BundleStore, autoscaler: Autoscaler | None, *,
                 running: Callable[[], dict[str, str]] | None = None) -> None:
        if autoscaler is None and running is None:
            raise ValueError("without an autoscaler, give running= (what the miner's ready instances run)")
        self.announcements = announcements
        self.bundles = bundles
        self.autoscaler = autoscaler
        self._running = running

    def attach(self, axon: Axon) -> "RegistryService":
        axon.attach(Announce, self.announce, long_running=False)
        axon.attach(DeliverBundle, self.deliver, long_running=False)
        return self

    async def announce(self, synapse: Announce, caller: Caller) -> AnnounceResponse:
        now = time.monotonic()
        self.announcements.update(caller.hotkey, caller.neuron.stake, synapse, now)
        logger.debug("announce from {} (stake {:g}): {} chute(s)", caller.hotkey, caller.neuron.stake,
                     len(synapse.chutes))
        if self.autoscaler is None:
            assert self._running is not None
            return AnnounceResponse(running=self._running(), wanted=[])
        await self.autoscaler.step()
        announced = self.announcements.merged(now)
        return AnnounceResponse(running=self.autoscaler.running_revisions(announced), wanted=list(self.autoscaler.wanted))

    async def deliver(self, synapse: DeliverBundle, caller: Caller) -> BundleReceipt:
        revision = synapse.revision
        if self.autoscaler is None:
            return self._refuse(revision, caller, "this miner does not autoscale (--chutes.autoscale false)")
        if revision not in self.announcements.revisions(time.monotonic()):
            return self._refuse(revision, caller, "it is not the current revision of any chute announced to this miner")
        if self.bundles.has(revision):
            return BundleReceipt(revision=revision, stored=True, reason="already stored")
        try:
            await self.bundles.put(revision, synapse.bundle())
        except BundleRejected as error:
            return self._refuse(revision, caller, error.reason)
        self.autoscaler.poke()
        return BundleReceipt(revision=revision, stored=True)

    @staticmethod
    def _refuse(revision: str, caller: Caller, reason: str) -> BundleReceipt:
        logger.warning("bundle {} from {} refused: {}", revision[:12], caller.hotkey, reason)
        return BundleReceipt(revision=revision, stored=False, reason=reason)
