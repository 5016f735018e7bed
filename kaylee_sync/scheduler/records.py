"""Decoding what the scheduler reads from etcd: every value checked, a bad one skipped.

The scheduler runs unattended for months, reading keys that anything with etcd access
can write (``etcdctl put``, an old Kaylee, a half-written record). One malformed value —
a ``null`` rollout record, a restart generation of ``"x"``, a creation time of ``NaN`` —
must cost that one record (logged once, then ignored), never the scheduler thread.
Rollout reports are decoded by :func:`kaylee_sync.health.decode_report`, the one decoder
every reader of them shares; a failure there is logged through :class:`Complaints` too.
"""

from __future__ import annotations

import logging

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
