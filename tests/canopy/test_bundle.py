"""canopy.bundle: deterministic builds, excludes, limits, and unpacking refusing hostile archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from canopy import bundle as bundle_module
from canopy.bundle import MANIFEST, MAX_BUNDLE_BYTES, MAX_FILES, MAX_UNPACKED_BYTES, BundleError, build_bundle, unpack_bundle

CHUTE = """from canopy import Chute\n\nchute = Chute(username="me", name="tiny")\n"""
ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo_chute.py"


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getmembers()


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes]], manifest: dict | None = None) -> bytes:
    """A .tar.gz of ``entries`` (after a valid manifest for ``app:chute`` plus app.py, unless
    ``manifest`` says otherwise), built member by member as an attacker would."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in ((MANIFEST, json.dumps(manifest or {"format": 1, "entry": "app:chute"}).encode()),
                              ("app.py", CHUTE.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info, content in entries:
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, content: bytes = b"x = 1\n", linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    return info, content


# -- building --------------------------------------------------------------------------


def test_same_source_gives_same_bytes_whatever_the_times_and_folder(tmp_path: Path) -> None:
    src = write(tmp_path / "a", {"app.py": CHUTE, "helpers/util.py": "X = 1\n", "run.sh": "#!/bin/sh\n"})
    (src / "run.sh").chmod(0o775)
    first = build_bundle(f"{src}/app.py:chute")
    for path in src.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (src / "app.py").chmod(0o600)  # modes are normalised too (only the executable bit counts)
    second = build_bundle(f"{src}/app.py:chute")
    copy = shutil.copytree(src, tmp_path / "elsewhere" / "b")
    third = build_bundle(f"{copy}/app.py:chute")
    assert first.data == second.data == third.data
    assert first.revision == third.revision == hashlib.sha256(first.data).hexdigest()
    assert first.size == len(first.data) and first.entry == "app:chute"
    assert first.files == ("app.py", "helpers/util.py", "run.sh")

    assert first.data[4:8] == b"\0\0\0\0" and first.data[3] & 0x08 == 0  # gzip: mtime 0, no file name
    infos = members(first.data)
    assert [m.name for m in infos] == [MANIFEST, "app.py", "helpers/util.py", "run.sh"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in infos} == {(0, 0, 0, "", "")}
    assert {m.name: m.mode for m in infos} == {MANIFEST: 0o644, "app.py": 0o644, "helpers/util.py": 0o644,
                                               "run.sh": 0o755}

    (src / "helpers" / "util.py").write_text("X = 2\n")  # one changed byte
    assert build_bundle(f"{src}/app.py:chute").revision != first.revision


def test_excludes(tmp_path: Path) -> None:
    src = write(tmp_path / "src", {
        "app.py": CHUTE, "lib/mod.py": "", "lib/data.txt": "keep", "lib/build.py": "",  # kept
        "__pycache__/app.cpython-311.pyc": "", "lib/old.pyc": "", "lib/old.pyo": "", ".git/config": "",
        ".hg/store": "", ".venv/bin/python": "", "venv/lib/x.py": "", "node_modules/x/index.js": "",
        ".env": "SECRET=1", "lib/.hidden.py": "", ".config/x.py": "", "app.egg-info/PKG-INFO": "",
        "build/lib/app.py": "", "dist/app.whl": "", "lib/node_modules/y.js": "",
    })
    built = build_bundle(f"{src}/app.py:chute")
    assert built.files == ("app.py", "lib/build.py", "lib/data.txt", "lib/mod.py")
    assert [m.name for m in members(built.data)][1:] == list(built.files)


def test_package_folder_module_and_root_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {"pkg/__init__.py": "from pkg.app import chute\n", "pkg/app.py": CHUTE, "other.py": "",
                     "plain/mod.py": CHUTE, "sub/deep/app.py": CHUTE})
    package = build_bundle(f"{tmp_path}/pkg:chute")  # the package alone, under its name
    assert (package.entry, package.files) == ("pkg:chute", ("pkg/__init__.py", "pkg/app.py"))

    monkeypatch.chdir(tmp_path)  # module:attr bundles the working directory
    module = build_bundle("pkg.app:chute")
    assert module.entry == "pkg.app:chute" and "other.py" in module.files and "plain/mod.py" in module.files
    assert build_bundle("pkg.app").entry == "pkg.app:chute"  # ATTR defaults to chute

    rooted = build_bundle("sub/deep/app.py:chute", root=tmp_path)  # the whole root, module path from it
    assert rooted.entry == "sub.deep.app:chute" and rooted.files == module.files

    with pytest.raises(BundleError, match=r"folder without __init__.py: name the module file in it \(.*plain/MODULE.py"):
        build_bundle(f"{tmp_path}/plain:chute")
    with pytest.raises(BundleError, match="does not exist"):
        build_bundle(f"{tmp_path}/missing.py:chute")
    with pytest.raises(BundleError, match="no module 'nope.app'"):
        build_bundle("nope.app:chute")
    with pytest.raises(BundleError, match="is not inside the bundle root"):
        build_bundle(f"{tmp_path}/other.py:chute", root=tmp_path / "sub")
    write(tmp_path, {"my-chute.py": CHUTE, "build/app.py": CHUTE})
    with pytest.raises(BundleError, match="'my-chute' is not an importable module name"):
        build_bundle(f"{tmp_path}/my-chute.py:chute")
    with pytest.raises(BundleError, match="'build/app' is left out of the bundle"):
        build_bundle(f"{tmp_path}/build/app.py:chute", root=tmp_path)
    write(tmp_path, {"canopy/__init__.py": ""})  # it would shadow the SDK where the bundle runs
    with pytest.raises(BundleError, match="'canopy/__init__.py' is a reserved name"):
        build_bundle(f"{tmp_path}/other.py:chute")


