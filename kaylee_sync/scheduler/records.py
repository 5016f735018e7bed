"""Decoding what the scheduler reads from etcd: every value checked, a bad one skipped.

The scheduler runs unattended for months, reading keys that anything with etcd access
can write (``etcdctl put``, an old Kaylee, a half-written record). One malformed value —
a ``null`` rollout record, a restart generation of ``"x"``, a creation time of ``NaN`` —
must cost that one record (logged once, then ignored), never the scheduler thread.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

log = logging.getLogger(__name__)

#: restart generations are bumped one at a time; anything beyond this is not one
MAX_GENERATION = 2**53


class Complaints:
    """Logs each bad record once per (key, problem), so a bad key does not flood the log."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def __call__(self, key: str, problem: str) -> None:
        if (key, problem) not in self._seen:
            self._seen.add((key, problem))
            log.error("%s: %s; ignored", key, problem)


def decode_generation(key: str, raw: bytes, complain: Complaints) -> int | None:
    """A restart generation: a whole number in [0, 2**53]; None (logged) otherwise."""
    try:
        value = int(raw.decode("ascii").strip() or "0")
    except (UnicodeDecodeError, ValueError):
        complain(key, "not a whole number")
        return None
    if not 0 <= value <= MAX_GENERATION:
        complain(key, f"restart generation {value} is out of range")
        return None
    return value


def decode_report(key: str, raw: bytes, complain: Complaints) -> dict[str, Any] | None:
    """A rollout report as the runner wrote it; None (logged) if it is not an object.

    Only the fields the scheduler relies on are checked and normalised: ``failed_hash``
    (a string) and ``created`` (unit name -> finite wall-clock seconds); anything else in
    the record is kept as it is, for comparison with the next report.
    """
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        complain(key, "not JSON")
        return None
    if not isinstance(value, dict):
        complain(key, f"a rollout record must be a JSON object, not {type(value).__name__}")
        return None
    failed = value.get("failed_hash", "")
    if not isinstance(failed, str):
        complain(key, "failed_hash is not a string")
        value["failed_hash"] = ""
    created = value.get("created")
    if created is not None and not isinstance(created, dict):
        complain(key, "created is not an object")
        created = None
    value["created"] = {
        str(name): float(at)
        for name, at in (created or {}).items()
        if isinstance(at, int | float) and not isinstance(at, bool) and math.isfinite(at)
    }
    return value
