"""One sync attempt: fetch → desired state → actual state → plan → apply → status.

This is the only place that strings the GitOps layers together; the daemon calls
:meth:`Syncer.sync_once` from its single worker, ``kaylee-sync --once`` calls it once,
and ``kaylee-sync plan`` calls :meth:`Syncer.plan` (no writes at all).

Safety, in the order it matters: if reading Git or etcd fails, the attempt stops before
anything is planned — nothing is pruned and nothing is written from partial data; only
``sync/status`` records the failure. Every write is fenced on ``master`` holding this
process's identity, and each update is guarded by the mod revision it was planned
against, so a deposed leader or a concurrent manual change writes nothing (the next
attempt re-plans from what is there).

An attempt stopped because this process is no longer the leader is not a failure: it is
reported as ``deposed`` (the daemon neither counts nor logs it as an error) and is not
recorded in ``sync/status`` — that key belongs to the new leader now, and the fenced
write would be refused anyway.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kaylee_sync.errors import ConflictError, KayleeError
from kaylee_sync.gcpause import collector_paused
from kaylee_sync.plan.compute import make_plan, short_commit
from kaylee_sync.plan.model import Action, ActualState, DesiredState, Plan, PruneHold
from kaylee_sync.plan.prune import DEFAULT_MAX_PRUNE, DEFAULT_MAX_PRUNE_PERCENT, PruneLimits
from kaylee_sync.render import DEFAULT_UNIT_PREFIX
from kaylee_sync.source import GitSource, redact
from kaylee_sync.source.signatures import SignaturePolicy, verify_commits
from kaylee_sync.store import Store, keys
from kaylee_sync.store.txn import DEFAULT_BATCH, Compare
from kaylee_sync.sync.actual import Keyspace, read_actual
from kaylee_sync.sync.apply import ApplyResult, apply_plan
from kaylee_sync.sync.status import AttemptRecord, read_status, record_attempt, write_status
from kaylee_sync.sync.view import EtcdView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncSettings:
    max_prune: int | None = DEFAULT_MAX_PRUNE
    """Refuse a commit that would delete more than this many managed units (None: no limit)."""
    max_prune_percent: float | None = DEFAULT_MAX_PRUNE_PERCENT
    """... or more than this share of them, but at least one (None: no limit)."""
    allow_prune_all: bool = False
    """``--allow-prune``: lift the prune guard and release a refusal it holds."""
    unit_prefix: str = DEFAULT_UNIT_PREFIX
    """Prefix of fleet unit names, for the plan's fleet-level effects."""
    batch: int = DEFAULT_BATCH
    """Operations per etcd transaction (etcd allows 128, and 128 compares: a guard each
    and the fence); a batch also closes before etcd's request size limit."""
    signatures: SignaturePolicy | None = None
    """Deploy only commits signed by allowed keys (issue 15); None: no check."""
    full_every: float | None = 60.0
    """Seconds after which a sync reads and plans everything again even though the last
    one worked (``--resync``); None: only when in doubt (see :meth:`Syncer.sync_once`)."""

    @property
    def prune(self) -> PruneLimits:
        """The prune guard's settings, as the planner takes them."""
        return PruneLimits(self.max_prune, self.max_prune_percent, self.allow_prune_all)


@dataclass(frozen=True)
class SyncResult:
    ok: bool
    commit: str = ""
    plan: Plan | None = None
    applied: ApplyResult | None = None
    error: str = ""
    stage: str = ""  # where it failed: "git", "etcd" or "other"; "leadership" if deposed
    duration: float = 0.0
    lag: float | None = None  # seconds from the commit's time to its being in etcd
    counts: dict[str, int] = field(default_factory=dict)
    deposed: bool = False  # stopped because this process no longer leads: not an error
    conflict: bool = False  # a concurrent change in etcd got in the way: worth a re-plan


