"""Bundle: a chute's source as one content-addressed archive, and unpacking one safely.

The deploy seam between a chute author's folder and the machines that run it: ``canopy
deploy`` builds a bundle and uploads it, the API unpacks it to inspect the chute
(``canopy.inspect``), a miner unpacks it only when its sha256 is the announced revision.

A bundle is a deterministic gzip'd tar: the source files in sorted order, every mtime 0,
uid/gid 0, no owner names, modes 0644 (0755 when executable), the gzip header's mtime 0 and
no file name in it, plus a manifest ``canopy-bundle.json`` (``{"entry": "module:attr",
"format": 1}``) as the first member. The same source gives the same bytes whatever the file
times or the folder it lives in, so its sha256 (``Bundle.revision``) names the code.

What goes in, by reference (``build_bundle(ref)``; ATTR defaults to ``chute``):

- ``path/to/file.py:ATTR``: the folder holding the file, recursively; entry ``file:ATTR``.
- ``path/to/pkg:ATTR`` (a folder with ``__init__.py``): that package only, under its name;
  entry ``pkg:ATTR``. A folder without ``__init__.py`` is refused: name the module file in
  it instead (``path/to/folder/module.py:ATTR``).
- ``module.sub:ATTR`` (no ``/``, no ``.py``): the working directory, where the module must
  be (``module/sub.py`` or ``module/sub/__init__.py``), as ``load_chute`` resolves it.
- ``root=FOLDER`` bundles that whole folder instead; the module must lie inside it.

Left out: hidden files and folders (``.git``, ``.env``, ...), ``__pycache__``, ``*.pyc``,
``*.pyo``, ``*.egg-info``, and the folders ``venv``, ``node_modules``, ``build``, ``dist``.
Symbolic links to files are stored as the file; links to folders are not followed.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["MANIFEST", "MAX_BUNDLE_BYTES", "MAX_FILES", "MAX_UNPACKED_BYTES", "Bundle", "BundleError",
           "build_bundle", "unpack_bundle"]

#: The manifest member, first in every bundle.
MANIFEST = "canopy-bundle.json"
FORMAT = 1
#: Limits: the compressed bundle, the source it unpacks to, and its number of files.
MAX_BUNDLE_BYTES = 8 * 1024 * 1024
MAX_UNPACKED_BYTES = 32 * 1024 * 1024
MAX_FILES = 1000

_EXCLUDED_DIRS = {"__pycache__", "venv", "node_modules", "build", "dist"}
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")
# Top-level names a bundle may not hold: the manifest, and the SDK it would shadow.
_RESERVED = {MANIFEST, "canopy", "canopy.py"}
_ENTRY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class BundleError(ValueError):
    """A bundle cannot be built or unpacked; the message names the problem."""


@dataclass(frozen=True)
class Bundle:
    """A built bundle: ``data`` (the .tar.gz bytes), ``entry`` (``module:attr`` inside it) and
    ``files`` (the source files it holds, sorted, the manifest left out)."""

    data: bytes
    entry: str
    files: tuple[str, ...]

    @functools.cached_property
    def revision(self) -> str:
        """The sha256 of ``data``, hex: the name of this code."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)


# -- building --------------------------------------------------------------------------


def build_bundle(ref: str, *, root: Path | None = None) -> Bundle:
    """The bundle of the chute named by ``ref`` (see the module docstring for what goes in)."""
    base, include, entry = _resolve(ref, root)
    files = _collect(base, include)
    module = entry.partition(":")[0].replace(".", "/")
    if f"{module}.py" not in files and f"{module}/__init__.py" not in files:
        raise BundleError(f"the chute's module {module!r} is left out of the bundle (hidden, build, dist, venv, ...)")
    _check_limits(files)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            manifest = json.dumps({"entry": entry, "format": FORMAT}, sort_keys=True).encode()
            _add(tar, MANIFEST, manifest, executable=False)
            for name, (path, _) in files.items():
                _add(tar, name, path.read_bytes(), executable=bool(path.stat().st_mode & 0o111))
    data = buffer.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"the bundle is {len(data):,} bytes compressed, over the limit of {MAX_BUNDLE_BYTES:,}; "
                          f"biggest files: {_biggest(files)}")
    return Bundle(data=data, entry=entry, files=tuple(files))


