"""miner.bundles: verified bundles unpacked per revision, and the revision of a pinned chute."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from canopy.bundle import MANIFEST, MAX_FILES, build_bundle
from miner.bundles import BundleRejected, BundleStore, pinned_revision
from tests.support.logs import captured_logs

CHUTE_FILE = '''
from canopy.chute import Chute
from helper import GREETING

chute = Chute(username="alice", name="hello", node_selector={"gpu_count": 1, "min_vram_gb_per_gpu": 0})


@chute.cord()
async def hello(self) -> dict:
    return {"greeting": GREETING}
'''


@pytest.fixture
def logs():
    with captured_logs("WARNING") as lines:
        yield lines


@pytest.fixture
def chute_folder(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "hello.py").write_text(CHUTE_FILE)
    (folder / "helper.py").write_text('GREETING = "hi"\n')
    return folder


async def test_a_verified_bundle_is_unpacked_under_its_revision(tmp_path, chute_folder):
    bundle = build_bundle(f"{chute_folder}/hello.py:chute")
    store = BundleStore(tmp_path / "bundles")
    assert not store.has(bundle.revision)
    folder = await store.put(bundle.revision, bundle.data)
    assert folder == tmp_path / "bundles" / bundle.revision == store.folder(bundle.revision)
    assert store.has(bundle.revision) and store.entry(bundle.revision) == "hello:chute"
    assert (folder / "hello.py").read_text() == CHUTE_FILE and (folder / "helper.py").is_file()
    assert json.loads((folder / MANIFEST).read_text())["entry"] == "hello:chute"
    reopened = BundleStore(tmp_path / "bundles")  # a restarted miner keeps what it verified
    assert reopened.has(bundle.revision) and reopened.entry(bundle.revision) == "hello:chute"
    assert await store.put(bundle.revision, bundle.data) == folder, "a second put of a stored revision is a no-op"


async def test_tampered_bytes_are_refused_and_nothing_is_kept(tmp_path, chute_folder):
    bundle = build_bundle(f"{chute_folder}/hello.py:chute")
    store = BundleStore(tmp_path / "bundles")
    tampered = bytearray(bundle.data)
    tampered[len(tampered) // 2] ^= 0xFF
    with pytest.raises(BundleRejected, match=f"its sha256 is {hashlib.sha256(tampered).hexdigest()}") as caught:
        await store.put(bundle.revision, bytes(tampered))
    assert caught.value.revision == bundle.revision and "not the revision" in caught.value.reason
    other = build_bundle(f"{chute_folder}/helper.py:chute")  # a real bundle, delivered as another revision
    with pytest.raises(BundleRejected, match="sha256"):
        await store.put(bundle.revision, other.data)
    garbage = b"not a gzip stream at all"
    with pytest.raises(BundleRejected, match="not valid gzip data"):  # the hash matches, the archive does not
        await store.put(hashlib.sha256(garbage).hexdigest(), garbage)
    with pytest.raises(BundleRejected, match="64 lowercase hex"):
        await store.put("../../etc", garbage)
    with pytest.raises(ValueError, match="not a bundle revision"):
        store.folder("../escape")
    assert list((tmp_path / "bundles").iterdir()) == [], "no folder, no temporary left behind"
    assert not store.has(bundle.revision)
    with pytest.raises(KeyError):
        store.entry(bundle.revision)


async def test_concurrent_puts_of_one_revision_all_succeed_with_one_complete_folder(tmp_path, chute_folder):
    for index in range(300):  # enough files that the unpacks overlap
        (chute_folder / f"data_{index}.txt").write_text(f"{index}\n" * 50)
    bundle = build_bundle(f"{chute_folder}/hello.py:chute")
    store = BundleStore(tmp_path / "bundles")
    folders = await asyncio.gather(*(store.put(bundle.revision, bundle.data) for _ in range(6)))
    assert set(folders) == {store.folder(bundle.revision)}
    assert [p.name for p in (tmp_path / "bundles").iterdir()] == [bundle.revision], "the losers' copies are gone"
    assert len(list(store.folder(bundle.revision).glob("data_*.txt"))) == 300


def test_the_pinned_revision_is_what_canopy_deploy_gives(tmp_path, chute_folder, logs):
    deployed = build_bundle(f"{chute_folder}/hello.py:chute").revision
    assert pinned_revision("src/hello.py:chute", cwd=tmp_path) == deployed, "a relative file ref is read from cwd"
    assert pinned_revision(f"{chute_folder}/hello.py:chute", cwd="/") == deployed
    (chute_folder / "helper.py").write_text('GREETING = "changed"\n')
    assert pinned_revision("src/hello.py:chute", cwd=tmp_path) != deployed, "other code, another revision"
    assert pinned_revision("hello:chute", cwd=chute_folder) == build_bundle(f"{chute_folder}/hello.py:chute").revision
    assert logs == []


def test_a_ref_that_cannot_be_bundled_has_no_revision_and_a_warning_naming_the_fix(tmp_path, chute_folder, logs):
    for index in range(MAX_FILES + 1):  # a module ref bundles its whole working directory: too many files here
        (chute_folder / f"f{index}.txt").write_text("x")
    assert pinned_revision("hello:chute", cwd=chute_folder) == ""
    [warning] = logs
    assert "hello:chute" in warning and "write the ref as path/to/file.py:attr" in warning and "1,003 files" in warning
    assert pinned_revision("missing/nothing.py:chute", cwd=tmp_path) == ""
    assert "does not exist" in logs[-1]
