"""Who may do what to a chute: the pure decision behind API keys' scopes, owners and chute allow-lists.

Seam: the API's authorisation. The key store reads a key's ``scopes``, ``owner`` and
``chutes`` columns (``store.api_tables.ApiKey``) through ``key_scopes``/``key_chutes``, and
every route that touches a chute asks ``may`` before acting; nothing here reads a database.

A key holds scopes:

- ``invoke``: call public chutes, and the private chutes of its own owner;
- ``deploy``: deploy (a new chute or a new revision), delete and warm up its owner's chutes;
- ``admin``: the operator: key management (the ``admin`` action) and every action on every
  chute, whoever owns it. It adds no power an admin key lacked before: it can already make
  a key of any owner with any scopes.

``chutes`` (None: every chute) narrows every chute action of any key, ``admin`` included, to
the listed ``owner/name`` chutes; it never widens anything, and the ``admin`` action itself
is not a chute action.

A key made before the registry (migration 0005) has no owner, and an owner-less key owns no
chute: it may invoke public chutes (all it could do before, when every chute was public) and,
with ``admin``, everything an admin may. It is NOT treated as owning the chutes of the
username equal to its name: key names are labels an operator picked, not verified
identities, so that reading would silently hand an old key the private chutes (and, once
given ``deploy``, the deployments) of whoever later registers that username. An operator
gives such a key an owner explicitly to let it deploy.

Existing keys keep their rights: 0005 gives them ``["invoke"]``, and ``["invoke", "admin"]``
where the ``admin`` flag is set; ``key_scopes`` also counts the flag itself, so a key made or
promoted by a replica of the previous version (which writes only the flag) keeps working.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

INVOKE, DEPLOY, ADMIN = "invoke", "deploy", "admin"
#: What a key may hold.
SCOPES = (INVOKE, DEPLOY, ADMIN)
#: What ``may`` decides: ``invoke``, ``deploy``, ``delete`` and ``warmup`` of a chute, and ``admin`` (keys).
ACTIONS = ("invoke", "deploy", "delete", "warmup", "admin")
#: The scopes of a key nobody chose any for (every key made before 0005 without the admin flag).
DEFAULT_SCOPES = (INVOKE,)
_NEEDS = {"invoke": INVOKE, "deploy": DEPLOY, "delete": DEPLOY, "warmup": DEPLOY}


class ScopeError(ValueError):
    """A scope or allow-list value is not one this store knows; the message says which."""


def chute_ref(owner: str, name: str) -> str:
    """How an allow-list names a chute: ``owner/name`` (Chutes' ``username/name``)."""
    return f"{owner}/{name}"


def scopes_json(scopes: Iterable[str]) -> str:
    """The ``api_keys.scopes`` value of ``scopes`` (validated, deduplicated, in ``SCOPES`` order)."""
    chosen = {str(scope).strip() for scope in scopes}
    unknown = sorted(chosen - set(SCOPES))
    if unknown:
        raise ScopeError(f"unknown scope(s) {', '.join(unknown)}: use {', '.join(SCOPES)}")
    return json.dumps([scope for scope in SCOPES if scope in chosen])


def key_scopes(stored: str | None, admin_flag: bool = False) -> frozenset[str]:
    """A key's scopes from its ``scopes`` column and its ``admin`` flag (an admin key is
    ``admin`` whatever the column says). None or empty text: ``DEFAULT_SCOPES``. Unknown
    names are dropped (a newer version's scope means nothing to this one)."""
    names = json.loads(stored) if stored else list(DEFAULT_SCOPES)
    scopes = {name for name in names if name in SCOPES} if isinstance(names, list) else set(DEFAULT_SCOPES)
    return frozenset(scopes | ({ADMIN} if admin_flag else set()))


def key_chutes(stored: str | None) -> frozenset[str] | None:
    """A key's chute allow-list from its ``chutes`` column: None for every chute."""
    return None if stored is None else frozenset(str(ref) for ref in json.loads(stored))


def may(key_scopes: Collection[str], key_owner: str | None, key_chutes: Collection[str] | None, action: str,
        chute_owner: str | None = None, chute_name: str | None = None, *, chute_public: bool = False) -> bool:
    """Whether a key with ``key_scopes``, ``key_owner`` and allow-list ``key_chutes`` may do
    ``action`` (one of ``ACTIONS``) to chute ``chute_owner/chute_name``, which is public when
    ``chute_public`` (the default, private, is the one that refuses more). A chute action
    without a chute owner and name is refused; an unknown action raises ``ValueError``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    admin = ADMIN in key_scopes
    if action == "admin":
        return admin
    if not chute_owner or not chute_name:
        return False
    if key_chutes is not None and chute_ref(chute_owner, chute_name) not in key_chutes:
        return False
    if admin:
        return True
    if _NEEDS[action] not in key_scopes:
        return False
    owns = key_owner is not None and key_owner == chute_owner
    return owns or (action == "invoke" and chute_public)
