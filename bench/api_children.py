"""The processes ``bench/api.py`` starts: the fast OpenAI chute, the miner child, the API child.

``serve_miner`` / ``serve_api`` are what the benchmark's children (``bench/api.py --role
miner`` / ``--role api``) run; the chute instance process loads ``fast_chute`` by reference
(``CHUTE_REF``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() not in (HERE, ROOT)]

from canopy.chute import Chute  # noqa: E402
from canopy.templates import openai_schema as oai  # noqa: E402

MODEL = "bench-fast"
CHAT_PATH = "/v1/chat/completions"
CHUTE_REF = "bench.api_children:fast_chute"
CREDITS = 10**12

# --- the fast upstream (runs in the instance process) --------------------------------------------

fast_chute = Chute(username="bench", name="fast-openai", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0},
                   concurrency=256, tagline="OpenAI chat that answers at once (benchmark upstream)")
fast_chute.model_name = MODEL
_ANSWER = " ".join(["canopy"] * 16)
_USAGE = {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24}


@fast_chute.cord(path=CHAT_PATH, public_api_path=CHAT_PATH)
async def chat(self, request: oai.ChatCompletionRequest):
    if not request.stream:
        return oai.chat_completion(MODEL, _ANSWER, "length", _USAGE)
    return _stream(int(os.environ.get("BENCH_STREAM_TOKENS", "16")))


async def _stream(tokens: int):
    fmt = oai.ChatStreamFormatter(MODEL, include_usage=True, id="chatcmpl-bench", created=1700000000)
    yield fmt.start()
    for _ in range(tokens):
        yield fmt.delta(" canopy")
    yield fmt.finish("length")
    yield oai.sse({"id": fmt.id, "object": "chat.completion.chunk", "created": fmt.created, "model": MODEL,
                   "choices": [], "usage": {**_USAGE, "completion_tokens": tokens, "total_tokens": 8 + tokens}})
    yield oai.SSE_DONE


def chat_body(stream: bool = False) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "name the trees of the north"}],
            "max_tokens": 16}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


# --- child roles ---------------------------------------------------------------------------------


def _bundle():
    """The fast chute's bundle as ``canopy deploy`` builds it: the gateway routes registry chutes
    only, at the revision both the miner and the API child compute from it."""
    from canopy.bundle import build_bundle

    return build_bundle(f"{HERE / 'api_children.py'}:fast_chute")


def _quiet() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


async def serve_miner(config: dict) -> None:
    from bench.protocol import BenchChain, free_ports, wallets
    from protocol.options import AxonSettings
    from miner.chutes_service import ChutesService
    from miner.hosting import ChuteEntry, HostingConfig, describe_chute, plan_hosting
    from miner.instances import InstanceManager
    from miner.inventory import cpu_device
    from protocol.axon import Axon

    _quiet()
    validator, miner = wallets(config["wallets"])
    devices = [cpu_device(salt="bench-api")]
    plan = await plan_hosting(HostingConfig(chutes=[ChuteEntry(ref=CHUTE_REF)]), devices,
                              describe=lambda ref: describe_chute(ref, cwd=ROOT))
    for hosted in plan.hosted:
        hosted.revision = _bundle().revision
    low = free_ports(1)[0]
    manager = InstanceManager(plan.instance_specs(), port_range=(low, min(65535, low + 50)), cwd=ROOT,
                              log_dir=Path(config["wallets"]) / "logs", start_timeout_s=120)
    axon = Axon(miner, BenchChain(validator, miner), 1, AxonSettings(ip="127.0.0.1", port=free_ports(1)[0]),
                metagraph_refresh_s=3600)
    ChutesService(manager, plan.hosted_chutes(), refused=plan.refused, devices=devices).attach(axon)
    await manager.start()
    await axon.start(publish=False)
    gc.collect()
    gc.freeze()
    [hosted] = plan.hosted
    [instance] = manager.by_chute[hosted.info.chute_id]
    print(json.dumps({"axon": axon.url, "hotkey": axon.hotkey, "chute_id": hosted.info.chute_id, "instance": instance.url,
                      "ready": instance.state.value, "error": instance.last_error,
                      "refused": {r.ref: r.reason for r in plan.refused}}), flush=True)
    cpu_at_start = time.process_time()  # the miner's own CPU while serving (its instance is another process)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    cpu_ms = (time.process_time() - cpu_at_start) * 1000.0
    await axon.stop()
    await manager.stop()
    print(json.dumps({"miner_cpu_ms": round(cpu_ms, 1)}), flush=True)


async def serve_api(config: dict) -> None:
    import uvicorn

    from api.app import ApiConfig, build_app
    from api.directory import MinerDirectory
    from api.keys import KeyStore, RateRule
    from api.limits import MemoryRateLimiter
    from api.upstream import Upstream
    from bench.protocol import NETUID, BenchChain, free_ports, wallets
    from chain.base import AxonInfo, Metagraph, Neuron
    from protocol.dendrite import Dendrite
    from store.queries import ValidatorStore
    from store.tables import DeviceVerification

    _quiet()
    if config.get("api_src"):
        loaded = sys.modules.get("api")
        assert loaded is None or str(Path(loaded.__file__).parent.parent) == config["api_src"], "api imported too early"
    validator, miner = wallets(config["wallets"])
    chain = BenchChain(validator, miner)
    host, port = config["axon"].rsplit("//", 1)[-1].rsplit(":", 1)
    chain.graph = Metagraph(NETUID, 1, (
        Neuron(0, miner.hotkey.ss58_address, miner.coldkeypub.ss58_address, 0.0, False, AxonInfo(host, int(port))),
        Neuron(1, validator.hotkey.ss58_address, validator.coldkeypub.ss58_address, 1000.0, True, None)))
    store = await ValidatorStore.open(f"sqlite+aiosqlite:///{Path(config['wallets']) / 'api.sqlite'}")
    hotkey = miner.hotkey.ss58_address
    async with store.sessions.begin() as session:  # the miner passed GraVal (the default strategy needs it)
        session.add(DeviceVerification(miner_hotkey=hotkey, uuid="bench-dev", ok=True, reason="ok",
                                       verified_at=time.time()))
    await store.save_scores(1, 1, {hotkey: 1.0}, {hotkey: 1.0}, {hotkey: 0}, time.time())
    from store.registry import ChuteRegistry

    bundle, info = _bundle(), fast_chute.describe()
    await ChuteRegistry(store.engine).put_revision(info.username, info.name, bundle.revision, bundle.data,
                                                   info.model_dump(mode="json"), public=True, max_instances=1,
                                                   shutdown_after_seconds=300)
    keys = KeyStore(store.engine, cache_s=5.0)
    await keys.create_tables()
    _, key = await keys.create("bench", credits=CREDITS)
    dendrite = Dendrite(validator)
    directory = MinerDirectory(chain, NETUID, dendrite, store, interval_s=3600)
    config_ = ApiConfig(global_rate_limits=(RateRule(10**9, 60),), request_timeout_s=30.0)
    upstream = Upstream(dendrite, directory, store, timeout_s=config_.request_timeout_s)
    app = build_app(keys=keys, limiter=MemoryRateLimiter(), directory=directory, upstream=upstream, store=store,
                    config=config_)
    await directory.refresh()
    if not directory.models():
        raise RuntimeError(f"the API sees no model: routes {directory.routes}")
    api_port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=api_port, log_level="warning",
                                           lifespan="off", access_log=False))
    server.install_signal_handlers = lambda: None
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    gc.collect()
    gc.freeze()
    profiler = None
    if config.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu_at_start = time.process_time()  # start-up (imports, tables) is not a request's cost
    print(json.dumps({"url": f"http://127.0.0.1:{api_port}", "key": key}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(config["profile"])
    server.should_exit = True
    await serving
    import api.app as gateway_app

    if hasattr(gateway_app, "close_gateway"):  # the gateway's shutdown (an older --api-ref drains by hand)
        await gateway_app.close_gateway(app)
    else:
        await app.state.request_log.drain()
        await upstream.drain()
    async with store.sessions() as session:
        from sqlalchemy import func, select

        from store.api_tables import RequestLog
        from store.tables import Invocation

        logged = (await session.execute(select(func.count()).select_from(RequestLog))).scalar_one()
        invoked = (await session.execute(select(func.count()).select_from(Invocation))).scalar_one()
    credits = (await keys.get("bench")).credits
    await dendrite.close()
    await store.close()
    cpu_ms = (time.process_time() - cpu_at_start) * 1000.0  # every thread of the API process, serving only
    print(json.dumps({"request_log_rows": logged, "invocation_rows": invoked, "credits_spent": CREDITS - credits,
                      "api_cpu_ms_per_request": round(cpu_ms / max(1, logged), 3)}), flush=True)


