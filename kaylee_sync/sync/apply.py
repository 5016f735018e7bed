"""Applying a Plan to etcd: guarded, fenced, batched writes, and the inventory around them.

Every transaction carries the caller's ``fence`` (``master`` == this leader's id), so a
deposed leader writes nothing, and each unit write carries a guard on what the plan saw:
a create requires the key to be absent, an update or delete requires the mod revision
read at plan time. A concurrent change (``kaylee run``, ``etcdctl``) therefore makes its
batch fail with ConflictError; nothing of that batch is written and the next attempt
re-plans from what is there. Batches are atomic one by one, not together (etcd allows
128 ops per transaction), so the order of the phases is what keeps ownership safe when
an apply stops half way (a crash, a lost leadership, a conflict):

0. a prune refusal the plan holds is recorded in ``sync/prune-hold`` before anything
   else, so that no later phase — above all the inventory that lists the units the
   refused commit adds — can be seen without it (a new leader would otherwise judge
   the held deletions against a baseline grown by those units);
1. expired suspensions are removed (logged once they are gone);
2. if the plan writes units the current inventory does not list (new files, or units
   adopted from ``kaylee run``), the inventory is first rewritten as the *union* of the
   old entries and those units (the shards they hash to, and the header). A unit is
   thus listed before it exists, never after: an apply that stops half way cannot leave
   behind a unit Git created but no longer knows it owns (listed-but-absent is
   harmless: the planner just creates it, or drops it when the file is gone);
3. the unit creates, updates and deletes, in batches; a unit's rollout policy
   (``policy/<name>``, guarded like the unit) is written in the same transaction as its
   spec, and a policy-only change writes just the policy;
4. the new inventory, last: the shards whose entries change, then the header (the
   commit), each guarded by what phase 2 wrote there or else by the revision read with
   the plan. Deleted units leave the inventory only now, after they are gone, so that a
   stop before this point leaves them owned and the next attempt still prunes them. A
   plan with no changes writes only the header, if the commit moved. A prune hold the
   plan releases is deleted in the header's transaction: released only once the held
   units are gone, never before.

Each of these is a per-unit argument (a unit is listed while it may exist), so it holds
with the inventory spread over shards that are written in several transactions; the
header is written last so that its commit names a sync whose writes are all done. See
:mod:`kaylee_sync.sync.inventory` for the format, and how a format-1 inventory is
converted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from kaylee_sync.errors import ConflictError, UsageError
from kaylee_sync.plan.model import (
    Action,
    Inventory,
    InventoryKeys,
    Plan,
    PlanEntry,
    PruneHold,
    Suspension,
)
from kaylee_sync.store import Compare, Op, Store, keys
from kaylee_sync.store.txn import DEFAULT_BATCH
from kaylee_sync.sync.inventory import FORMAT_VERSION, inventory_writes, next_inventory
from kaylee_sync.sync.prunehold import encode_hold
from kaylee_sync.sync.suspend import decode_suspension

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyResult:
    created: int
    updated: int
    deleted: int
    batches: int  # transactions run, inventory writes included
    inventory_written: bool = False
    resumed: tuple[str, ...] = ()  # units whose expired suspension was removed


def apply_plan(
    store: Store,
    plan: Plan,
    old_inventory: Inventory | None,
    *,
    fence: Compare | None,
    batch: int = DEFAULT_BATCH,
    suspended: Mapping[str, Suspension] | None = None,
    prune_hold: PruneHold | None = None,
    clock: Callable[[], float] = time.time,
) -> ApplyResult:
    """Write ``plan`` to etcd (see the module docstring for the order and the guards).

    ``old_inventory`` is the inventory the plan was made against (``ActualState.inventory``)
    and ``suspended`` its suspensions (``ActualState.suspended``): expired ones are
    removed only if unchanged since that read. Without ``suspended`` they are read again
    here and removed only if still expired at ``clock()``. ``prune_hold`` is the hold the plan was
    made against (``ActualState.prune_hold``): it is replaced or deleted only if
    unchanged since.

    ``old_inventory`` carries the revisions it was read at (``Inventory.stored``): the
    inventory's writes are guarded by them.

    Raises ConflictError naming the phase and batch that did not apply (earlier batches
    stay applied).
    """
    if plan.against != "etcd":
        raise UsageError(f"a plan made against {plan.against} cannot be applied to etcd")
    changes = plan.changes
    creates = [e for e in changes if e.action == Action.CREATE]
    updates = [e for e in changes if e.action == Action.UPDATE]
    deletes = [e for e in changes if e.action == Action.DELETE]
    policies = [e for e in changes if e.action == Action.POLICY]
    unit_ops = _unit_ops(creates, updates, deletes, policies)
    final = next_inventory(plan, old_inventory)
    interim = _interim_inventory(old_inventory, final, [e.name for e in creates + updates])

    txns = 0
    held = plan.prune_hold
    if held is not None and held != prune_hold:
        op = Op.put(keys.PRUNE_HOLD, encode_hold(held), guard=_hold_guard(prune_hold))
        txns += _run("recording the prune hold", store, [[op]], fence, batch)
    resumed, ran = _remove_expired(store, plan.expired_suspensions, suspended, fence, batch, clock)
    txns += ran
    written: dict[str, str | None] = {}  # inventory keys this apply wrote (None: deleted)
    base = old_inventory
    changed = plan.index.recomputed  # the only units whose inventory entries may change
    if interim is not None:
        groups = inventory_writes(interim, base, written, changed)
        txns += _run("listing new units in the inventory", store, groups, fence, batch)
        written.update(
            (op.key, op.value.decode() if op.kind == "put" else None) for op in _flat(groups)
        )
        stored = base.stored if base is not None else InventoryKeys()
        # what the shards listed when read still bounds what they may list now
        listed = stored.listed if stored.version == FORMAT_VERSION else None
        base = replace(interim, stored=InventoryKeys(FORMAT_VERSION, stored.revisions, listed))
    if unit_ops:
        txns += _run("writing units", store, unit_ops, fence, batch)
    # empty if nothing changes; a format-1 inventory is converted even then
    last = inventory_writes(final, base, written, changed)
    inventory_written = interim is not None or bool(last)
    if held is None and prune_hold is not None:
        # with the header, which comes last: released only once the held units are gone
        release = Op.delete(keys.PRUNE_HOLD, guard=_hold_guard(prune_hold))
        last = [*last[:-1], [*last[-1], release]] if last else [[release]]
    if last:
        txns += _run("writing the inventory", store, last, fence, batch)
    return ApplyResult(
        created=len(creates),
        updated=len(updates),
        deleted=len(deletes),
        batches=txns,
        inventory_written=inventory_written,
        resumed=resumed,
    )


def _policy_op(entry: PlanEntry) -> Op | None:
    """The write of ``policy/<name>`` the entry needs (None if the policy stays)."""
    if not entry.policy_changes:
        return None
    key = keys.policy_key(entry.name)
    if entry.policy_revision > 0:
        guard = Compare.mod_revision_equals(key, entry.policy_revision)
    else:
        guard = Compare.missing(key)
    if entry.action == Action.DELETE or not entry.new_policy:
        return Op.delete(key, guard=guard)
    return Op.put(key, entry.new_policy, guard=guard)


def _unit_ops(
    creates: Sequence[PlanEntry],
    updates: Sequence[PlanEntry],
    deletes: Sequence[PlanEntry],
    policies: Sequence[PlanEntry] = (),
) -> list[list[Op]]:
    """One group of ops per entry: its unit write and, with it, its policy write."""
    groups: list[list[Op]] = []
    for entry in policies:
        op = _policy_op(entry)
        if op is not None:
            groups.append([op])
    for entry in [*creates, *updates, *deletes]:
        ops: list[Op] = []
        groups.append(ops)
        policy = _policy_op(entry)
        if policy is not None:
            ops.append(policy)
        key = keys.unit_key(entry.name)
        if entry.action != Action.CREATE and entry.mod_revision <= 0:
            # Without the revision read at plan time the write would be unguarded.
            raise ValueError(f"{entry.action} of {entry.name} has no mod revision to guard it")
        if entry.action == Action.DELETE:
            guard = Compare.mod_revision_equals(key, entry.mod_revision)
            ops.append(Op.delete(key, guard=guard))
            continue
        if entry.new_value is None:
            raise ValueError(f"{entry.action} of {entry.name} has no value to write")
        if entry.action == Action.CREATE:
            guard = Compare.missing(key)
        else:
            guard = Compare.mod_revision_equals(key, entry.mod_revision)
        ops.append(Op.put(key, entry.new_value, guard=guard))
    return groups


def _interim_inventory(
    old: Inventory | None, final: Inventory, written: Sequence[str]
) -> Inventory | None:
    """The old inventory plus the units about to be written that it does not list."""
    owned = old.units if old is not None else {}
    newly = [name for name in written if name not in owned and name in final.units]
    if not newly:
        return None
    base = old if old is not None else Inventory(final.repo, final.branch, final.path, "")
    units = base.units.copy()
    units.update((name, final.units[name]) for name in newly)
    return Inventory(base.repo, base.branch, base.path, base.commit, units)


def _hold_guard(seen: PruneHold | None) -> Compare:
    """The hold is what the plan saw: absent, or unchanged since it was read."""
    if seen is None or seen.mod_revision <= 0:
        return Compare.missing(keys.PRUNE_HOLD)
    return Compare.mod_revision_equals(keys.PRUNE_HOLD, seen.mod_revision)


def _remove_expired(
    store: Store,
    names: Sequence[str],
    suspended: Mapping[str, Suspension] | None,
    fence: Compare | None,
    batch: int,
    clock: Callable[[], float],
) -> tuple[tuple[str, ...], int]:
    """Delete the expired suspensions (each only if unchanged): (names removed, txns run)."""
    ops: list[Op] = []
    removed: list[str] = []
    for name in names:
        key = keys.suspended_key(name)
        if suspended is not None:
            seen = suspended.get(name)
            revision = seen.mod_revision if seen is not None else 0
        else:
            stored = store.get(key)
            still = stored is not None and decode_suspension(stored.value, key).expired(clock())
            revision = stored.mod_revision if stored is not None and still else 0
        if revision > 0:
            ops.append(Op.delete(key, guard=Compare.mod_revision_equals(key, revision)))
            removed.append(name)
    if not ops:
        return (), 0
    ran = _run("removing expired suspensions", store, [[op] for op in ops], fence, batch)
    for name in removed:
        log.info("suspension of %s expired; Git sync resumes", name)
    return tuple(removed), ran


def _flat(groups: Sequence[Sequence[Op]]) -> list[Op]:
    return [op for group in groups for op in group]


def _run(
    phase: str,
    store: Store,
    groups: Sequence[Sequence[Op]],
    fence: Compare | None,
    batch: int,
) -> int:
    """``store.apply_batched`` of ``groups`` (each kept in one transaction), with the
    phase named in a conflict."""
    try:
        return store.apply_batched(_flat(groups), fence, batch, groups=groups)
    except ConflictError as exc:
        raise ConflictError(f"{phase}: {exc}") from exc
