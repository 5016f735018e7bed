"""``sync/suspended/<name>``: an operator's "Git, leave this unit alone".

An emergency fix (``kaylee run --override``) or a deliberate pause writes a suspension;
sync then neither updates nor prunes the unit until the suspension is removed
(``kaylee-sync resume``) or its ``until`` time has passed. A suspension records who did
it and why, because the next person to look at a unit that ignores Git needs to know.

Value: compact JSON ``{"who":…,"reason":…,"since":<unix s>,"until":<unix s>|null}``.
A malformed value is an error (StoreError naming the key), never ignored: ignoring it
would let Git overwrite the emergency fix it protects. :func:`resume` still removes a
malformed suspension, so that an operator always has a way out.
"""

from __future__ import annotations

import json
import logging

from kaylee_sync.bounds import check_time, load_json
from kaylee_sync.errors import ConflictError, StoreError, UsageError
from kaylee_sync.plan.model import Suspension
from kaylee_sync.store import Compare, Op, Store, keys

log = logging.getLogger(__name__)

# resume() deletes only what it read; a concurrent rewrite makes it read again.
_MAX_ATTEMPTS = 10


def encode_suspension(s: Suspension) -> str:
    doc = {"who": s.who, "reason": s.reason, "since": s.since, "until": s.until}
    # allow_nan=False: never write the Infinity/NaN that JSON has no word for.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_suspension(value: bytes, key: str, mod_revision: int = 0) -> Suspension:
    """The suspension stored at ``key`` (``sync/suspended/<name>``); StoreError if malformed."""
    name = key.removeprefix(keys.SUSPENDED)
    try:
        who, reason, since, until = _fields(value)
    except ValueError as exc:
        raise StoreError(
            f"{key} is not a valid suspension ({exc}); sync stops rather than overwrite a "
            f"unit someone meant to protect — fix it, or remove it with "
            f"'kaylee-sync resume {name}'"
        ) from None
    return Suspension(name, who, reason, since, until, mod_revision)


def _fields(value: bytes) -> tuple[str, str, float, float | None]:
    doc = load_json(value)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    who, reason, since, until = (doc.get(f) for f in ("who", "reason", "since", "until"))
    if not isinstance(who, str) or not isinstance(reason, str):
        raise ValueError("who and reason must be strings")
    return who, reason, _time("since", since), None if until is None else _time("until", until)


def _time(field: str, value: object) -> float:
    # Range-checked here, where the key is known: an "until" of 1e12 or Infinity would
    # otherwise pass and make every daemon fail when it formats or compares it.
    try:
        return check_time(value)
    except ValueError as exc:
        raise ValueError(f"{field} {exc}") from None


def suspend(
    store: Store, name: str, *, who: str, reason: str, until: float | None, now: float
) -> Suspension:
    """Suspend Git sync for ``name`` (replacing any suspension it already has).

    ``who`` and ``reason`` are required: a unit that ignores Git must say why. The unit
    need not exist yet (a unit can be suspended before Git creates it).
    """
    op, draft = suspension_op(name, who=who, reason=reason, until=until, now=now)
    revision = store.put(op.key, op.value)
    log.info("suspended Git sync of %s (%s: %s)", name, draft.who, draft.reason)
    return Suspension(draft.name, draft.who, draft.reason, draft.since, draft.until, revision)


def suspension_op(
    name: str, *, who: str, reason: str, until: float | None, now: float
) -> tuple[Op, Suspension]:
    """The write that suspends ``name``, checked (for a caller's own transaction)."""
    if not reason.strip():
        raise UsageError(f"suspending {name}: a reason is required")
    if not who.strip():
        raise UsageError(f"suspending {name}: who is suspending it is required")
    if until is not None and until <= now:
        raise UsageError(f"suspending {name}: the end time is not in the future")
    for field, value in (("start", now), ("end", until)):
        try:
            if value is not None:
                check_time(value)
        except ValueError as exc:
            raise UsageError(f"suspending {name}: the {field} time {exc}") from None
    draft = Suspension(name=name, who=who.strip(), reason=reason.strip(), since=now, until=until)
    return Op.put(keys.suspended_key(name), encode_suspension(draft)), draft


def resume(store: Store, name: str) -> Suspension | None:
    """Remove ``name``'s suspension; what was removed, or None when there was none.

    A malformed suspension is removed too (and returned with an empty ``who`` and a
    reason saying so): it is the operator's way out of the error it causes.
    """
    key = keys.suspended_key(name)
    for _ in range(_MAX_ATTEMPTS):
        stored = store.get(key)
        if stored is None:
            return None
        try:
            removed = decode_suspension(stored.value, key, stored.mod_revision)
        except StoreError:
            removed = Suspension(name, "", "(malformed suspension removed)", 0.0)
        guard = Compare.mod_revision_equals(key, stored.mod_revision)
        if store.txn([guard], [Op.delete(key)]):
            log.info("resumed Git sync of %s", name)
            return removed
    raise ConflictError(f"could not remove {key}: it kept changing while being removed")


def list_suspensions(store: Store) -> dict[str, Suspension]:
    """Every suspension by unit name (StoreError naming the key if one is malformed)."""
    found, malformed = read_suspensions(store)
    if malformed:
        raise malformed[0]
    return found


def read_suspensions(store: Store) -> tuple[dict[str, Suspension], list[StoreError]]:
    """Every well-formed suspension by unit name, and an error for each malformed one.

    For views (``kaylee-sync status``, ``kaylee ls``) that show what they can and report
    the rest; sync itself uses :func:`list_suspensions`, which stops at a bad one.
    """
    found: dict[str, Suspension] = {}
    malformed: list[StoreError] = []
    for stored in store.get_prefix(keys.SUSPENDED):
        try:
            suspension = decode_suspension(stored.value, stored.key, stored.mod_revision)
        except StoreError as exc:
            malformed.append(exc)
            continue
        found[suspension.name] = suspension
    return found, malformed
