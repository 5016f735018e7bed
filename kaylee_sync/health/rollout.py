"""The rollout report (``scheduler/rollouts/<name>``) as a type, and how to judge it.

The scheduler writes one report per unit after each pass that changed something; people
and scripts read it through ``kaylee ls``, ``kaylee run --wait``, ``kaylee-sync status``
and ``/metrics``. Before this module the report was a ``dict[str, Any]`` decoded in three
places and judged in one, so a malformed record could crash a reader (a ``null`` report
killed the scheduler thread) and "done" meant whatever the caller thought it meant.

Decoding is strict and bounded: a record that is not what the scheduler writes is a
:class:`~kaylee_sync.errors.StoreError` naming the key and the field, which each reader
turns into a note for that unit — never an exception that stops a loop. The wire format
is unchanged (compact JSON, keys sorted), so reports written before this module read the
same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from kaylee_sync.errors import StoreError

#: a count of instances beyond this is not something the scheduler wrote
MAX_INSTANCES = 1_000_000
#: unix times after this (the year 5138) are not something a clock wrote
MAX_TIME = 1e11


class Phase(StrEnum):
    """Where a unit's rollout stands; the values are what the report stores."""

    STEADY = "steady"  # every instance of the current spec runs; nothing to do
    DEPLOYING = "deploying"  # first instances of a new unit are starting
    ROLLING = "rolling"  # new replicas start one by one, old ones retire as new ones hold
    SCALING = "scaling"  # the same spec with more or fewer instances
    REPLACING = "replacing"  # a non-replica unit: the old instance stops before the new starts
    FAILED = "failed"  # a new instance did not run stably in time; the old ones kept
    DELETING = "deleting"  # the spec is gone; its fleet units are being destroyed
    DELETED = "deleted"  # nothing left (never stored: the report is removed)
    WAITING = "waiting"  # the scheduler holds back (e.g. fleet's states are not fresh yet)
    # Health-gated rollouts (a unit with a rollout: or health: section):
    CANARY = "canary"  # canaries run beside the old instances, until healthy and promoted
    PAUSED = "paused"  # an operator paused the rollout (kaylee rollout pause)
    REVERTING = "reverting"  # a deadline was missed: back to the last healthy spec
    REVERTED = "reverted"  # the last healthy spec runs again; the failed hash is pinned

    @property
    def quiet(self) -> bool:
        """True when nothing is moving: the scheduler may go back to its slow resync."""
        return self in QUIET_PHASES


QUIET_PHASES = frozenset({Phase.STEADY, Phase.FAILED, Phase.DELETED, Phase.REVERTED, Phase.PAUSED})
_PHASES = {p.value: p for p in Phase}


@dataclass(frozen=True)
class RolloutReport:
    """What the scheduler published about one unit after its last pass."""

    phase: Phase
    hash6: str = ""  # the spec's identity hash the report is about
    desired: int = 0  # instances the spec asks for
    running: int = 0  # of those, running now
    message: str = ""  # for people: what is happening and why
    failed_hash: str = ""  # a hash whose rollout failed (not retried until the spec changes)
    error: str = ""  # the fleet error that stopped the last step ("" if none)
    created: Mapping[str, float] = field(default_factory=dict)
    """Pending fleet units → when they were created (unix time), carried across failovers."""
    updated: float | None = None  # unix time of the write; not part of the content
    # Health-gated rollouts: kept here so that a new leader knows them (issue 13).
    healthy: int = 0  # instances of this spec healthy (running and passing their checks)
    started: float | None = None  # unix time the rollout of hash6 began (progressDeadline)
    promoted: bool = False  # the canaries of hash6 were promoted (automatically or by hand)
    stable_spec: str = ""  # the last healthy spec's JSON: what a revert brings back
    stable_generation: int = 0  # and its restart generation (part of its hash)

    def same_content(self, other: RolloutReport | None) -> bool:
        """Equal but for ``updated``: the scheduler rewrites a report only when this is False."""
        return other is not None and replace(self, updated=None) == replace(other, updated=None)

    def as_dict(self) -> dict[str, Any]:
        """The report as the JSON data that is stored (and shown by ``kaylee ls --json``)."""
        doc: dict[str, Any] = {
            "phase": self.phase.value,
            "hash6": self.hash6,
            "desired": self.desired,
            "running": self.running,
            "message": self.message,
            "failed_hash": self.failed_hash,
            "created": dict(self.created),
            "error": self.error,
        }
        if self.updated is not None:
            doc["updated"] = self.updated
        # Written only when set, so that reports of units without a policy stay as they were.
        for name, value in (
            ("healthy", self.healthy),
            ("started", self.started),
            ("promoted", self.promoted),
            ("stable_spec", self.stable_spec),
            ("stable_generation", self.stable_generation),
        ):
            if value:
                doc[name] = value
        return doc

    def is_about(self, is_identity: Callable[[str], bool], desired: int) -> bool:
        """True when the report speaks of this spec (its hash and instance count)."""
        return is_identity(self.hash6) and self.desired == desired


def encode_report(report: RolloutReport) -> str:
    return json.dumps(report.as_dict(), sort_keys=True)


