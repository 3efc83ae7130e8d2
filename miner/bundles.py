"""BundleStore: the verified chute bundles a miner may run, unpacked, one folder per revision.

The seam between what validators deliver (``protocol.registry.DeliverBundle``, handled by
``miner.registry_service``) and the instances the autoscaler starts (``miner.instances``,
run with the bundle's folder as their working directory). A bundle is kept only when the
sha256 of its bytes is the revision it was delivered as (and ``miner.registry_service`` takes
only announced revisions), so a delivery cannot swap other code for what the announcements
name. A folder already on disk is trusted as written by an earlier ``put``::

    root/<revision>/               the unpacked source, canopy-bundle.json (the manifest) in it
    root/.tmp-<revision>-<random>/ a put in progress (renamed into place when complete)

``put`` unpacks in a thread into a temporary folder, then renames it into place: a folder
named for a revision is always complete, and two puts of one revision at once both succeed
(the second finds the first's folder and drops its own copy).

``pinned_revision(ref, cwd)`` is the revision ``canopy deploy`` would give the chute of a
hosting-file ref: the pinned chutes of ``--chutes.config`` carry it in Inventory so callers
can tell whether they run the registry's current code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path

from loguru import logger

from canopy.bundle import MANIFEST, BundleError, build_bundle, unpack_bundle
from protocol.registry import is_revision

_STALE_TMP_S = 3600.0  # a temporary folder this old is a put that died with its process


class BundleRejected(ValueError):
    """A delivered bundle is not kept: ``reason`` says why (wrong hash, bad archive, ...)."""

    def __init__(self, revision: str, reason: str) -> None:
        super().__init__(f"bundle {revision[:12]} refused: {reason}")
        self.revision = revision
        self.reason = reason


class BundleStore:
    """Verified bundles under ``root``, one unpacked folder per revision."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, str] = {}
        self._clean_stale()

    def folder(self, revision: str) -> Path:
        """Where ``revision`` is (or would be) unpacked; ValueError for a non-revision."""
        if not is_revision(revision):
            raise ValueError(f"{revision!r} is not a bundle revision (64 lowercase hex digits)")
        return self.root / revision

    def has(self, revision: str) -> bool:
        return is_revision(revision) and (self.root / revision / MANIFEST).is_file()

    def entry(self, revision: str) -> str:
        """The ``module:attr`` the bundle's manifest names (KeyError when it is not stored)."""
        cached = self._entries.get(revision)
        if cached is not None:
            return cached
        if not self.has(revision):
            raise KeyError(f"bundle {revision} is not stored")
        manifest = json.loads((self.folder(revision) / MANIFEST).read_text())
        entry = str(manifest["entry"])
        self._entries[revision] = entry
        return entry

    async def put(self, revision: str, data: bytes) -> Path:
        """Verify ``data`` against ``revision``, unpack it and return its folder.

        BundleRejected (with the reason) when the sha256 differs or the archive is refused
        by ``canopy.bundle.unpack_bundle`` (limits, links, traversal, no manifest)."""
        if not is_revision(revision):
            raise BundleRejected(str(revision), "the revision is not 64 lowercase hex digits")
        digest = hashlib.sha256(data).hexdigest()
        if digest != revision:
            raise BundleRejected(revision, f"its sha256 is {digest}, not the revision {revision}")
        final = self.root / revision
        if self.has(revision):
            return final
        temporary = self.root / f".tmp-{revision[:16]}-{secrets.token_hex(4)}"
        try:
            entry = await asyncio.to_thread(unpack_bundle, data, temporary, revision=revision)
        except BundleError as error:
            await asyncio.to_thread(shutil.rmtree, temporary, True)
            raise BundleRejected(revision, str(error)) from None
        try:
            os.rename(temporary, final)
        except OSError:
            # Another put of this revision won the race (its folder is complete), or a broken
            # leftover is in the way: keep a complete folder, never a half-written one.
            if not self.has(revision):
                await asyncio.to_thread(shutil.rmtree, final, True)
                try:
                    os.rename(temporary, final)
                except OSError as error:
                    await asyncio.to_thread(shutil.rmtree, temporary, True)
                    raise BundleRejected(revision, f"cannot store it in {self.root}: {error}") from None
            else:
                await asyncio.to_thread(shutil.rmtree, temporary, True)
        self._entries[revision] = entry
        logger.info("bundle {} stored in {} (entry {})", revision[:12], final, entry)
        return final

    def _clean_stale(self) -> None:
        now = time.time()
        for path in self.root.glob(".tmp-*"):
            try:
                if now - path.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue


def pinned_revision(ref: str, cwd: str | os.PathLike[str] | None = None) -> str:
    """The revision ``canopy deploy REF`` gives the chute of ``ref``, run from ``cwd``; "" (with
    a warning naming the fix) when it cannot be bundled. Blocking: call it in a thread."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    target, colon, attr = ref.strip().rpartition(":") if ":" in ref else (ref.strip(), "", "")
    try:
        if target.endswith(".py") or "/" in target or os.sep in target:
            path = Path(target).expanduser()
            absolute = path if path.is_absolute() else base / path
            bundle = build_bundle(f"{absolute}{colon}{attr}")
        else:
            bundle = build_bundle(ref, root=base)
    except (BundleError, OSError) as error:
        hint = "" if target.endswith(".py") else "; write the ref as path/to/file.py:attr"
        logger.warning("pinned chute {}: no revision (it cannot be bundled as canopy deploy would: {}{})", ref, error, hint)
        return ""
    return bundle.revision
