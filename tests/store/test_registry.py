"""The chute registry (``store.registry``) on SQLite and on PostgreSQL, and who may do what to a
chute (``store.scopes``): deploying, redeploying, idempotent uploads, private listing, soft
delete and re-deploy, refused input, and the ``may`` truth table.

The ``store`` fixture (``tests/store/conftest.py``) runs each database test on both backends."""

from __future__ import annotations

import asyncio
import json

import pytest

from canopy.chute import chute_id
from store.registry import ChuteRecord, ChuteRegistry, RegistryError
from store.registry_tables import Chute, ChuteRevision
from store.scopes import ScopeError, key_chutes, key_scopes, may, scopes_json
from tests.support.store import NOW, bundle_of, count, description

V1, CODE1 = bundle_of("v1: def echo(x): return x")
V2, CODE2 = bundle_of("v2: def echo(x): return x + x")


@pytest.fixture
def registry(store) -> ChuteRegistry:
    return ChuteRegistry(store.engine)


async def deploy(registry: ChuteRegistry, owner: str = "alice", name: str = "echo", revision: str = V1,
                 bundle: bytes = CODE1, *, public: bool = True, now: float = NOW, **fields) -> ChuteRecord:
    settings = dict(max_instances=2, shutdown_after_seconds=300) | fields
    return await registry.put_revision(owner, name, revision, bundle, description(owner, name), public=public, now=now,
                                       **settings)


async def test_a_first_deploy_creates_the_chute_at_its_revision(registry, store):
    record = await deploy(registry)
    assert record == ChuteRecord(chute_id("alice", "echo"), "alice", "echo", V1, True, description("alice", "echo"),
                                 2, 300, NOW, NOW)
    assert record.chute_id == chute_id("alice", "echo") and record.ref == "alice/echo"
    assert await registry.get("alice", "echo") == record == await registry.get_by_id(record.chute_id)
    assert await registry.get("alice", "other") is None and await registry.get("bob", "echo") is None
    assert await registry.bundle(V1) == CODE1
    assert await registry.current_revisions() == {record.chute_id: V1}
    assert (await count(store, ChuteRevision), await count(store, Chute)) == (1, 1)


async def test_uploading_the_same_revision_again_changes_nothing(registry, store):
    first = await deploy(registry)
    again = await deploy(registry, now=NOW + 60)
    assert again == first and again.updated_at == NOW, "an identical re-upload is not a change"
    assert await count(store, ChuteRevision) == 1
    assert [r.revision for r in await registry.revisions("alice", "echo")] == [V1]


async def test_a_new_revision_becomes_current_and_the_old_one_stays_fetchable(registry, store):
    await deploy(registry)
    second = await deploy(registry, revision=V2, bundle=CODE2, now=NOW + 10)
    assert (second.revision, second.created_at, second.updated_at) == (V2, NOW, NOW + 10)
    assert (await registry.get("alice", "echo")).revision == V2
    assert await registry.current_revisions() == {second.chute_id: V2}
    assert (await registry.bundle(V1), await registry.bundle(V2)) == (CODE1, CODE2)
    assert [(r.revision, r.size) for r in await registry.revisions("alice", "echo")] == [(V2, len(CODE2)),
                                                                                         (V1, len(CODE1))]
    back = await deploy(registry, now=NOW + 20)  # rolling back: the old revision is current again, not copied
    assert (back.revision, back.updated_at) == (V1, NOW + 20)
    assert await count(store, ChuteRevision) == 2


async def test_redeploying_the_same_code_with_other_settings_changes_them(registry, store):
    await deploy(registry)
    private = await deploy(registry, public=False, max_instances=5, shutdown_after_seconds=0, now=NOW + 5)
    assert (private.public, private.max_instances, private.shutdown_after_seconds, private.updated_at) == (
        False, 5, 0, NOW + 5)
    assert await registry.get("alice", "echo") == private
    assert await count(store, ChuteRevision) == 1


async def test_private_chutes_are_listed_only_to_their_owner(registry):
    await deploy(registry, "alice", "open")
    await deploy(registry, "alice", "secret", public=False)
    await deploy(registry, "bob", "open", *bundle_of("bob's"))
    await deploy(registry, "bob", "hidden", *bundle_of("bob's hidden"), public=False)

    def refs(records):
        return [record.ref for record in records]

    assert refs(await registry.list()) == ["alice/open", "bob/open"]
    assert refs(await registry.list(include_private_of="alice")) == ["alice/open", "alice/secret", "bob/open"]
    assert refs(await registry.list(owner="alice")) == ["alice/open"]
    assert refs(await registry.list(owner="alice", include_private_of="alice")) == ["alice/open", "alice/secret"]
    assert refs(await registry.list(owner="bob", include_private_of="alice")) == ["bob/open"]
    assert len(await registry.current_revisions()) == 4, "validators announce private chutes too"


