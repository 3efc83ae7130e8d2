"""Packaging: `pip install -e .` installs the Canopy packages and the `canopy` console script.

Runtime pins live in requirements.txt (read here, so there is one list). GPU-only
packages are extras: `pip install -e .[gpu]` (CUDA GraVal backends, NVML readings) and `.[vllm]`
(the vLLM LLM chute); CI and the demo install neither.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


setup(
    name="canopy-subnet",
    version="0.1.0",
    description="A Bittensor subnet of verified GPUs serving chutes, with an OpenAI-compatible API.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.15",
    packages=find_packages(include=["canopy*", "chain*", "protocol*", "miner*", "validator*", "api*", "neurons*"]),
    package_data={"protocol.graval": ["gpus.toml"], "api.web": ["static/*"],
                  "validator.migrations": ["script.py.mako", "README"]},
    install_requires=requirements("requirements.txt"),
    extras_require={
        "gpu": ["torch>=2.4", "cupy-cuda12x>=13.0", "nvidia-ml-py==13.615.71"],
        "vllm": ["vllm>=0.6"],
        "dev": requirements("requirements-dev.txt"),
    },
    entry_points={"console_scripts": ["canopy=canopy.cli.main:main"]},
)