def _resolve(ref: str, root: Path | None) -> tuple[Path, Path, str]:
    """(the folder names are relative to, the folder whose files go in, the entry)."""
    target, _, attr = ref.strip().rpartition(":") if ":" in ref else (ref.strip(), "", "chute")
    attr = attr or "chute"
    if not target or not attr.isidentifier():
        raise BundleError(f"chute reference {ref!r}: give path/to/file.py:ATTR, path/to/package:ATTR or MODULE:ATTR")
    if not (target.endswith(".py") or "/" in target or os.sep in target):
        base = (root or Path.cwd()).resolve()
        module = Path(*target.split("."))
        if not ((base / module.with_suffix(".py")).is_file() or (base / module / "__init__.py").is_file()):
            raise BundleError(f"no module {target!r} in {str(base)!r} (looked for {module}.py and {module}/__init__.py)")
        return base, base, f"{target}:{attr}"
    path = Path(target).expanduser().resolve()
    if path.is_dir():
        if not (path / "__init__.py").is_file():
            raise BundleError(f"{target!r} is a folder without __init__.py: name the module file in it "
                              f"({target.rstrip('/')}/MODULE.py:{attr})")
        base, include, module_path = path.parent, path, path.relative_to(path.parent)
    elif path.is_file() and path.suffix == ".py":
        base = include = path.parent
        module_path = path.relative_to(base).with_suffix("")
    else:
        raise BundleError(f"chute file {target!r} does not exist (or is not a .py file or a package folder)")
    if root is not None:
        base = include = root.resolve()
        if not path.is_relative_to(base):
            raise BundleError(f"{target!r} is not inside the bundle root {str(base)!r}")
        module_path = path.relative_to(base)
        module_path = module_path.with_suffix("") if path.is_file() else module_path
    if not all(part.isidentifier() for part in module_path.parts):
        raise BundleError(f"{str(module_path)!r} is not an importable module name: rename it (letters, digits, _)")
    return base, include, f"{'.'.join(module_path.parts)}:{attr}"


def _excluded(name: str, is_dir: bool) -> bool:
    if name.startswith(".") or name.endswith(".egg-info"):
        return True
    return name in _EXCLUDED_DIRS if is_dir else name.endswith(_EXCLUDED_SUFFIXES)


def _collect(base: Path, include: Path) -> dict[str, tuple[Path, int]]:
    """{posix name relative to base: (path, size)} of the files that go in, sorted by name."""
    found: dict[str, tuple[Path, int]] = {}
    for folder, dirs, names in os.walk(include):
        dirs[:] = [d for d in dirs if not _excluded(d, is_dir=True)]
        for name in names:
            path = Path(folder, name)
            if _excluded(name, is_dir=False) or not path.is_file():  # sockets, fifos, dangling links
                continue
            relative = path.relative_to(base).as_posix()
            if relative.split("/")[0] in _RESERVED:
                raise BundleError(f"{relative!r} is a reserved name at the top of a bundle; rename it")
            found[relative] = (path, path.stat().st_size)
    return dict(sorted(found.items()))


def _check_limits(files: dict[str, tuple[Path, int]]) -> None:
    if len(files) > MAX_FILES:
        folders = Counter(name.split("/")[0] + ("/" if "/" in name else "") for name in files)
        most = ", ".join(f"{name} ({count})" for name, count in folders.most_common(5))
        raise BundleError(f"the bundle would hold {len(files):,} files, over the limit of {MAX_FILES:,}; "
                          f"most files in: {most}")
    total = sum(size for _, size in files.values())
    if total > MAX_UNPACKED_BYTES:
        raise BundleError(f"the bundle's files come to {total:,} bytes, over the limit of {MAX_UNPACKED_BYTES:,}; "
                          f"biggest files: {_biggest(files)}")


def _biggest(files: dict[str, tuple[Path, int]], count: int = 5) -> str:
    ranked = sorted(files.items(), key=lambda item: (-item[1][1], item[0]))[:count]
    return ", ".join(f"{name} ({size:,} bytes)" for name, (_, size) in ranked)


def _add(tar: tarfile.TarFile, name: str, data: bytes, *, executable: bool) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


# -- unpacking -------------------------------------------------------------------------


