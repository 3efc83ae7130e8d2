"""What a sandbox runtime makes of a chute's ``Image``: pip packages, environment, refusals.

Seam between the SDK's ``canopy.image.Image`` (a Dockerfile a container runtime builds) and
the runtimes without a container (``--chutes.runtime sandbox|process`` on the miner): they
run the chute on the miner's base runtime (its Python and virtualenv), so of an image they
serve only what needs no root on the host:

- ``from_base``: served by the base runtime (the Chutes SDK README's chute, whose image is
  only a base, runs as it is);
- pip installs (``Image.pip_install`` or ``run_command("pip install ...")`` with only
  requirements from the package index): ``pip`` below, built by the miner into a cached
  environment per image hash, layered over the base runtime (``miner.environments``);
- ``with_env``: ``env`` below, set in the instance (inside its sandbox only), except the
  keys that steer the loader, the interpreter or the node's tools (``RESERVED_ENV``:
  ``LD_*``, ``PYTHON*``, ``PATH``, ...), which only a container may set;
- ``with_python``: ``python`` below; served when it is the base runtime's minor version;
- ``set_workdir``, ``set_user``, ``with_entrypoint``: the runtime's own (the bundle is the
  working directory, the sandbox's user, ``canopy.instance``);
- anything else needs root or a container filesystem (``apt_install``, other
  ``run_command`` lines, ``add``): listed in ``unsupported``, and a sandbox runtime refuses
  the chute at load time naming them (``--chutes.runtime container`` runs them).

``image_environment(image)`` is computed when a bundle is inspected (``ChuteInfo.environment``),
stored with the chute's description and announced to the miners.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from typing import Any

from pydantic import BaseModel, Field, field_validator

from canopy.image import ENV_KEY, check_requirement

MAX_REQUIREMENTS = 64
#: environment variables an image may not set for a runtime without containers: they steer the
#: loader, the interpreter or the node's own tools (and would reach them) or are the runtime's
RESERVED_ENV = re.compile(r"^(LD_.*|PYTHON.*|CANOPY_.*|DOCKER_.*|PATH|HOME|TMPDIR|SHELL|ENV|BASH_ENV|IFS|"
                          r"CUDA_VISIBLE_DEVICES|NVIDIA_VISIBLE_DEVICES|GCONV_PATH|MALLOC_.*|GLIBC_.*)$")
#: pip options a ``run_command`` pip line may carry and still be served from the package index
_HARMLESS_PIP_OPTIONS = frozenset({"--no-cache-dir", "-U", "--upgrade", "-q", "--quiet", "--no-input",
                                   "--disable-pip-version-check", "--progress-bar=off"})
_PIPS = (["pip", "install"], ["pip3", "install"], ["python", "-m", "pip", "install"], ["python3", "-m", "pip", "install"])


class ImageEnvironment(BaseModel):
    """The parts of a chute's image a runtime without containers serves, and those it cannot."""

    pip: list[str] = Field(default_factory=list, max_length=MAX_REQUIREMENTS,
                           description="requirements from the package index, in the image's order")
    env: dict[str, str] = Field(default_factory=dict, description="the image's ENV values")
    python: str | None = Field(None, description="the Python release with_python asked for")
    unsupported: list[str] = Field(default_factory=list, max_length=256,
                                   description="image steps only a container runtime runs (need root)")

    @field_validator("pip")
    @classmethod
    def _requirements(cls, value: list[str]) -> list[str]:
        return [check_requirement(item) for item in value]

    @field_validator("env")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not ENV_KEY.match(key) or RESERVED_ENV.match(key.upper()):
                raise ValueError(f"env key {key!r} is reserved or invalid in a runtime without containers")
            if "\n" in text or "\x00" in text or len(text) > 4096:
                raise ValueError(f"env value of {key} must be one line of at most 4096 characters")
        return value

    def key(self) -> str:
        """The cached environment's name: sha256 of the requirements and the Python minor version
        (the same image on the same base runtime shares one environment)."""
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        return hashlib.sha256(json.dumps({"python": python, "pip": self.pip}).encode()).hexdigest()[:32]

    def refusal(self) -> str | None:
        """Why the base runtime cannot serve this image (None: it can), naming the fix."""
        problems = list(self.unsupported)
        if self.python is not None:
            base = f"{sys.version_info.major}.{sys.version_info.minor}"
            if self.python.split(".")[:2] != base.split("."):
                problems.append(f"with_python({self.python!r}) (this miner runs Python {base})")
        if not problems:
            return None
        return (f"its Image needs {'; '.join(problems)}, which only a container runtime builds "
                f"(--chutes.runtime container on a host with Docker or Podman); the sandbox runtime serves "
                f"from_base, pip installs and with_env")


def pip_requirements(command: str) -> list[str] | None:
    """The requirements of ``command`` when it is only ``pip install`` lines of index packages
    (joined with ``&&``), else None."""
    found: list[str] = []
    for part in command.split("&&"):
        try:
            words = shlex.split(part)
        except ValueError:
            return None
        prefix = next((p for p in _PIPS if words[:len(p)] == p), None)
        if prefix is None:
            return None
        rest = [w for w in words[len(prefix):] if w not in _HARMLESS_PIP_OPTIONS]
        if not rest:
            return None
        try:
            found += [check_requirement(word) for word in rest]
        except ValueError:
            return None
    return found


def image_environment(image: Any) -> ImageEnvironment:
    """What the base runtime serves of ``image`` (a ``canopy.image.Image``; a reference string or
    None is a base only: nothing to install)."""
    result = ImageEnvironment()
    for method, argument in getattr(image, "steps", None) or []:
        if method == "run_command":
            requirements = pip_requirements(argument)
            if requirements is None:
                result.unsupported.append(f"run_command({argument!r})")
            else:
                result.pip += [r for r in requirements if r not in result.pip]
        elif method == "with_env":
            key, _, value = argument.partition("=")
            if RESERVED_ENV.match(key.upper()):
                result.unsupported.append(f"with_env({key!r}) (reserved outside a container)")
            else:
                result.env[key] = value
        elif method == "with_python":
            result.python = argument
        else:
            result.unsupported.append(f"{method}({argument!r})")
    return ImageEnvironment.model_validate(result.model_dump())
