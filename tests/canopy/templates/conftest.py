"""One real SmolLM2 engine per test session, loaded through the persistent model cache.

The cache lives where the engine keeps it by default ($CANOPY_MODEL_CACHE, else
$CANOPY_HOME/models, i.e. ./.canopy/models under ./run.sh test), resolved once at import so
tests that point CANOPY_HOME elsewhere do not move it: the first run converts the GGUF
(~40 s), later runs load in about a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from canopy.templates import model_files

CACHE_ROOT: Path = model_files.models_root()


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """The persistent model cache (resolved at import, see above)."""
    return CACHE_ROOT


@pytest.fixture(scope="session")
def engine(model_cache: Path):  # noqa: ANN201
    from canopy.templates.cpu_llm import CpuLlmEngine

    return CpuLlmEngine.load(cache_root=model_cache)