class Syncer:
    def __init__(
        self,
        source: GitSource,
        store: Store,
        settings: SyncSettings | None = None,
        *,
        identity: str | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.store = store
        self.settings = settings or SyncSettings()
        self.identity = identity
        self.is_leader = is_leader
        self.clock = clock
        self.last_commit = ""
        self.view = EtcdView(store)
        # The last sync's plan, if it worked: the base of the next, incremental one.
        self._previous: Plan | None = None
        self._full_at = -math.inf  # when the last full sync started (self.clock)
        self.incremental_syncs = 0  # how many syncs were planned incrementally (tests, metrics)
        self.full_syncs = 0  # how many planned everything (tests, benchmarks)
        # What the last attempt reported about invalid files: the same complaint is
        # logged once, not at every poll while the commit stays the same.
        self._last_complaints: tuple[object, ...] = ()
        self._refusal_logged = ""  # the commit whose refusal this process last logged

    # -- read only -----------------------------------------------------------------------

    def desired(self, ref: str | None = None, *, worktree: bool = False) -> DesiredState:
        if worktree:
            return self.source.worktree_desired()
        return self.source.desired(self.source.resolve(ref))

    def plan(self, desired: DesiredState, actual: ActualState | None = None) -> Plan:
        """Plan ``desired`` against ``actual`` (default: what etcd holds now)."""
        if actual is None:
            actual = read_actual(self.store)
        return make_plan(
            desired,
            actual,
            now=self.clock(),
            prune=self.settings.prune,
            unit_prefix=self.settings.unit_prefix,
            generations=self._generations(),
        )

    def _generations(self) -> dict[str, int]:
        """Restart generations by unit, decoded as an incremental sync's view decodes them."""
        space = Keyspace()
        space.ingest(self.store.get_prefix(keys.RESTART))
        return space.generations

    # -- one attempt ---------------------------------------------------------------------

    def sync_once(self, *, fetch: bool = True, full: bool = False) -> SyncResult:
        """Fetch, plan and apply once; record the attempt in ``sync/status``. Never raises
        a KayleeError: the result says what failed.

        A sync after one that worked is incremental: only the files that differ from the
        last synced commit are read, only the keys written since the last read come from
        etcd, and only the units either touches are planned (:mod:`.view`). ``full`` (a
        new leader, a restart) — or a failed or stopped sync before, or ``full_every``
        passed — reads and plans everything instead."""
        if full or self._full_due():
            self.forget()
        try:
            with collector_paused():
                result = self._sync_once(fetch)
        except BaseException:
            self.forget()  # whatever stopped it, nothing it read is a base any more
            raise
        if not result.ok:
            self.forget()  # in doubt: the next sync reads and plans everything
        return result

    def _full_due(self) -> bool:
        every = self.settings.full_every
        return every is not None and self.clock() - self._full_at >= every

    def forget(self) -> None:
        """Drop what is kept between syncs (the last plan, the etcd view and its watch):
        the next sync is full. Call it from the thread that syncs."""
        self._previous = None
        self.view.forget()

    def _sync_once(self, fetch: bool) -> SyncResult:
        started = self.clock()
        stage = "git"
        commit = ""
        previous, self._previous = self._previous, None
        try:
            commit = self.source.fetch() if fetch else self.source.resolve()
            since = previous.desired.commit if previous is not None else None
            desired, files = self.source.desired_since(since, commit)
            stage = "etcd"
            actual, keys_changed = self.view.read(self._fence())
            if self.settings.signatures is not None:  # issue 15: refuse before planning
                stage = "signature"
                base = actual.inventory.commit if actual.inventory is not None else None
                verify_commits(self.source.git_commands(), self.settings.signatures, base, commit)
                stage = "etcd"
            touched = None if files is None or keys_changed is None else files | keys_changed
            if touched is None:
                self._full_at = started
                self.full_syncs += 1
            else:
                self.incremental_syncs += 1
            plan = make_plan(
                desired,
                actual,
                now=self.clock(),
                prune=self.settings.prune,
                unit_prefix=self.settings.unit_prefix,
                generations=self.view.generations(),
                previous=previous if touched is not None else None,
                touched=touched,
            )
            self._log_plan(plan, actual.prune_hold)
            if not self.is_leader():
                return self._deposed(commit, started)
            applied = apply_plan(
                self.store,
                plan,
                actual.inventory,
                fence=self._fence(),
                batch=self.settings.batch,
                suspended=actual.suspended,
                prune_hold=actual.prune_hold,
                clock=self.clock,
            )
        except ConflictError as exc:
            if not self.is_leader():
                return self._deposed(commit, started)  # the fence on master refused it
            return self._failed(commit, stage, exc, started, conflict=True)
        except KayleeError as exc:
            return self._failed(commit, stage, exc, started)
        done = self.clock()
        # The lag is measured only when this attempt brought the commit to etcd: a poll
        # that finds the same commit again would otherwise report its age as lag.
        brought = actual.inventory is None or actual.inventory.commit != commit
        lag = (
            max(0.0, done - desired.committed_at)
            if brought and desired.committed_at is not None
            else None
        )
        counts = {a.value: plan.count(a) for a in Action}  # cheap: see PlanIndex
        result = SyncResult(True, commit, plan, applied, "", "", done - started, lag, counts)
        if applied.created or applied.updated or applied.deleted or commit != self.last_commit:
            log.info(
                "synced %s: %d created, %d updated, %d deleted, %d unchanged, %d invalid (%.2f s)",
                commit[:12],
                applied.created,
                applied.updated,
                applied.deleted,
                counts["unchanged"],
                len(plan.problems),
                result.duration,
            )
        self._log_release(plan)
        self.last_commit = commit
        self._previous = plan
        self._record(result)
        return result

    def _failed(
        self, commit: str, stage: str, exc: KayleeError, started: float, *, conflict: bool = False
    ) -> SyncResult:
        error = redact(str(exc))
        log.error("sync of %s failed (%s): %s", commit[:12] or "?", stage, error)
        duration = self.clock() - started
        result = SyncResult(
            False, commit, error=error, stage=stage, duration=duration, conflict=conflict
        )
        self._record(result)
        return result

    def _deposed(self, commit: str, started: float) -> SyncResult:
        log.info("sync of %s stopped: this process is no longer the leader", commit[:12] or "?")
        return SyncResult(
            False,
            commit,
            error="no longer the leader; nothing more written",
            stage="leadership",
            duration=self.clock() - started,
            deposed=True,
        )

    def _fence(self) -> Compare | None:
        return None if self.identity is None else Compare.value_equals(keys.MASTER, self.identity)

    def _log_plan(self, plan: Plan, held: PruneHold | None) -> None:
        for entry in plan.changes:
            if entry.action in (Action.UPDATE, Action.CREATE) and entry.reason.startswith("drift"):
                log.warning("%s: %s", entry.name, entry.reason)
        complaints = (plan.desired.commit, tuple(i for p in plan.problems for i in p.issues))
        if complaints != self._last_complaints:
            self._last_complaints = complaints
            for issue in complaints[1]:
                log.warning("invalid unit file: %s", issue)
        # A refusal is news once per commit, in the whole cluster: the stored hold says
        # which commit was last refused, so a restart or a new leader does not repeat it.
        hold = plan.prune_hold
        commit = plan.desired.commit
        if hold is not None and (held is None or held.commit != commit):
            if self._refusal_logged != commit:
                log.warning("prune refused at %s: %s", short_commit(commit), plan.prune_refused)
            self._refusal_logged = commit

    def _log_release(self, plan: Plan) -> None:
        """Say that deletions the guard would refuse were made, once they were."""
        if plan.prune_overridden:
            gone = [e.name for e in plan.changes if e.action == Action.DELETE]
            shown = ", ".join(gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")
            log.warning(
                "prune guard lifted by --allow-prune: deleted %d units (%s); it would say: %s",
                len(gone),
                shown,
                plan.prune_overridden,
            )
        elif plan.prune_released:
            log.info("prune hold released: %s", plan.prune_released)

    def _record(self, result: SyncResult) -> None:
        plan = result.plan
        attempt = AttemptRecord(
            time=self.clock(),
            commit=result.commit,
            ok=result.ok,
            error=result.error,
            counts=result.counts,
            problems=[
                {"file": i.file, "line": i.line, "field": i.field, "reason": i.reason}
                for p in (plan.problems if plan else ())
                for i in p.issues
            ],
            prune_refused=plan.prune_refused if plan else "",
            prune_hold=plan.prune_hold if plan else None,
            prune_overridden=plan.prune_overridden if plan else "",
            prune_released=plan.prune_released if plan else "",
            duration_seconds=round(result.duration, 3),
            leader=self.identity or "",
        )
        try:
            # Only a failure keeps something of the stored status (its last success).
            previous = None if attempt.ok else read_status(self.store)
            write_status(self.store, record_attempt(previous, attempt), fence=self._fence())
        except KayleeError as exc:
            log.warning("could not record the sync status: %s", redact(str(exc)))
