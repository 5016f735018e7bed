"""What the leader tells the world about each commit: the judgement, separate from the posting.

The daemon hands :class:`Feedback` two facts it already has — the result of each sync
and the scheduler's decisions after each pass — and Feedback decides what changed:

- a commit's state on the Git host (:class:`~.commitstatus.CommitState`): a successful
  sync makes it *synced*; it is *rolled out* once the scheduler reports every unit the
  commit created or changed ``steady`` **with the commit's spec** (the fleet unit hash
  the plan predicted — a pass that has not seen the new spec yet proves nothing), and
  *failed* when the commit was refused (signature, invalid files, prune guard) or a
  rollout of one of its units failed; a sync held back by a transient error leaves it
  *pending*.
- notifications (:data:`~.webhook.PHASES`), each sent once per distinct occurrence, not
  at every poll: the same failure of the same commit is reported once, a unit's rollout
  events follow the changes of its phase.

Both are only queued here (:class:`~.outbox.Outbox`): calling Feedback costs the sync
loop and the scheduler a few dictionary operations, whatever the receivers do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from kaylee_sync.feedback.commitstatus import CommitState, CommitStatuses, StatusSettings
from kaylee_sync.feedback.outbox import Outbox, OutboxSettings
from kaylee_sync.feedback.webhook import Event, Webhook, WebhookSettings
from kaylee_sync.plan.model import Action, Plan

log = logging.getLogger(__name__)

_MOVING = frozenset({"deploying", "rolling", "scaling", "replacing"})


class UnitDecision(Protocol):
    """What Feedback reads of the scheduler's ``Decision`` (kept structural: no import)."""

    @property
    def unit(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def hash6(self) -> str: ...


#: commit status posts per second at most, per cluster (30 a minute; bursts of 10)
STATUS_RATE = 0.5


@dataclass(frozen=True)
class FeedbackSettings:
    status: StatusSettings | None = None
    """Commit statuses to the Git host; None: none posted."""
    status_outbox: OutboxSettings = field(default_factory=lambda: OutboxSettings(rate=STATUS_RATE))
    """Default 0.5 posts/s (burst 10): a tenth of GitHub's 5,000 requests an hour."""
    webhook: WebhookSettings | None = None
    """Notifications; None: none sent."""
    webhook_outbox: OutboxSettings = field(default_factory=OutboxSettings)


class Feedback:
    def __init__(
        self,
        settings: FeedbackSettings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = s = settings or FeedbackSettings()
        self.statuses = self.webhook = None
        if s.status is not None:
            outbox = Outbox("commit-status", s.status_outbox, transport=transport)
            self.statuses = CommitStatuses(s.status, outbox)
        if s.webhook is not None:
            self.webhook = Webhook(
                s.webhook, Outbox("notify", s.webhook_outbox, transport=transport)
            )
        self._synced = ""  # the last commit synced (the "from" of the next)
        self._expected: dict[str, str] = {}  # unit → hash6 the synced commit rolls out
        self._phases: dict[str, str] | None = None  # None: no pass seen yet (baseline)
        self._steady_hash: dict[str, str] = {}
        self._failure: tuple[str, ...] = ()  # the failure last reported
        self._complaints: set[tuple[str, ...]] = set()  # the problems of the last success
        self._expired: frozenset[str] = frozenset()
        # sync_result comes from the sync loop, rollout from the scheduler's thread
        self._lock = threading.Lock()

    # -- the two facts ---------------------------------------------------------------------

    def sync_result(
        self, commit: str, *, ok: bool, error: str = "", stage: str = "", plan: Plan | None = None
    ) -> None:
        """One sync attempt's outcome (call it only as leader, not for a deposed attempt)."""
        with self._lock:
            self._sync_result(commit, ok, error, stage, plan)

    def rollout(self, decisions: Iterable[UnitDecision]) -> None:
        """The scheduler's decisions of one complete pass as leader."""
        with self._lock:
            self._rollout(list(decisions))

    def became_leader(self) -> None:
        """Forget the phases seen in an earlier term: the first pass is a new baseline."""
        with self._lock:
            self._phases = None

    def close(self, drain: float = 5.0) -> None:
        for sink in (self.statuses, self.webhook):
            if sink is not None:
                sink.outbox.close(drain)

    # -- judgements ------------------------------------------------------------------------

    def _sync_result(
        self, commit: str, ok: bool, error: str, stage: str, plan: Plan | None
    ) -> None:
        if not ok:
            refused = stage == "signature"
            phase = "commit-refused" if refused else "sync-failed"
            failure = (phase, commit, error)
            if failure != self._failure:  # the same failure at every poll: reported once
                self._failure = failure
                self._send(Event(phase, error, "", commit, self._synced, commit))
            state = CommitState.FAILED if refused else CommitState.PENDING
            self._status(commit, state, error if refused else f"not synced yet: {error}")
            return
        if plan is None:
            return
        complaints: set[tuple[str, ...]] = set()
        moved = (self._synced, commit) if commit != self._synced else ("", "")
        for problem in plan.problems:
            reason = "; ".join(str(i) for i in problem.issues)
            key: tuple[str, ...] = ("invalid-file", problem.path, problem.blob or "", reason)
            complaints.add(key)
            if key not in self._complaints:
                event = Event("invalid-file", reason, problem.name or "", commit, *moved)
                self._send(event)
        if plan.prune_refused:
            key = ("prune-refused", commit, plan.prune_refused)
            complaints.add(key)
            if key not in self._complaints:
                self._send(Event("prune-refused", plan.prune_refused, "", commit, *moved))
        self._complaints = complaints
        self._failure = ()  # a success ends the failure: the next one is news
        for name in sorted(set(plan.expired_suspensions) - self._expired):
            self._send(Event("suspension-expired", "the suspension's time ran out", name, commit))
        self._expired = frozenset(plan.expired_suspensions)
        if plan.problems or plan.prune_refused:
            what = f"{len(plan.problems)} invalid unit file(s)" if plan.problems else ""
            why = what or f"prune refused: {plan.prune_refused}"
            self._status(commit, CommitState.FAILED, f"synced in part; {why}")
        elif commit != self._synced:
            self._expected = _expected_hashes(plan)
            if self._expected:
                self._status(commit, CommitState.SYNCED, "in etcd; rolling out")
            else:
                self._status(commit, CommitState.ROLLED_OUT, "in etcd; no unit to roll out")
        self._synced = commit

    def _rollout(self, decisions: list[UnitDecision]) -> None:
        phases = {d.unit: d.phase for d in decisions}
        hashes = {d.unit: d.hash6 for d in decisions}
        if self._phases is not None:
            for unit, phase in sorted(phases.items()):
                self._unit_moved(unit, self._phases.get(unit), phase, hashes[unit])
        for unit, phase in phases.items():
            if phase == "steady":
                self._steady_hash[unit] = hashes[unit]
        self._phases = phases
        self._judge_commit(phases, hashes)

    def _unit_moved(self, unit: str, old: str | None, new: str, hash6: str) -> None:
        commit = self._synced
        if new == old:
            return
        if new in _MOVING and old not in _MOVING:
            self._send(Event("rollout-started", f"{old or 'new'} → {new}", unit, commit))
        elif new == "failed":
            self._send(Event("rollout-failed", f"{old or 'new'} → failed", unit, commit))
        elif new == "steady" and old == "failed":
            back = self._steady_hash.get(unit) == hash6
            phase = "rollout-reverted" if back else "rollout-done"
            self._send(Event(phase, f"failed → steady ({hash6})", unit, commit))
        elif new == "steady" and old in _MOVING:
            self._send(Event("rollout-done", f"{old} → steady ({hash6})", unit, commit))

    def _judge_commit(self, phases: Mapping[str, str], hashes: Mapping[str, str]) -> None:
        if not self._expected:
            return
        failed = sorted(u for u in self._expected if phases.get(u) == "failed")
        if failed:
            self._status(self._synced, CommitState.FAILED, f"rollout failed: {', '.join(failed)}")
            return
        done = all(
            phases.get(u) == "steady" and (not want or hashes.get(u) == want)
            for u, want in self._expected.items()
        )
        if done:
            self._status(self._synced, CommitState.ROLLED_OUT, "every changed unit runs it")
            self._expected = {}

    # -- sending ---------------------------------------------------------------------------

    def _status(self, commit: str, state: CommitState, description: str) -> None:
        if self.statuses is not None:
            self.statuses.set(commit, state, description)

    def _send(self, event: Event) -> None:
        if self.webhook is not None:
            self.webhook.send(event)


def _expected_hashes(plan: Plan) -> dict[str, str]:
    """unit → the hash6 its new fleet units carry ("" when the plan could not tell)."""
    out: dict[str, str] = {}
    for entry in plan.entries:
        if entry.action in (Action.CREATE, Action.UPDATE):
            names = entry.effect.new_units if entry.effect is not None else ()
            parts = names[0].split(":") if names else []
            out[entry.name] = parts[2] if len(parts) > 3 else ""
    return out
