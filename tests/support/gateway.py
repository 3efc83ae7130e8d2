"""The API tests' shared set-up and helpers: a small subnet of real miners behind the gateway.

``serve_gateway`` stands up miners, each a real axon with ``ChutesService`` and real
instance processes, on an in-memory metagraph (``StaticChain``), the validator's store (a
real SQLite file with passing GraVal rows and scores) and the API app (``api.app.build_app``)
on uvicorn in the same event loop, so tests can read its parts (``app.state``, the
``api.gateway.Gateway``) directly; ``tests/api/conftest.py``'s ``gateway`` fixture is one.
The gateway routes only registry chutes at their current revision, so every chute the miners
host is deployed into the store's registry first (``deploy_chutes``: its file bundled with
``canopy.bundle``, owner its username) and the miners report that revision.
The rest are the requests and checks the API tests share: ``chat`` (a chat body),
``new_key``, ``post``, ``log_row`` (a request's ``RequestLog`` row), ``invocations`` (the
organic ``Invocation`` rows) and ``assert_envelope`` (an error in OpenAI's envelope, with
the ``detail`` the chute routes add where they have one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Collection, Mapping, Sequence

import httpx
import pytest
import pytest_asyncio
import uvicorn
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import ApiConfig, build_app, close_gateway
from api.directory import MinerDirectory
from api.keys import KeyStore, RateRule
from api.limits import MemoryRateLimiter
from api.upstream import Upstream
from canopy.bundle import Bundle, build_bundle
from canopy.chute import load_chute
from protocol.options import AxonSettings
from node.wallets import create_devnet_wallet
from chain.base import Metagraph
from miner.chutes_service import ChutesService
from miner.hosting import ChuteEntry, HostingConfig, plan_hosting
from miner.instances import InstanceManager
from protocol.axon import Axon
from protocol.dendrite import Dendrite
from tests.support import ROOT, free_port
from tests.support.chutes import cpu_devices
from tests.support.network import NETUID, StaticChain, neuron
from store.api_tables import RequestLog
from store.queries import ValidatorStore
from store.registry import ChuteRegistry
from store.tables import DeviceVerification, Invocation

HONEST, BROKEN = "tests.api.chutes.gateway_llm:chute", "tests.api.chutes.gateway_llm:broken"
FLAKY = "tests.api.chutes.gateway_llm:flaky"
MODEL = "fake-model"
MAX_BODY = 64 * 1024
PROMPT = "name the trees of the north"


def file_ref(ref: str) -> str:
    """``path/to/file.py:attr`` (under the repository root) of module ref ``package.module:attr``."""
    module, _, attr = ref.partition(":")
    return f"{ROOT / (module.replace('.', '/') + '.py')}:{attr or 'chute'}"


_BUNDLES: dict[str, Bundle] = {}


def bundle_of(ref: str) -> Bundle:
    """The bundle of module ref ``ref``'s file (its folder), built once per test run."""
    if ref not in _BUNDLES:
        _BUNDLES[ref] = build_bundle(file_ref(ref))
    return _BUNDLES[ref]


async def deploy_chutes(engine: AsyncEngine, refs: Collection[str], *, private: Collection[str] = ()) -> dict[str, str]:
    """Deploy the chutes ``refs`` name into the registry on ``engine`` as their usernames (the
    ones in ``private`` private), described in this process; ref -> revision."""
    registry, revisions = ChuteRegistry(engine), {}
    for ref in dict.fromkeys(refs):
        info, bundle = load_chute(ref).describe(), bundle_of(ref)
        await registry.put_revision(info.username, info.name, bundle.revision, bundle.data, info.model_dump(mode="json"),
                                    public=ref not in private, max_instances=info.max_instances,
                                    shutdown_after_seconds=300)
        revisions[ref] = bundle.revision
    return revisions


async def _verify(store: ValidatorStore, hotkey: str, uuid: str) -> None:
    async with store.sessions.begin() as session:
        session.add(DeviceVerification(miner_hotkey=hotkey, uuid=uuid, ok=True, reason="ok", verified_at=time.time()))