def decode_report(value: bytes | str, key: str) -> RolloutReport:
    """The report stored at ``key``; StoreError naming the key and field if it is not one."""
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise StoreError(f"{key}: not a rollout report (not JSON)") from None
    if not isinstance(doc, dict):
        raise StoreError(f"{key}: not a rollout report (expected a JSON object)")
    raw = doc.get("phase")
    if not isinstance(raw, str) or raw not in _PHASES:
        raise StoreError(f"{key}: phase: unknown phase {_show(raw)}")
    phase = _PHASES[raw]
    created = doc.get("created")
    created = {} if created is None else created
    if not isinstance(created, dict):
        raise StoreError(f"{key}: created: expected an object")
    return RolloutReport(
        phase=phase,
        hash6=_text(doc, "hash6", key),
        desired=_count(doc, "desired", key),
        running=_count(doc, "running", key),
        message=_text(doc, "message", key),
        failed_hash=_text(doc, "failed_hash", key),
        error=_text(doc, "error", key),
        created={str(n): _time(t, f"{key}: created.{n}") for n, t in created.items()},
        updated=_time(doc["updated"], f"{key}: updated") if "updated" in doc else None,
        healthy=_count(doc, "healthy", key),
        started=_time(doc["started"], f"{key}: started") if doc.get("started") else None,
        promoted=_flag(doc, "promoted", key),
        stable_spec=_text(doc, "stable_spec", key),
        stable_generation=_count(doc, "stable_generation", key),
    )


def _flag(doc: Mapping[str, Any], name: str, key: str) -> bool:
    value = doc.get(name, False)
    if not isinstance(value, bool):
        raise StoreError(f"{key}: {name}: expected true or false, got {_show(value)}")
    return value


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _text(doc: Mapping[str, Any], name: str, key: str) -> str:
    value = doc.get(name) or ""
    if not isinstance(value, str):
        raise StoreError(f"{key}: {name}: expected a string, got {_show(value)}")
    return value


def _count(doc: Mapping[str, Any], name: str, key: str) -> int:
    value = doc.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INSTANCES:
        raise StoreError(f"{key}: {name}: expected a count of instances, got {_show(value)}")
    return value


def _time(value: object, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_TIME
    ):
        raise StoreError(f"{where}: expected a unix time, got {_show(value)}")
    return float(value)


# -- the judgement ---------------------------------------------------------------------


class Verdict(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True)
class FleetTally:
    """What fleet shows of a unit: instances on the new hash, of those running, and others."""

    new_total: int
    new_running: int
    old: int


def judge(
    report: RolloutReport | None,
    *,
    is_identity: Callable[[str], bool],
    desired: int,
    fleet: FleetTally | None = None,
) -> Judgement:
    """Done, failed or still pending — for the spec whose hashes ``is_identity`` accepts.

    - **done**: the report is about this spec, says steady with every instance running,
      and fleet (when it was read) shows exactly those instances, all running, no old one.
      The scheduler retires an old replica only once a new one has run for ``--stable``
      seconds, so a finished rolling update has nothing but stable replicas.
    - **failed**: the report says the rollout of this spec's hash failed. A first deploy
      that never ran reports ``failed`` for the current hash with no ``failed_hash`` (it is
      not sticky: it turns steady once the instances run).
    A report about another spec (written before this one was seen) counts for nothing.
    """
    if report is None or not report.is_about(is_identity, desired):
        return Judgement(Verdict.PENDING, "waiting for the scheduler")
    if report.phase in (Phase.FAILED, Phase.REVERTING, Phase.REVERTED) and is_identity(
        report.failed_hash or report.hash6
    ):
        return Judgement(Verdict.FAILED, report.message or f"rollout of {report.hash6} failed")
    fleet_agrees = fleet is None or (
        fleet.new_total == fleet.new_running == desired and not fleet.old
    )
    if report.phase is Phase.STEADY and report.running == desired and fleet_agrees:
        return Judgement(Verdict.DONE)
    return Judgement(Verdict.PENDING, report.phase.value)


@dataclass
class StuckWatch:
    """Stuck is "no change for too long" of something that should change: no leader at
    all, or the scheduler reporting the same error pass after pass. Fed one observation at
    a time with the caller's clock, so it is tested without waiting."""

    leaderless_grace: float
    error_grace: float
    _leaderless_since: float | None = None
    _error_since: tuple[str, float] | None = None

    def observe(self, now: float, *, leaderless: bool, error: str) -> Stuck | None:
        """Whether (and why) the rollout is stuck as of ``now``."""
        self._leaderless_since = (self._leaderless_since or now) if leaderless else None
        if self._leaderless_since is not None:
            idle = now - self._leaderless_since
            if idle >= self.leaderless_grace:
                return Stuck(f"no kaylee server is leading (none for {idle:.0f} s)", True)
        if not error:
            self._error_since = None
        elif self._error_since is None or self._error_since[0] != error:
            self._error_since = (error, now)
        elif now - self._error_since[1] >= self.error_grace:
            return Stuck(f"the scheduler keeps failing: {error}", False)
        return None


@dataclass(frozen=True)
class Stuck:
    reason: str
    leaderless: bool  # nobody leads (rather than: the leader keeps failing)
