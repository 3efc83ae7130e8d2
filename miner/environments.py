"""Cached chute environments: an image's pip installs, built once per image hash on the miner.

Seam between a chute's ``ImageEnvironment`` (``canopy.image_environment``: the requirements
its ``Image`` pip-installs) and the instances that run it (``miner.instances``): before an
instance of such a chute starts, ``EnvironmentCache.ensure`` returns the interpreter of its
environment, building it the first time:

- a virtualenv at ``<root>/<key>`` (``key``: sha256 of the requirements and the Python minor
  version) made with ``python -m venv --without-pip`` from the miner's base interpreter, with
  one ``.pth`` line that adds the miner's site-packages *after* its own: layered over the base
  runtime, so the chute sees the base's packages (the Canopy SDK included) and the image's
  requirements win where both have one;
- filled by the miner's pip (``pip --python ENV/bin/python install``) from the package index the
  miner reaches (``--chutes.pip_index_url``, else pip's own configuration), wheels only
  (``--only-binary :all:``: installing a wheel runs none of its code, an sdist's setup.py
  would run on the miner). Where the sandbox is on, pip itself runs in bubblewrap with the
  network but none of the miner's files beyond the runtime and the folder it fills;
- built in a temporary folder and renamed into place once pip succeeded (a marker file
  ``canopy-env.json`` says what it holds), so a crash mid-build leaves no half environment;
  one build per key at a time however many instances wait for it; pip's progress goes to the
  log line by line.

A second instance of the same image (or another chute with the same requirements) finds the
environment ready: no second install (``builds`` counts the pip runs).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import Callable

from loguru import logger

from canopy.image_environment import ImageEnvironment
from miner.processes import run_logged

MARKER = "canopy-env.json"
BUILD_TIMEOUT_S = 900.0
#: what of the miner's environment pip's build gets: its PATH, locale, index and proxy settings
PIP_ENV = ("PATH", "LANG", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT", "HTTPS_PROXY",
           "HTTP_PROXY", "NO_PROXY")
#: pip's lines worth a line in the miner's log (its progress)
_PROGRESS = ("Collecting", "Downloading", "Installing", "Successfully", "ERROR", "Requirement already satisfied")


class EnvironmentBuildError(RuntimeError):
    """pip could not build a chute's environment; the message carries pip's last lines."""


def site_packages() -> str:
    """The miner's own site-packages (its virtualenv's): what a chute environment is layered over."""
    return sysconfig.get_paths()["purelib"]


def base_interpreter() -> str:
    """The interpreter the miner's virtualenv was made from (a venv made from a venv would
    point its ``home`` at the first venv's bin, which the sandbox binds anyway)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _build_env() -> dict[str, str]:
    return {name: os.environ[name] for name in PIP_ENV if name in os.environ}


class EnvironmentCache:
    """Chute environments under ``root``, one per image key (see the module docstring).

    ``wrap(command, folder, scratch)`` runs pip's command in a sandbox (None: as a plain child)."""

    def __init__(self, root: str | os.PathLike[str], *, index_url: str | None = None,
                 wrap: Callable[[list[str], Path, Path], list[str]] | None = None,
                 timeout_s: float = BUILD_TIMEOUT_S) -> None:
        self.root = Path(root).expanduser().resolve()
        self.index_url = index_url
        self.wrap = wrap
        self.timeout_s = timeout_s
        self.builds = 0  # pip runs started (a reused environment adds none)
        self._building: dict[str, asyncio.Future[Path]] = {}

    def folder(self, environment: ImageEnvironment) -> Path:
        return self.root / environment.key()

    def ready(self, environment: ImageEnvironment) -> bool:
        return (self.folder(environment) / MARKER).is_file()

    @staticmethod
    def interpreter(folder: Path) -> Path:
        return folder / "bin" / "python"

    async def ensure(self, environment: ImageEnvironment, chute: str) -> Path | None:
        """The interpreter of ``environment``'s folder, built first if needed; None when the
        image installs nothing (the base runtime serves it). EnvironmentBuildError on failure."""
        if not environment.pip:
            return None
        key = environment.key()
        if self.ready(environment):
            logger.debug("environment {} of {} is cached", key[:12], chute)
            return self.interpreter(self.folder(environment))
        if key not in self._building:
            self._building[key] = asyncio.ensure_future(self._build(environment, chute))
            self._building[key].add_done_callback(lambda _: self._building.pop(key, None))
        folder = await asyncio.shield(self._building[key])
        return self.interpreter(folder)

    async def _build(self, environment: ImageEnvironment, chute: str) -> Path:
        key, final = environment.key(), self.folder(environment)
        self.root.mkdir(parents=True, exist_ok=True)
        work = self.root / f".build-{key[:12]}-{secrets.token_hex(3)}"
        folder, scratch = work / "env", work / "home"
        scratch.mkdir(parents=True)
        started = time.monotonic()
        self.builds += 1
        logger.info("environment {} for {}: pip install {} (first instance of this image on this miner)",
                    key[:12], chute, " ".join(environment.pip))
        try:
            await asyncio.to_thread(run_logged, [base_interpreter(), "-m", "venv", "--without-pip", str(folder)],
                                    label=f"environment {key[:12]}", what="python -m venv", env=_build_env(),
                                    timeout_s=self.timeout_s, error=EnvironmentBuildError)
            purelib = folder / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
            (purelib / "_canopy_base_runtime.pth").write_text(f"import site; site.addsitedir({site_packages()!r})\n")
            pip = [sys.executable, "-m", "pip", "--python", str(self.interpreter(folder)), "install", "--no-input",
                   "--disable-pip-version-check", "--progress-bar", "off", "--no-warn-script-location",
                   "--only-binary", ":all:"]
            if self.index_url:
                pip += ["--index-url", self.index_url]
            await self._pip([*pip, "--", *environment.pip], work, scratch, key)
            (folder / MARKER).write_text(json.dumps({"pip": environment.pip, "python": sys.version.split()[0],
                                                     "chute": chute, "built_s": round(time.monotonic() - started, 2)}))
            try:
                folder.rename(final)
            except OSError:
                if not (final / MARKER).is_file():  # not another miner's build that won the race
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("environment {} for {} ready in {:.1f}s", key[:12], chute, time.monotonic() - started)
        return final

    async def _pip(self, command: list[str], work: Path, scratch: Path, key: str) -> None:
        """pip's command, in the build sandbox (``wrap``) with only pip's settings of the
        miner's environment, its progress in the log."""
        env = {**_build_env(), "HOME": str(scratch)}
        argv = self.wrap(command, work, scratch) if self.wrap is not None else command
        await asyncio.to_thread(run_logged, argv, label=f"environment {key[:12]}", what="pip", env=env,
                                timeout_s=self.timeout_s, progress=_PROGRESS, error=EnvironmentBuildError)
