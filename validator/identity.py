"""Device identity across the network: a uuid verified for one hotkey is refused for any other.

A device uuid is whatever the miner claims, so the validator keeps who owns each one
(``device_owners`` in the store): the first hotkey with a passing verification of a uuid owns
it (``ValidatorStore.record_device_results`` claims it in the same transaction that stores
the result, so of two rounds passing one uuid at once the first to commit wins) until that
hotkey deregisters (``ValidatorStore.release_departed``, every metagraph sync), unless the
operator pinned it; ``canopy devices`` lists, reassigns, pins and releases owners.

The validator's ``GravalVerifier`` talks through ``ClaimFilter``, which takes the uuids
another hotkey owns out of a miner's ``Inventory`` answer before the verifier sees it, so
such a claim is never challenged (no prover time, no validator CPU); the round then records
it as a ``uuid_taken`` failure of the claiming hotkey (``taken_results``), never touching
the owner's rows. The store's check stays the rule (a verifier without the filter, or an
owner that changed mid-round, still ends as ``uuid_taken``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from protocol.dendrite import Result, SynapseCaller, TargetLike, as_target
from protocol.graval.devices import DeviceSpec
from protocol.graval.synapses import Inventory, InventoryResponse
from protocol.synapse import Synapse
from validator.graval.session import DeviceResult
from store.queries import UUID_TAKEN

__all__ = ["ClaimFilter", "UUID_TAKEN", "taken_results", "refuse_taken"]


class ClaimFilter:
    """A dendrite for the verifier: every call goes through ``dendrite``; an Inventory answer
    loses the devices whose uuid another hotkey owns (``owners``: uuid -> hotkey, set by the
    loop every step), kept for ``refused``."""

    def __init__(self, dendrite: SynapseCaller) -> None:
        self.dendrite = dendrite
        self.owners: Mapping[str, str] = {}
        self._refused: dict[str, list[DeviceSpec]] = {}

    @property
    def hotkey(self) -> str:
        return self.dendrite.hotkey

    async def call(self, target: TargetLike, synapse: Synapse, timeout: float | None = None, **options: Any) -> Result:
        answer = await self.dendrite.call(target, synapse, timeout, **options)
        if not isinstance(synapse, Inventory) or not answer.ok or not isinstance(answer.response, InventoryResponse):
            return answer
        hotkey = as_target(target).hotkey
        claims = answer.response.devices
        taken = [claim for claim in claims if self.owners.get(claim.uuid, hotkey) != hotkey]
        self._refused[hotkey] = taken
        if not taken:
            return answer
        kept = [claim for claim in claims if self.owners.get(claim.uuid, hotkey) == hotkey]
        return dataclasses.replace(answer, response=answer.response.model_copy(update={"devices": kept}))

    def refused(self, hotkey: str) -> list[DeviceSpec]:
        """The claims taken out of ``hotkey``'s last Inventory answer (forgotten once read)."""
        return self._refused.pop(hotkey, [])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dendrite, name)


def taken_results(hotkey: str, claims: Sequence[DeviceSpec], owners: Mapping[str, str]) -> list[DeviceResult]:
    """A ``uuid_taken`` failure per uuid of ``claims`` (each once)."""
    results: dict[str, DeviceResult] = {}
    for claim in claims:
        owner = owners.get(claim.uuid, "")
        results.setdefault(claim.uuid, DeviceResult(
            hotkey, claim.uuid, False, UUID_TAKEN, f"{claim.uuid} is verified for another hotkey ({owner}): "
            "first verified wins", name=claim.name, memory_bytes=claim.memory_bytes))
    return list(results.values())


def refuse_taken(results: Sequence[DeviceResult], refused: Sequence[tuple[str, str, str]]) -> list[DeviceResult]:
    """``results`` as the store kept them: those it refused (``record_device_results``) as ``uuid_taken``."""
    owner_of = {(hotkey, uuid): owner for hotkey, uuid, owner in refused}
    out = []
    for result in results:
        owner = owner_of.get((result.miner_hotkey, result.uuid))
        if owner is not None and result.ok:
            result = dataclasses.replace(result, ok=False, reason=UUID_TAKEN,
                                         detail=f"{result.uuid} is verified for another hotkey ({owner}): first verified wins")
        out.append(result)
    return out