def test_too_many_files_names_the_limit_and_where(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": CHUTE, **{f"data/{i:04}.txt": "" for i in range(MAX_FILES)}})
    with pytest.raises(BundleError) as caught:
        build_bundle(f"{tmp_path}/app.py:chute")
    assert str(caught.value) == (f"the bundle would hold {MAX_FILES + 1:,} files, over the limit of {MAX_FILES:,}; "
                                 f"most files in: data/ ({MAX_FILES}), app.py (1)")


def test_too_big_uncompressed_names_the_biggest_files(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": CHUTE, "model.bin": b"", "vocab.txt": b"v" * 1000})
    with open(tmp_path / "model.bin", "wb") as out:
        out.truncate(MAX_UNPACKED_BYTES)  # sparse: together with the rest, just over the limit
    with pytest.raises(BundleError) as caught:
        build_bundle(f"{tmp_path}/app.py:chute")
    total = MAX_UNPACKED_BYTES + 1000 + len(CHUTE)
    assert str(caught.value).startswith(f"the bundle's files come to {total:,} bytes, over the limit of "
                                        f"{MAX_UNPACKED_BYTES:,}; biggest files: model.bin ({MAX_UNPACKED_BYTES:,} "
                                        f"bytes), vocab.txt (1,000 bytes), app.py")


def test_too_big_compressed_names_the_biggest_files(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": CHUTE, "noise.bin": os.urandom(MAX_BUNDLE_BYTES + 4096)})  # incompressible
    with pytest.raises(BundleError, match=rf"compressed, over the limit of {MAX_BUNDLE_BYTES:,}; "
                                          rf"biggest files: noise.bin \({MAX_BUNDLE_BYTES + 4096:,} bytes\)"):
        build_bundle(f"{tmp_path}/app.py:chute")


# -- unpacking -------------------------------------------------------------------------


def test_round_trip_of_the_echo_example(tmp_path: Path) -> None:
    built = build_bundle(f"{ECHO}:chute")
    assert built.entry == "echo_chute:chute" and "echo_chute.py" in built.files
    assert unpack_bundle(built.data, tmp_path / "out", revision=built.revision.upper()) == "echo_chute:chute"
    assert (tmp_path / "out" / "echo_chute.py").read_bytes() == ECHO.read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([MANIFEST, *built.files])


def test_revision_mismatch_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    built = build_bundle(f"{ECHO}:chute")
    with pytest.raises(BundleError, match=f"sha256 is {built.revision}, not the announced revision {'0' * 64}"):
        unpack_bundle(built.data, tmp_path / "out", revision="0" * 64)
    assert not (tmp_path / "out").exists()
    tampered = built.data[:-9] + bytes([built.data[-9] ^ 1]) + built.data[-8:]
    with pytest.raises(BundleError, match="not the announced revision"):
        unpack_bundle(tampered, tmp_path / "out", revision=built.revision)


class Zeros(io.RawIOBase):
    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        buffer[:] = bytes(len(buffer))
        return len(buffer)


def test_a_gzip_bomb_is_stopped_while_inflating(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:  # 4x the limit of zeros, ~130 KiB compressed
        info = tarfile.TarInfo("app.py")
        info.size = 4 * MAX_UNPACKED_BYTES
        tar.addfile(info, Zeros())
    assert len(buffer.getvalue()) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match=rf"inflates past .* bytes \(limit {MAX_UNPACKED_BYTES:,} bytes of files\)"):
            unpack_bundle(buffer.getvalue(), tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_UNPACKED_BYTES  # stopped near the limit, not after inflating all 128 MiB
    assert not (tmp_path / "out").exists()


def test_the_files_total_is_counted_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_module, "MAX_UNPACKED_BYTES", 4096)  # checked as the files are written
    data = make_tar([member("a.bin", content=b"a" * 3000), member("b.bin", content=b"b" * 3000)])
    with pytest.raises(BundleError, match=r"unpacks to more than 4,096 bytes \(at 'b.bin'\)"):
        unpack_bundle(data, tmp_path / "out")


@pytest.mark.parametrize(("entry", "message"), [
    (member("../evil.py"), r"'../evil.py' climbs out of the bundle with '..'"),
    (member("lib/../../evil.py"), r"climbs out of the bundle"),
    (member("/tmp/canopy-evil.py"), r"'/tmp/canopy-evil.py' is an absolute path"),
    (member("link.py", tarfile.SYMTYPE, linkname="/etc/passwd"), r"'link.py' is a symbolic link"),
    (member("hard.py", tarfile.LNKTYPE, linkname="app.py"), r"'hard.py' is a hard link"),
    (member("dev", tarfile.CHRTYPE), r"'dev' is a device"),
    (member("pipe", tarfile.FIFOTYPE), r"'pipe' is a fifo"),
    (member("app.py"), r"holds 'app.py' twice"),
    (member("canopy/__init__.py"), r"'canopy/__init__.py' uses a reserved name"),
])
def test_hostile_members_are_refused(tmp_path: Path, entry: tuple, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        unpack_bundle(make_tar([entry]), tmp_path / "out")
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/canopy-evil.py").exists()
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*"))


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    data = make_tar([member(f"f{i}.py") for i in range(MAX_FILES)])
    with pytest.raises(BundleError, match=f"more than {MAX_FILES:,} files"):
        unpack_bundle(data, tmp_path / "out")


@pytest.mark.parametrize(("data", "message"), [
    (make_tar([], {"format": 2, "entry": "app:chute"}), "is not format 1"),
    (make_tar([], {"format": 1, "entry": "app"}), "no valid entry"),
    (make_tar([], {"format": 1, "entry": "missing:chute"}), r"names no module in it \(missing.py"),
    (gzip.compress(b"not a tar" * 100, mtime=0), "not a valid tar archive"),
    (b"not gzip at all", "not valid gzip data"),
    (gzip.compress(b"", mtime=0) + b"junk", "truncated or followed by other data"),
])
def test_invalid_bundles_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        unpack_bundle(data, tmp_path / "out")


def test_no_manifest_and_a_busy_destination_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info, content = member("app.py")
        tar.addfile(info, io.BytesIO(content))
    with pytest.raises(BundleError, match=f"has no {MANIFEST}"):
        unpack_bundle(buffer.getvalue(), tmp_path / "out")
    write(tmp_path / "busy", {"keep.txt": "mine"})
    with pytest.raises(BundleError, match="must be a missing or empty folder"):
        unpack_bundle(build_bundle(f"{ECHO}:chute").data, tmp_path / "busy")
