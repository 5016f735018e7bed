"""The layout of the ``/kaylee2`` keyspace, and the one check that keeps keys inside it.

Every key the store writes is built from a *relative* key such as ``units/web`` and the
configured prefix. :func:`absolute_key` is the single place where a relative key is
checked: a unit name arriving from a YAML file, a CLI argument or a webhook must never
produce a key outside the prefix, nor a key that would be read back as a different unit.

Layout (relative to the prefix, default ``/kaylee2``)::

    units/<name>                 UnitSpec JSON (the original Kaylee's format)
    master                       leader id, bound to the leader's lease
    sync/inventory               JSON: repo, branch, path, commit of the last sync
    sync/owned/<xx>              JSON: the managed units whose name hashes to <xx>
                                 (00-ff), and their files: the inventory's shards
    sync/status                  JSON: last attempt / last success, per-file errors
    sync/suspended/<name>        JSON: who, when, why — git sync leaves <name> alone
    sync/prune-hold              JSON: deletions the prune guard refused, held until released
    sync/request                 JSON: an operator's "sync now" (``kaylee-sync sync``),
                                 acknowledged by the leader that picked it up
    sync/view-mark               a token the leader's sync writes and waits to see in
                                 its own watch: every change before it has then arrived
    restart/<name>               restart generation (a decimal integer)
    policy/<name>                JSON: the unit file's rollout: and health: sections, kept
                                 out of units/<name> (same JSON and hash as the original)
    rollout/<name>               JSON: operators' pause / promote (kaylee rollout …)
    scheduler/rollouts/<name>    JSON: the scheduler's rollout state for one unit
                                 (phase, target spec hash, started, last error); it lets
                                 a new leader report — and resume — a rollout in progress
"""

from __future__ import annotations

import re

from kaylee_sync.errors import UsageError

UNITS = "units/"
MASTER = "master"
INVENTORY = "sync/inventory"
OWNED = "sync/owned/"
STATUS = "sync/status"
SYNC_REQUEST = "sync/request"
VIEW_MARK = "sync/view-mark"  # a sync's barrier in its own watch (sync/view.py)
SUSPENDED = "sync/suspended/"
PRUNE_HOLD = "sync/prune-hold"
RESTART = "restart/"
ROLLOUTS = "scheduler/rollouts/"
POLICY = "policy/"
CONTROL = "rollout/"

# Directories whose children are named by a unit name: exactly one segment below them.
NAMED_AREAS = (UNITS, SUSPENDED, RESTART, ROLLOUTS, POLICY, CONTROL)


def owned_key(shard: str) -> str:
    return OWNED + shard


def unit_key(name: str) -> str:
    return UNITS + name


def suspended_key(name: str) -> str:
    return SUSPENDED + name


def restart_key(name: str) -> str:
    return RESTART + name


def rollout_key(name: str) -> str:
    return ROLLOUTS + name


def policy_key(name: str) -> str:
    return POLICY + name


def control_key(name: str) -> str:
    return CONTROL + name


_CONTROL = re.compile("[\x00-\x1f\x7f]")  # one C scan: this runs twice per op of an apply


def absolute_key(prefix: str, relative: str, *, is_prefix: bool = False) -> str:
    """``prefix + "/" + relative``, after checking that ``relative`` stays inside the prefix.

    Refused (UsageError): an absolute key, empty / "." / ".." segments, control characters,
    and — below a named area such as ``units/`` — anything but a single segment, so that a
    unit called ``a/b`` or ``../master`` cannot be written. etcd keys are not paths, but
    other tools (and readers of ``etcdctl get --prefix`` output) treat them as such.
    With ``is_prefix`` the key may be empty (the whole keyspace) or end with "/".
    """
    if relative.startswith("/"):
        raise UsageError(f"key {relative!r} must be relative to the etcd prefix")
    if _CONTROL.search(relative):
        raise UsageError(f"key {relative!r} contains a control character")
    body = relative[:-1] if is_prefix and relative.endswith("/") else relative
    if body or not is_prefix:
        segments = body.split("/")
        if any(seg in ("", ".", "..") for seg in segments):
            raise UsageError(f"key {relative!r} has an empty, '.' or '..' segment")
        for area in NAMED_AREAS:
            if relative.startswith(area) and len(segments) > area.count("/") + 1:
                name = relative[len(area) :]
                raise UsageError(f"name {name!r} must not contain '/'")
    return f"{prefix}/{relative}"


def relative_key(prefix: str, key: bytes) -> str:
    """The relative form of an absolute key read from etcd (the inverse of absolute_key)."""
    text = key.decode("utf-8", errors="replace")
    start = prefix + "/"
    return text[len(start) :] if text.startswith(start) else text