def unpack_bundle(data: bytes, dest: Path, *, revision: str | None = None) -> str:
    """Unpack ``data`` into ``dest`` (missing or empty) and return the manifest's entry.

    Refuses with BundleError, before writing or as soon as it is found: a sha256 other than
    ``revision``, a bundle over the limits (the gzip stream is inflated with a bound, so a
    small bomb stops at the limit whatever its headers claim), a member that is absolute,
    climbs out with ``..``, or is not a plain file or folder (links, devices, fifos), a
    duplicate or reserved name, and a missing or invalid manifest."""
    digest = hashlib.sha256(data).hexdigest()
    if revision is not None and digest != revision.strip().lower():
        raise BundleError(f"the bundle's sha256 is {digest}, not the announced revision {revision}")
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"the bundle is {len(data):,} bytes, over the limit of {MAX_BUNDLE_BYTES:,}")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"cannot unpack into {str(dest)!r}: it must be a missing or empty folder")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(_gunzip(data)), mode="r:")
    except tarfile.TarError as exc:
        raise BundleError(f"the bundle is not a valid tar archive: {exc}") from None
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    names: set[str] = set()
    manifest: bytes | None = None
    total = members = 0
    with tar:
        try:
            for member in tar:
                members += 1
                if members > MAX_FILES + 1:  # the source files, the manifest
                    raise BundleError(f"the bundle holds more than {MAX_FILES:,} files")
                name = _member_name(member, names)
                if member.isdir():
                    (root / name).mkdir(parents=True, exist_ok=True)
                    continue
                source = tar.extractfile(member)
                content = source.read(MAX_UNPACKED_BYTES - total + 1) if source else b""
                total += len(content)
                if total > MAX_UNPACKED_BYTES:
                    raise BundleError(f"the bundle unpacks to more than {MAX_UNPACKED_BYTES:,} bytes (at {name!r})")
                if name == MANIFEST:
                    manifest = content
                target = root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as out:  # "x": never through a link, never over a file
                    out.write(content)
                target.chmod(0o755 if member.mode & 0o111 else 0o644)
        except tarfile.TarError as exc:
            raise BundleError(f"the bundle is not a valid tar archive: {exc}") from None
        except OSError as exc:  # e.g. a file "a" and a member "a/b"
            raise BundleError(f"the bundle cannot be unpacked: {exc}") from None
    return _entry(manifest, names)


def _gunzip(data: bytes) -> bytes:
    """``data`` inflated, refusing as soon as it passes the limit (plus the tar framing)."""
    bound = MAX_UNPACKED_BYTES + (MAX_FILES + 1) * 3 * tarfile.BLOCKSIZE + 2 * tarfile.RECORDSIZE  # + tar framing
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(data, bound + 1)
    except zlib.error as exc:
        raise BundleError(f"the bundle is not valid gzip data: {exc}") from None
    if len(raw) > bound:
        raise BundleError(f"the bundle inflates past {bound:,} bytes (limit {MAX_UNPACKED_BYTES:,} bytes of files)")
    if not inflater.eof or inflater.unused_data:
        raise BundleError("the bundle's gzip stream is truncated or followed by other data")
    return raw


def _member_name(member: tarfile.TarInfo, seen: set[str]) -> str:
    name = member.name
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"the bundle member {name!r} is an absolute path")
    if ".." in parts:
        raise BundleError(f"the bundle member {name!r} climbs out of the bundle with '..'")
    if not (member.isreg() or member.isdir()):
        kind = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a device",
                tarfile.BLKTYPE: "a device", tarfile.FIFOTYPE: "a fifo"}.get(member.type, "not a plain file")
        raise BundleError(f"the bundle member {name!r} is {kind}; bundles hold plain files only")
    normal = "/".join(part for part in parts if part != ".")
    top = normal.split("/")[0]
    if not normal and not member.isdir():
        raise BundleError(f"the bundle member {name!r} has no file name")
    if top in _RESERVED - {MANIFEST} or (top == MANIFEST and normal != MANIFEST):
        raise BundleError(f"the bundle member {name!r} uses a reserved name")
    if member.isreg():
        if normal in seen:
            raise BundleError(f"the bundle holds {normal!r} twice")
        seen.add(normal)
    return normal


def _entry(manifest: bytes | None, names: set[str]) -> str:
    if manifest is None:
        raise BundleError(f"the bundle has no {MANIFEST}")
    try:
        meta = json.loads(manifest)
    except ValueError:
        raise BundleError(f"the bundle's {MANIFEST} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"the bundle's {MANIFEST} is not format {FORMAT}")
    entry = meta.get("entry")
    if not isinstance(entry, str) or not _ENTRY_RE.match(entry):
        raise BundleError(f"the bundle's {MANIFEST} has no valid entry (module:attr), got {entry!r}")
    module = entry.partition(":")[0].replace(".", "/")
    if f"{module}.py" not in names and f"{module}/__init__.py" not in names:
        raise BundleError(f"the bundle's entry {entry!r} names no module in it ({module}.py or {module}/__init__.py)")
    return entry