async def test_a_deleted_chute_disappears_keeps_its_bundles_and_its_name_can_be_deployed_again(registry, store):
    first = await deploy(registry)
    await deploy(registry, "alice", "other", *bundle_of("other"))
    assert await registry.delete("alice", "echo", now=NOW + 1) is True
    assert await registry.delete("alice", "echo", now=NOW + 2) is False, "already deleted"
    assert await registry.delete("alice", "never") is False
    assert await registry.get("alice", "echo") is None and await registry.get_by_id(first.chute_id) is None
    assert [record.ref for record in await registry.list(include_private_of="alice")] == ["alice/other"]
    assert first.chute_id not in await registry.current_revisions()
    assert await registry.bundle(V1) == CODE1, "a miner may still be fetching it"

    again = await deploy(registry, revision=V2, bundle=CODE2, public=False, now=NOW + 30)
    assert (again.chute_id, again.revision, again.public, again.created_at) == (first.chute_id, V2, False, NOW + 30)
    assert await registry.get("alice", "echo") == again
    assert (await registry.current_revisions())[again.chute_id] == V2
    assert await count(store, Chute) == 2 and await count(store, ChuteRevision) == 3
    # re-deploying the very revision it was deleted at revives it too
    await registry.delete("alice", "echo", now=NOW + 40)
    revived = await deploy(registry, revision=V2, bundle=CODE2, public=False, now=NOW + 50)
    assert (revived.revision, revived.created_at) == (V2, NOW + 50)
    assert await registry.get("alice", "echo") == revived


@pytest.mark.parametrize("change, message", [
    (dict(owner=""), "chute owner ''"),
    (dict(owner="al/ice"), "chute owner 'al/ice'"),
    (dict(owner="-alice"), "chute owner '-alice'"),
    (dict(owner="a" * 65), "chute owner"),
    (dict(name=""), "chute name ''"),
    (dict(name="has space"), "chute name 'has space'"),
    (dict(name="_echo"), "chute name '_echo'"),
    (dict(name="e" * 129), "chute name"),
    (dict(revision=V1.upper()), "is not a sha256 hex digest"),
    (dict(revision="abc"), "is not a sha256 hex digest"),
    (dict(bundle=b"tampered"), "is not the sha256 of the bundle"),
    (dict(bundle=b"", revision=bundle_of("")[0]), "the bundle must be non-empty bytes"),
    (dict(bundle="text"), "the bundle must be non-empty bytes"),
    (dict(public="yes"), "public must be true or false"),
    (dict(max_instances=0), "max_instances must be an integer >= 1"),
    (dict(max_instances=True), "max_instances must be an integer >= 1"),
    (dict(shutdown_after_seconds=-1), "shutdown_after_seconds must be an integer >= 0"),
    (dict(shutdown_after_seconds=1.5), "shutdown_after_seconds must be an integer >= 0"),
    (dict(description=["not", "an", "object"]), "the description must be a JSON object"),
    (dict(description={"when": object()}), "the description is not JSON"),
    (dict(description={"x": float("nan")}), "the description is not JSON"),
])
async def test_invalid_input_is_refused_and_nothing_is_stored(registry, store, change, message):
    arguments = dict(owner="alice", name="echo", revision=V1, bundle=CODE1, description=description("alice", "echo"),
                     public=True, max_instances=1, shutdown_after_seconds=60) | change
    with pytest.raises(RegistryError, match=message.replace("(", r"\(")):
        await registry.put_revision(**arguments)
    assert (await count(store, Chute), await count(store, ChuteRevision)) == (0, 0)
    # nor on a chute that exists: it keeps its revision and settings
    existing = await deploy(registry)
    with pytest.raises(RegistryError):
        await registry.put_revision(**(arguments | dict(revision=V2, bundle=CODE2) | change))
    assert await registry.get("alice", "echo") == existing
    assert await count(store, ChuteRevision) == 1


async def test_lookups_with_malformed_input_find_nothing(registry):
    await deploy(registry)
    assert await registry.bundle("not-a-revision") is None and await registry.bundle(V2) is None
    assert await registry.get("al/ice", "echo") is None


async def test_deploys_of_one_new_chute_at_once_all_land(registry, store):
    versions = [bundle_of(f"version {n}") for n in range(4)]
    records = await asyncio.gather(*(deploy(registry, revision=revision, bundle=data, now=NOW + n)
                                     for n, (revision, data) in enumerate(versions)))
    assert {record.chute_id for record in records} == {chute_id("alice", "echo")}
    assert await count(store, Chute) == 1 and await count(store, ChuteRevision) == 4
    assert (await registry.get("alice", "echo")).revision in {revision for revision, _ in versions}
    for revision, data in versions:
        assert await registry.bundle(revision) == data