@contextlib.asynccontextmanager
async def serve_gateway(root: Path, chutes: Sequence[Sequence[str]], *, verified: dict[int, str],
                        scores: Sequence[float], services: Sequence[type[ChutesService]] | None = None,
                        private: Collection[str] = (), revisions: Mapping[tuple[int, str], str] | None = None,
                        api: Mapping[str, Any] | None = None) -> AsyncIterator[SimpleNamespace]:
    """Miner i (uid i + 1, incentive 0.1 (i + 1)) hosts ``chutes[i]`` behind ``services[i]``
    (default ``ChutesService``), has a passing GraVal row for device ``verified[i]`` if any, and
    the validator score ``scores[i]``; the gateway serves them on uvicorn until the block ends.
    Every hosted chute is deployed (public, but those in ``private``) and reported at its
    revision, but where ``revisions[(i, ref)]`` gives miner i another; ``api`` overrides
    ``ApiConfig`` fields."""
    services = services or [ChutesService] * len(chutes)
    validator = create_devnet_wallet("gvalidator", "default", root)
    wallets = [create_devnet_wallet(f"gminer{i}", "default", root) for i in range(len(chutes))]
    ports = [free_port() for _ in wallets]
    graph = Metagraph(netuid=NETUID, block=10, neurons=(
        neuron(0, validator, stake=1000.0, permit=True),
        *(dataclasses.replace(neuron(i + 1, wallet, stake=0.0, permit=False, port=port), incentive=0.1 * (i + 1))
          for i, (wallet, port) in enumerate(zip(wallets, ports)))))
    chain = StaticChain(graph)
    devices = cpu_devices(1, salt="gateway")

    async def describe(ref: str):
        return load_chute(ref).describe()

    store = await ValidatorStore.open(f"sqlite+aiosqlite:///{root / 'validator.sqlite'}")
    deployed = await deploy_chutes(store.engine, [ref for refs in chutes for ref in refs], private=private)
    managers, axons = [], []
    for index, (wallet, port, refs, service_class) in enumerate(zip(wallets, ports, chutes, services)):
        plan = await plan_hosting(HostingConfig(chutes=[ChuteEntry(ref=ref) for ref in refs]), devices, describe=describe)
        for hosted in plan.hosted:  # the revision its instances run and Inventory reports
            hosted.revision = (revisions or {}).get((index, hosted.entry.ref), deployed[hosted.entry.ref])
        low = min(free_port(), 65000)
        manager = InstanceManager(plan.instance_specs(), port_range=(low, low + 40), log_dir=root / "logs", cwd=ROOT,
                                  backoff_base_s=30.0, backoff_cap_s=60.0, grace_s=1.0, start_timeout_s=60)
        service = service_class(manager, plan.hosted_chutes(), devices=devices, invoke_timeout_s=30)
        axon = Axon(wallet, chain, NETUID, AxonSettings(ip="127.0.0.1", port=port))
        service.attach(axon)
        managers.append(manager)
        axons.append(axon)

    hotkeys = [wallet.hotkey.ss58_address for wallet in wallets]
    for index, uuid in verified.items():
        await _verify(store, hotkeys[index], uuid)
    by_hotkey = dict(zip(hotkeys, scores))
    await store.save_scores(1, 10, by_hotkey, by_hotkey, {hotkey: i + 1 for i, hotkey in enumerate(hotkeys)},
                            time.time())
    keys = KeyStore(store.engine, cache_s=5.0)
    await keys.create_tables()
    dendrite = Dendrite(validator)
    directory = MinerDirectory(chain, NETUID, dendrite, store)
    upstream = Upstream(dendrite, directory, store, timeout_s=20.0)
    config = ApiConfig(**{"global_rate_limits": (RateRule(10_000, 60),), "request_timeout_s": 20.0,
                          "max_body_bytes": MAX_BODY, **(api or {})})
    app = build_app(keys=keys, limiter=MemoryRateLimiter(), directory=directory, upstream=upstream, store=store,
                    config=config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    server.install_signal_handlers = lambda: None
    serving = None
    try:
        await asyncio.gather(*(manager.start() for manager in managers), *(axon.start() for axon in axons))
        await directory.refresh()
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", app=app, keys=keys, store=store, directory=directory,
                              hotkeys=hotkeys, upstream=upstream, chain=chain, registry=app.state.registry,
                              revisions=deployed)
    finally:
        server.should_exit = True
        if serving is not None:
            await serving
        await close_gateway(app)
        await dendrite.close()
        await asyncio.gather(*(axon.stop() for axon in axons), return_exceptions=True)
        await asyncio.gather(*(manager.stop() for manager in managers), return_exceptions=True)
        await store.close()


def chat(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "seed": 3, **extra}


async def new_key(gateway, name: str, **fields) -> str:
    return (await gateway.keys.create(name, **fields))[1]


async def post(gateway, key: str | None, body, *, path="/v1/chat/completions", headers=None, **kwargs):
    sent = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        if isinstance(body, (bytes, str)):
            return await client.post(path, content=body, headers={**sent, "content-type": "application/json",
                                                                    **(headers or {})}, **kwargs)
        return await client.post(path, json=body, headers={**sent, **(headers or {})}, **kwargs)


async def log_row(gateway, request_id: str) -> RequestLog:
    await gateway.app.state.request_log.drain()
    async with gateway.store.sessions() as session:
        return (await session.scalars(select(RequestLog).where(RequestLog.id == request_id))).one()


async def invocations(gateway) -> list[Invocation]:
    await gateway.upstream.drain()
    async with gateway.store.sessions() as session:
        return list((await session.scalars(select(Invocation).order_by(Invocation.id))).all())


def assert_envelope(response: httpx.Response, status: int, *, param=None, type_=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) - {"detail"} == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if type_:
        assert error["type"] == type_
    assert response.headers["x-request-id"].startswith("req_")
    return error


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SimpleNamespace]:
    """A module-scoped subnet of three real miners behind the gateway: uids 1 and 2 host
    ``tests.api.chutes.gateway_llm:chute`` (model ``fake-model``), verified, scores 0.5 and
    0.1; uid 3 hosts ``gateway_llm:broken`` (fails before its first byte) and
    ``gateway_llm:flaky`` (model ``flaky-model``, fails mid-stream), unverified."""
    async with serve_gateway(tmp_path_factory.mktemp("gateway"), [[HONEST], [HONEST], [BROKEN, FLAKY]],
                             verified={0: "dev-a", 1: "dev-b"}, scores=[0.5, 0.1, 0.9]) as running:
        yield running
