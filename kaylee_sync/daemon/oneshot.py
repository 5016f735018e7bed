"""The two one-off jobs: ``kaylee-sync --once`` and ``kaylee-sync apply PLAN``.

Both lead for the length of the job (``election.lead_once``: refused while a daemon
leads) and write fenced on that leadership, so a one-off job never writes beside a
daemon. The CLI only parses options and reports; the policy is here.

``apply`` applies exactly the plan saved by ``plan --out`` (Nomad's check-index): it
re-resolves the saved ref and re-reads etcd, and refuses if the commit or any key the
plan was made against moved since — what a reviewer approved is what gets applied, or
nothing is.
"""

from __future__ import annotations

import json
import logging
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from kaylee_sync.daemon.daemon import DaemonSettings
from kaylee_sync.election import lead_once, make_identity
from kaylee_sync.errors import KayleeError, UsageError
from kaylee_sync.feedback import Feedback
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.plan.compute import short_commit
from kaylee_sync.plan.model import Plan
from kaylee_sync.plan.output_json import plan_from_json
from kaylee_sync.scheduler.runner import Scheduler
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.source import GitSource
from kaylee_sync.source.signatures import SignaturePolicy, verify_commits
from kaylee_sync.store import Compare, Store, keys
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.apply import ApplyResult, apply_plan
from kaylee_sync.sync.syncer import Syncer

log = logging.getLogger("kaylee_sync")

#: Seconds the ``master`` lease of ``apply`` lives (not renewed: longer than the job).
APPLY_LEASE_TTL = 30


def run_once(
    source: GitSource, store: Store, fleet: FleetClient | None, settings: DaemonSettings
) -> int:
    """One sync and one scheduler pass, leading for that long; the exit code.

    0: synced (and, with a fleet, one pass done); 1: the sync failed, a file is invalid,
    a prune was refused or the pass failed. StoreError if a daemon leads.
    """
    identity = make_identity()
    feedback = Feedback(settings.feedback)  # issue 15: statuses and notifications, as a daemon
    with lead_once(store, identity, max(30, settings.election.lease_ttl)), closing(feedback):
        result = Syncer(source, store, settings.sync, identity=identity).sync_once()
        feedback.sync_result(
            result.commit, ok=result.ok, error=result.error, stage=result.stage, plan=result.plan
        )
        if fleet is not None and settings.schedule:
            try:
                feedback.rollout(Scheduler(store, fleet, settings.scheduler).run_pass())
            except KayleeError as exc:
                log.error("scheduler pass failed: %s", exc)
                return 1
    if not result.ok:
        return 1
    plan = result.plan
    return 1 if plan is not None and (plan.problems or plan.prune_refused) else 0


@dataclass(frozen=True)
class SavedPlan:
    """A plan read back from ``plan --out``, with the ref it resolved."""

    plan: Plan
    ref: str | None
    file: Path


def read_saved_plan(file: Path) -> SavedPlan:
    """Read and check a saved plan; UsageError naming the file if it cannot be applied."""
    try:
        if not file.is_file():  # /dev/zero or a FIFO would be read forever
            raise UsageError(f"{file}: not a regular file (a plan saved by 'plan --out')")
        document = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{file}: cannot read the plan: {exc}") from exc
    if not isinstance(document, dict):
        raise UsageError(f"{file}: not a kaylee-sync plan")
    ref = document.pop("ref", None)
    document.pop("made_at", None)
    plan = plan_from_json(document, source=str(file))
    if plan.against != "etcd":
        raise UsageError(f"{file}: a plan made --against {plan.against} cannot be applied")
    if any(u.blob.startswith("worktree:") for u in plan.desired.units.values()):
        raise UsageError(f"{file}: a --worktree plan shows uncommitted files; commit them first")
    if ref is not None and not isinstance(ref, str):
        raise UsageError(f"{file}: ref: not a string")
    return SavedPlan(plan, ref, file)


def apply_saved_plan(
    saved: SavedPlan,
    source: GitSource,
    etcd: EtcdSettings,
    *,
    fetch: bool = True,
    signatures: SignaturePolicy | None = None,
) -> ApplyResult:
    """Apply ``saved`` exactly, or refuse (UsageError) and write nothing.

    Refused if the saved ref moved to another commit, if a commit since the last synced
    one is not signed as ``signatures`` requires (issue 15), if units, inventory or
    suspensions changed in etcd since the plan was made, or while a daemon leads
    (StoreError). The writes are fenced on this job's ``master`` key.
    """
    plan, file = saved.plan, saved.file
    if source.local_path is None and fetch:
        source.fetch()
    commit = source.resolve(saved.ref)
    if commit != plan.desired.commit:
        raise UsageError(
            f"{file}: {saved.ref or source.branch} moved from {short_commit(plan.desired.commit)} "
            f"to {short_commit(commit)} since the plan was made; run plan again"
        )
    identity = make_identity()
    with Store(etcd) as store:
        if signatures is not None:  # the state_index check below covers a race
            inventory = read_actual(store).inventory
            base = inventory.commit if inventory is not None else None
            verify_commits(source.git_commands(), signatures, base, commit)
        with lead_once(store, identity, APPLY_LEASE_TTL):
            actual = read_actual(store)
            if actual.state_index != plan.state_index:
                raise UsageError(
                    f"{file}: etcd changed since the plan was made (units, inventory or "
                    "suspensions); run plan again"
                )
            return apply_plan(
                store,
                plan,
                actual.inventory,
                fence=Compare.value_equals(keys.MASTER, identity),
                suspended=actual.suspended,
                prune_hold=actual.prune_hold,
            )
