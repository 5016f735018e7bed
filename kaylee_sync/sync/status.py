"""``sync/status``: what the last sync attempt did, and the last one that worked.

Operators (``kaylee-sync status``, the daemon's health output) read it to answer "is
the cluster following Git, and if not, since when and why?". So a failed attempt keeps
the previous success (:func:`record_attempt`): the answer to "since when" survives any
number of failures.

Value: compact JSON ``{"v":1,"attempt":{…},"last_success":{…}|null}``, each record
holding time, commit, ok, error, counts, problems, prune_refused, prune_hold (the
refusal in force, or null), prune_overridden, prune_released, duration_seconds and
leader. The error is stored as one line with any URL userinfo removed, and at most
:data:`MAX_PROBLEMS` problems are stored (the rest are counted in ``problems_omitted``)
so that a repository full of broken files cannot make the value too big for etcd.

Unlike the inventory, a malformed status is not an error: it is a report that only sync
writes, so :func:`read_status` logs it and returns None, and the next attempt replaces it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kaylee_sync.bounds import check_duration, check_time, load_json
from kaylee_sync.plan.model import PruneHold
from kaylee_sync.plan.prune import hold_from_doc, hold_to_doc
from kaylee_sync.secrets import redact
from kaylee_sync.store import Compare, Op, Store, keys

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_PROBLEMS = 500
MAX_ERROR_CHARS = 1000


Problem = Mapping[str, str | int]  # {"file", "line", "field", "reason"}


@dataclass(frozen=True)
class AttemptRecord:
    """One sync attempt (successful or not)."""

    time: float  # unix seconds, when it ended
    commit: str  # the commit synced ("" when not even that was known)
    ok: bool
    error: str = ""  # one line, no secrets
    counts: Mapping[str, int] = field(default_factory=dict)  # by Action value
    problems: Sequence[Problem] = ()
    prune_refused: str = ""
    prune_hold: PruneHold | None = None  # the refusal in force after the attempt
    prune_overridden: str = ""  # the refusal --allow-prune lifted
    prune_released: str = ""  # why a hold in force ended
    duration_seconds: float = 0.0
    leader: str = ""
    problems_omitted: int = 0  # problems beyond MAX_PROBLEMS, not stored


@dataclass(frozen=True)
class SyncStatus:
    attempt: AttemptRecord
    last_success: AttemptRecord | None = None


def record_attempt(previous: SyncStatus | None, attempt: AttemptRecord) -> SyncStatus:
    """The status after ``attempt``: a failure keeps the previous last success."""
    if attempt.ok:
        return SyncStatus(attempt=attempt, last_success=attempt)
    return SyncStatus(attempt=attempt, last_success=previous.last_success if previous else None)


def one_line_error(text: str) -> str:
    """``text`` as status stores it: one line, secrets and URL userinfo masked, bounded."""
    flat = " ".join(text.split())
    flat = redact(flat)
    return flat if len(flat) <= MAX_ERROR_CHARS else flat[: MAX_ERROR_CHARS - 1] + "…"


def encode_status(status: SyncStatus) -> str:
    doc = {
        "v": FORMAT_VERSION,
        "attempt": _record_doc(status.attempt),
        "last_success": None if status.last_success is None else _record_doc(status.last_success),
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _record_doc(r: AttemptRecord) -> dict[str, Any]:
    kept = [dict(p) for p in r.problems[:MAX_PROBLEMS]]
    return {
        "time": r.time,
        "commit": r.commit,
        "ok": r.ok,
        "error": one_line_error(r.error),
        "counts": dict(sorted(r.counts.items())),
        "problems": kept,
        "problems_omitted": r.problems_omitted + len(r.problems) - len(kept),
        "prune_refused": one_line_error(r.prune_refused),
        "prune_hold": None if r.prune_hold is None else hold_to_doc(r.prune_hold),
        "prune_overridden": one_line_error(r.prune_overridden),
        "prune_released": one_line_error(r.prune_released),
        "duration_seconds": r.duration_seconds,
        "leader": r.leader,
    }


def decode_status(value: bytes) -> SyncStatus:
    """The status in ``value``; ValueError if it is not one."""
    doc = load_json(value)
    if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
        raise ValueError("not a version 1 status object")
    last = doc.get("last_success")
    return SyncStatus(
        attempt=_record(doc.get("attempt")),
        last_success=None if last is None else _record(last),
    )


def _record(doc: object) -> AttemptRecord:
    if not isinstance(doc, dict):
        raise ValueError("an attempt is not an object")
    counts = doc.get("counts", {})
    problems = doc.get("problems", [])
    if not isinstance(counts, dict) or not all(_is_count(n) for n in counts.values()):
        raise ValueError("counts must map actions to integers")
    if not isinstance(problems, list) or not all(_is_problem(p) for p in problems):
        raise ValueError("problems must be a list of {file, line, field, reason} objects")
    if not isinstance(doc.get("ok"), bool):
        raise ValueError("ok must be true or false")
    if not _is_count(doc.get("problems_omitted", 0)):
        raise ValueError("problems_omitted must be a non-negative integer")
    return AttemptRecord(
        time=_checked("time", check_time, doc["time"]),
        commit=str(doc["commit"]),
        ok=doc["ok"],
        error=str(doc.get("error", "")),
        counts=counts,
        problems=tuple(problems),
        prune_refused=str(doc.get("prune_refused", "")),
        prune_hold=None if doc.get("prune_hold") is None else hold_from_doc(doc["prune_hold"]),
        prune_overridden=str(doc.get("prune_overridden", "")),
        prune_released=str(doc.get("prune_released", "")),
        duration_seconds=_checked(
            "duration_seconds", check_duration, doc.get("duration_seconds", 0.0)
        ),
        leader=str(doc.get("leader", "")),
        problems_omitted=doc.get("problems_omitted", 0),
    )


def _checked(field: str, check: Callable[[object], float], value: object) -> float:
    """``check(value)``, its ValueError naming ``field`` (times and durations are bounded
    here so that a stored 1e300 or NaN is a malformed status, not a crash where it is shown)."""
    try:
        return check(value)
    except ValueError as exc:
        raise ValueError(f"{field} {exc}") from None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_problem(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(value.get(f), str | int) for f in ("file", "line", "field", "reason")
    )


def write_status(store: Store, status: SyncStatus, *, fence: Compare | None) -> None:
    """Write ``sync/status``; with ``fence`` only if it holds (ConflictError otherwise)."""
    store.apply_batched([Op.put(keys.STATUS, encode_status(status))], fence)


def read_status(store: Store) -> SyncStatus | None:
    """The stored status; None when there is none, or it is malformed (logged)."""
    status, problem = read_status_checked(store)
    if problem:
        log.warning("%s; the next sync attempt replaces it", problem)
    return status


def read_status_checked(store: Store) -> tuple[SyncStatus | None, str]:
    """The stored status and "" — or None and one line saying why it is malformed."""
    stored = store.get(keys.STATUS)
    if stored is None:
        return None, ""
    try:
        return decode_status(stored.value), ""
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        reason = f"field {exc} missing" if isinstance(exc, KeyError) else str(exc)
        return None, f"{keys.STATUS} is malformed ({reason})"
