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
   old entries and those units. A unit is thus listed before it exists, never after:
   an apply that stops half way cannot leave behind a unit Git created but no longer
   knows it owns (listed-but-absent is harmless: the planner just creates it, or drops
   it when the file is gone);
3. the unit creates, updates and deletes, in batches; a unit's rollout policy
   (``policy/<name>``, guarded like the unit) is written in the same transaction as its
   spec, and a policy-only change writes just the policy;
4. the new inventory, last and in its own transaction (it is the largest value), guarded
   by the revision of the inventory the plan — or phase 2 — left. Deleted units leave
   the inventory only now, after they are gone, so that a stop before this point leaves
   them owned and the next attempt still prunes them. A plan with no changes rewrites
   the inventory only if it differs (e.g. the commit moved). A prune hold the plan
   releases is deleted in this same transaction: released only once the held units
   are gone, never before.

Nothing is written when the new inventory would exceed etcd's request limit
(:data:`ETCD_MAX_REQUEST_BYTES`); see :mod:`kaylee_sync.sync.inventory` for its size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kaylee_sync.errors import ConflictError, StoreError, UsageError
from kaylee_sync.plan.model import Action, Inventory, Plan, PlanEntry, PruneHold, Suspension
from kaylee_sync.store import Compare, Op, Store, keys
from kaylee_sync.store.txn import DEFAULT_BATCH, ETCD_MAX_REQUEST_BYTES
from kaylee_sync.sync.inventory import encode_inventory, next_inventory
from kaylee_sync.sync.prunehold import encode_hold
from kaylee_sync.sync.suspend import decode_suspension

log = logging.getLogger(__name__)

# room for the key, the compares and the protobuf framing of the transaction that carries
# the inventory, within etcd's --max-request-bytes
_REQUEST_OVERHEAD = 4096  # bytes


@dataclass(frozen=True)
class ApplyResult:
    created: int
    updated: int
    deleted: int
    batches: int  # transactions run, inventory writes included
    revision: int  # the etcd revision once the apply was done (covers all its writes)
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

    Raises ConflictError naming the phase and batch that did not apply (earlier batches
    stay applied), StoreError if the inventory would be too large (nothing written).
    """
    if plan.against != "etcd":
        raise UsageError(f"a plan made against {plan.against} cannot be applied to etcd")
    creates = [e for e in plan.entries if e.action == Action.CREATE]
    updates = [e for e in plan.entries if e.action == Action.UPDATE]
    deletes = [e for e in plan.entries if e.action == Action.DELETE]
    policies = [e for e in plan.entries if e.action == Action.POLICY]
    unit_ops = _unit_ops(creates, updates, deletes, policies)
    final = next_inventory(plan, old_inventory)
    interim = _interim_inventory(old_inventory, final, [e.name for e in creates + updates])
    # Both inventories are encoded and measured before the first write: a too-big
    # inventory must stop the apply before any unit is written, not after.
    final_value = _encoded(final)
    interim_value = None if interim is None else _encoded(interim)

    txns = 0
    held = plan.prune_hold
    if held is not None and held != prune_hold:
        op = Op.put(keys.PRUNE_HOLD, encode_hold(held), guard=_hold_guard(prune_hold))
        txns += _run("recording the prune hold", store, [op], fence, batch)
    resumed, ran = _remove_expired(store, plan.expired_suspensions, suspended, fence, batch, clock)
    txns += ran
    revision = plan.inventory_revision
    if interim_value is not None:
        op = _inventory_op(interim_value, revision)
        txns += _run("listing new units in sync/inventory", store, [op], fence, batch)
        revision = _read_back(store, interim_value)
    if unit_ops:
        flat = [op for group in unit_ops for op in group]
        txns += _run("writing units", store, flat, fence, batch, groups=unit_ops)
    inventory_written = interim is not None
    last: list[Op] = []
    if final != (old_inventory if interim is None else interim):
        last.append(_inventory_op(final_value, revision))
        inventory_written = True
    if held is None and prune_hold is not None:
        last.append(Op.delete(keys.PRUNE_HOLD, guard=_hold_guard(prune_hold)))
    if last:
        # One transaction whatever ``batch``: the release goes with the inventory.
        txns += _run("writing sync/inventory", store, last, fence, max(batch, len(last)))
    return ApplyResult(
        created=len(creates),
        updated=len(updates),
        deleted=len(deletes),
        batches=txns,
        revision=store.revision(),
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
    units = dict(base.units)
    units.update((name, final.units[name]) for name in newly)
    return Inventory(base.repo, base.branch, base.path, base.commit, dict(sorted(units.items())))


def _encoded(inventory: Inventory) -> str:
    value = encode_inventory(inventory)
    size = len(value.encode("utf-8"))
    if size + _REQUEST_OVERHEAD > ETCD_MAX_REQUEST_BYTES:
        raise StoreError(
            f"{keys.INVENTORY} for {len(inventory.units)} units would take {size} bytes, "
            f"more than etcd accepts in one request ({ETCD_MAX_REQUEST_BYTES}); "
            "nothing was written"
        )
    return value


def _inventory_op(value: str, revision: int) -> Op:
    guard = (
        Compare.mod_revision_equals(keys.INVENTORY, revision)
        if revision > 0
        else Compare.missing(keys.INVENTORY)
    )
    return Op.put(keys.INVENTORY, value, guard=guard)


def _hold_guard(seen: PruneHold | None) -> Compare:
    """The hold is what the plan saw: absent, or unchanged since it was read."""
    if seen is None or seen.mod_revision <= 0:
        return Compare.missing(keys.PRUNE_HOLD)
    return Compare.mod_revision_equals(keys.PRUNE_HOLD, seen.mod_revision)


def _read_back(store: Store, value: str) -> int:
    """The mod revision of the inventory just written (ConflictError if it is not ours)."""
    stored = store.get(keys.INVENTORY)
    if stored is None or stored.value != value.encode("utf-8"):
        raise ConflictError(
            f"{keys.INVENTORY} changed right after it was written; no unit was written"
        )
    return stored.mod_revision


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
    ran = _run("removing expired suspensions", store, ops, fence, batch)
    for name in removed:
        log.info("suspension of %s expired; Git sync resumes", name)
    return tuple(removed), ran


def _run(
    phase: str,
    store: Store,
    ops: Sequence[Op],
    fence: Compare | None,
    batch: int,
    groups: Sequence[Sequence[Op]] | None = None,
) -> int:
    """``store.apply_batched``, with the phase named in a conflict."""
    try:
        return store.apply_batched(ops, fence, batch, groups=groups)
    except ConflictError as exc:
        raise ConflictError(f"{phase}: {exc}") from exc
