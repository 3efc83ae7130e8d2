"""The Dockerfiles (docker/): what they copy and run exists, and the ``docker run`` lines in
their headers are flags the neurons accept. (No image is built here: CI has no Docker daemon
and no registry for the CUDA base image.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from node.config import load_settings
from tests.support import ROOT

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continued lines
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _run_lines(path: Path) -> list[list[str]]:
    """The ``docker run`` examples in the header comment, as argument lists after the image name."""
    comment = "\n".join(line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#"))
    comment = re.sub(r"\\\n\s*", " ", comment)
    runs = []
    for line in comment.splitlines():
        if line.startswith("docker run"):
            words = shlex.split(line.replace("<NETUID>", "7").replace("<PUBLIC_IP>", "203.0.113.5"))
            image = next(i for i, word in enumerate(words) if word in ("canopy-miner", "canopy-node"))
            runs.append(words[image + 1:])
    return runs


def console_scripts() -> set[str]:
    """The console scripts setup.py installs (``canopy``, ``canopy-miner``, ...)."""
    return set(re.findall(r'"(canopy[a-z-]*)=', (ROOT / "setup.py").read_text()))


def test_the_miner_image_has_cuda_and_the_gpu_packages_and_the_node_image_none():
    assert [path.name for path in DOCKERFILES] == ["miner.Dockerfile", "node.Dockerfile"]
    miner, node = (ROOT / "docker" / "miner.Dockerfile").read_text(), (ROOT / "docker" / "node.Dockerfile").read_text()
    assert "nvidia/cuda" in _instructions(ROOT / "docker" / "miner.Dockerfile")[0][1]
    assert "vllm" in miner and "cupy-cuda12x" in miner and "nvidia-ml-py" in miner
    assert "python:3.11" in _instructions(ROOT / "docker" / "node.Dockerfile")[0][1]
    assert "download.pytorch.org/whl/cpu" in node and "vllm" not in node and "cupy" not in node


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: path.name)
def test_copied_files_and_entry_points_exist(path):
    instructions = _instructions(path)
    for kind, argument in instructions:
        if kind == "COPY":
            for source in argument.split()[:-1]:
                assert source == "." or (ROOT / source).exists(), f"{path.name} copies a missing {source}"
    scripts = console_scripts()
    for kind, argument in instructions:
        if kind in ("ENTRYPOINT", "CMD"):
            for word in json.loads(argument):
                if word.startswith("canopy"):
                    assert word in scripts, f"{path.name} runs {word}, which setup.py does not install"
    extras = re.findall(r'"([A-Za-z0-9_.-]+[<>=]=?[0-9.]+)"', path.read_text())  # pip install "pkg>=x" ...
    setup = (ROOT / "setup.py").read_text()
    for requirement in extras:  # the same specs as setup.py's extras, so the image and `pip install .[gpu]` agree
        assert f'"{requirement}"' in setup, f"{path.name} installs {requirement}, which setup.py's extras do not list"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: path.name)
def test_the_documented_docker_run_lines_are_valid_neuron_flags(path):
    runs = _run_lines(path)
    assert runs, f"{path.name} documents how to run it"
    for arguments in runs:
        if arguments[0].startswith("canopy-"):  # the node image: the neuron's console script comes first
            assert arguments[0] in console_scripts()
            arguments = arguments[1:]
        settings = load_settings(arguments)
        assert settings.netuid == 7 and settings.network == "test"
