"""``sync/prune-hold``: a refused prune, kept in etcd so that it outlives the sync.

The planner decides what the hold is (:mod:`kaylee_sync.plan.prune`); this module only
stores it. It lives in etcd rather than in the daemon's memory because the refusal must
survive a restart and a change of leader: a new leader that forgot it would judge the
deletions against the units the refused commit added, and delete them.

Value: compact JSON ``{"v":1,"since":…,"first_commit":"…","commit":"…","baseline":N,
"held":N,"reason":"…"}``. Like the inventory, a malformed hold stops sync (StoreError
naming the key) instead of being read as "no hold": that reading would release it.
"""

from __future__ import annotations

import json

from kaylee_sync.errors import StoreError
from kaylee_sync.plan.model import PruneHold
from kaylee_sync.plan.prune import hold_from_doc, hold_to_doc

FORMAT_VERSION = 1


def encode_hold(hold: PruneHold) -> str:
    return json.dumps({"v": FORMAT_VERSION, **hold_to_doc(hold)}, separators=(",", ":"))


def decode_hold(value: bytes, key: str, mod_revision: int = 0) -> PruneHold:
    """The hold stored at ``key``; StoreError naming ``key`` and the field if it is not one."""
    try:
        doc = json.loads(value.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("v") != FORMAT_VERSION:
            raise ValueError(f"unknown format version {doc.get('v')!r}")
        return hold_from_doc(doc, mod_revision)
    except (UnicodeDecodeError, ValueError) as exc:
        why = (
            "not UTF-8 JSON" if isinstance(exc, UnicodeDecodeError | json.JSONDecodeError) else exc
        )
        raise StoreError(
            f"{key} is not a valid prune hold ({why}); sync stops rather than forget which "
            "deletions the prune guard refused — restore it, or delete it to release the hold"
        ) from None