# --- who may do what (store.scopes) -------------------------------------------------------

INV, DEP, ADM = frozenset({"invoke"}), frozenset({"deploy"}), frozenset({"admin"})
INV_DEP = INV | DEP


@pytest.mark.parametrize("scopes, owner, chutes, action, chute, public, allowed", [
    # invoke: public chutes for any invoke key, private ones only for their owner's
    (INV, None, None, "invoke", ("bob", "echo"), True, True),
    (INV, None, None, "invoke", ("bob", "echo"), False, False),
    (INV, "alice", None, "invoke", ("bob", "echo"), False, False),
    (INV, "alice", None, "invoke", ("alice", "echo"), False, True),
    (DEP, "alice", None, "invoke", ("alice", "echo"), True, False),
    (frozenset(), "alice", None, "invoke", ("alice", "echo"), True, False),
    # deploy, delete, warmup: the deploy scope, on the key owner's chutes only
    (INV_DEP, "alice", None, "deploy", ("alice", "new"), False, True),
    (DEP, "alice", None, "delete", ("alice", "echo"), True, True),
    (DEP, "alice", None, "warmup", ("alice", "echo"), False, True),
    (INV_DEP, "alice", None, "deploy", ("bob", "echo"), True, False),
    (INV_DEP, "alice", None, "delete", ("bob", "echo"), True, False),
    (INV_DEP, "alice", None, "warmup", ("bob", "echo"), True, False),
    (INV, "alice", None, "deploy", ("alice", "echo"), True, False),
    (INV, "alice", None, "warmup", ("alice", "echo"), True, False),
    (INV_DEP, None, None, "deploy", ("alice", "echo"), True, False),  # an owner-less key owns nothing
    (INV_DEP, None, None, "delete", ("None", "echo"), True, False),
    # admin: key management, and every action on every chute
    (ADM, None, None, "admin", None, False, True),
    (INV_DEP, "alice", None, "admin", None, False, False),
    (ADM, None, None, "invoke", ("bob", "echo"), False, True),
    (ADM, None, None, "delete", ("bob", "echo"), False, True),
    (ADM, "alice", None, "deploy", ("bob", "echo"), False, True),
    # the allow-list narrows every chute action, admin's included, never the admin action
    (INV_DEP, "alice", {"alice/echo"}, "invoke", ("alice", "echo"), False, True),
    (INV_DEP, "alice", {"alice/echo"}, "invoke", ("bob", "open"), True, False),
    (INV_DEP, "alice", {"alice/echo"}, "deploy", ("alice", "other"), True, False),
    (INV_DEP, "alice", set(), "invoke", ("alice", "echo"), True, False),
    (ADM, None, {"alice/echo"}, "delete", ("bob", "echo"), True, False),
    (ADM, None, set(), "admin", None, False, True),
    (INV, None, {"bob/a/b"}, "invoke", ("bob", "a/b"), True, True),  # names may hold '/'
    # a chute action needs a chute
    (ADM, None, None, "invoke", None, True, False),
])
def test_may(scopes, owner, chutes, action, chute, public, allowed):
    chute_owner, chute_name = chute if chute is not None else (None, None)
    assert may(scopes, owner, chutes, action, chute_owner, chute_name, chute_public=public) is allowed


def test_may_refuses_an_unknown_action_loudly():
    with pytest.raises(ValueError, match="unknown action 'publish'"):
        may(INV_DEP, "alice", None, "publish", "alice", "echo")


def test_a_chute_is_private_unless_said_public():
    assert may(INV, None, None, "invoke", "bob", "echo") is False


@pytest.mark.parametrize("stored, admin_flag, expected", [
    ('["invoke"]', False, INV),
    ('["invoke", "admin"]', True, INV | ADM),
    ('["invoke"]', True, INV | ADM),  # promoted by a replica that only knows the admin flag
    ('["deploy", "future-scope"]', False, DEP),
    (None, False, INV),
    ("", True, INV | ADM),
    ("[]", False, frozenset()),
])
def test_key_scopes_read_the_column_and_the_admin_flag(stored, admin_flag, expected):
    assert key_scopes(stored, admin_flag) == expected


def test_scopes_json_and_key_chutes():
    assert json.loads(scopes_json(["admin", " invoke", "invoke"])) == ["invoke", "admin"]
    with pytest.raises(ScopeError, match="unknown scope"):
        scopes_json(["invoke", "root"])
    assert key_chutes(None) is None
    assert key_chutes('["alice/echo", "bob/a/b"]') == {"alice/echo", "bob/a/b"}
