"""Packaging: ``pip install .`` is the chute SDK alone; extras add the node stack.

- base (``pip install canopy``): the ``canopy`` SDK package and CLI: write, run
  (``canopy run --dev``), build and deploy a chute;
- ``node``: miners, validators and the API (``chain``, ``protocol``, ``node``, ``store``,
  ``miner``, ``validator``, ``api``, ``neurons``; console scripts ``canopy-miner``,
  ``canopy-validator``, ``canopy-api``);
- ``cpu-llm``: the CPU LLM engine (transformers, torch); ``gpu``: the CUDA GraVal backends and
  NVML readings; ``vllm``: the vLLM LLM chute; ``dev``: tests and linters.

Pins live in requirements.txt, one ``# [section]`` per extra (read here, so there is one
list); ./run.sh installs the whole file. Every package ships in the one distribution: a
node package imported without its extra fails with one line naming the extra
(``canopy.extras``).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
SECTION = re.compile(r"^#\s*\[([a-z-]+)\]")


def sections(name: str) -> dict[str, list[str]]:
    """requirements.txt's pins by ``# [section]`` header."""
    found: dict[str, list[str]] = {}
    current = None
    for line in (HERE / name).read_text().splitlines():
        header = SECTION.match(line)
        if header:
            current = found.setdefault(header.group(1), [])
        elif current is not None and line.strip() and not line.startswith(("#", "-r")):
            current.append(line.split("#", 1)[0].strip())
    return found


def requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


PINS = sections("requirements.txt")

setup(
    name="canopy",
    version="0.1.0",
    description="A Bittensor subnet of verified GPUs serving chutes, with an OpenAI-compatible API.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.15",
    packages=find_packages(include=["canopy*", "chain*", "protocol*", "node*", "store*", "miner*", "validator*",
                                    "api*", "neurons*"]),
    package_data={"protocol.graval": ["gpus.toml"], "api.web": ["static/*"],
                  "store.migrations": ["script.py.mako", "README"]},
    install_requires=PINS["sdk"],
    extras_require={
        "node": PINS["node"],
        "cpu-llm": PINS["cpu-llm"],
        "gpu": ["torch>=2.4", "cupy-cuda12x>=13.0", "nvidia-ml-py==13.615.71"],
        "vllm": ["vllm>=0.6"],
        "dev": requirements("requirements-dev.txt"),
    },
    entry_points={"console_scripts": [
        "canopy=canopy.cli.main:main",
        "canopy-miner=neurons.miner:main",
        "canopy-validator=neurons.validator:main",
        "canopy-api=neurons.api:main",
    ]},
)
