"""What etcd holds, as an :class:`ActualState`: the "actual" half of every plan.

One range request reads the whole keyspace under the prefix, and the units, the
inventory and the suspensions are split out of that one answer. Separate requests for
``units/`` and ``sync/`` would each be consistent but not with each other: a sync that
lands between them would show its new inventory next to the units from before it. One
request is one etcd revision. The extra keys it carries (``restart/``, ``scheduler/``,
``master``) are a few small values per unit at most, and are simply skipped.

``state_index`` is ``"<count>:<highest mod revision>"`` over those keys — units, the
inventory's header and shards, suspensions, the prune hold. Why this fingerprint changes
whenever any of them does: every write (create or change) gets a revision higher than
every mod revision already stored, so it raises the maximum for as long as the written
key exists. If the maximum is the same later, every key present then was last written at
or before it, hence was present, unchanged, when the first read was made (a key that is
deleted and recreated gets a new revision); the keys of the later read are then a subset
of the earlier ones, and an equal count makes them the same set. So equal fingerprints
mean identical keys and values, and any create, change or delete gives a different one.
Writes to other keys (a rollout, a restart, the leader) leave it alone, so unrelated
activity does not look like drift.
"""

from __future__ import annotations

from dataclasses import replace

from kaylee_sync.errors import StoreError
from kaylee_sync.health import Phase, decode_report
from kaylee_sync.plan.model import ActualState, ActualUnit, PruneHold, Suspension
from kaylee_sync.store import Store, StoredValue, keys
from kaylee_sync.sync.inventory import assemble
from kaylee_sync.sync.prunehold import decode_hold
from kaylee_sync.sync.suspend import decode_suspension


def read_actual(store: Store) -> ActualState:
    """Units, inventory, suspensions and the prune hold at one etcd revision.

    StoreError (naming the key) if the inventory, the prune hold or a suspension is
    malformed: sync must stop rather than plan without them. A unit's value is passed
    on as text whatever it holds; the planner sees a malformed unit as drift and puts
    Git's version back.
    """
    units: dict[str, ActualUnit] = {}
    suspended: dict[str, Suspension] = {}
    header: StoredValue | None = None
    shards: list[StoredValue] = []
    hold: PruneHold | None = None
    policies: dict[str, tuple[str, int]] = {}
    reverted: dict[str, str] = {}
    count = highest = 0
    for stored in store.get_prefix(""):
        key = stored.key
        if key.startswith(keys.UNITS):
            name = key[len(keys.UNITS) :]
            if "/" in name:
                continue  # not a unit the store can address (written by hand with etcdctl)
            value = stored.value.decode("utf-8", errors="replace")
            units[name] = ActualUnit(name=name, value=value, mod_revision=stored.mod_revision)
        elif key.startswith(keys.ROLLOUTS):
            # Not part of the state the plan is guarded by (the scheduler rewrites it):
            # only read to say when a change retries a rollout that was reverted.
            failed = _reverted(stored.value, key)
            if failed:
                reverted[key[len(keys.ROLLOUTS) :]] = failed
            continue
        elif key.startswith(keys.POLICY):
            value = stored.value.decode("utf-8", errors="replace")
            policies[key[len(keys.POLICY) :]] = (value, stored.mod_revision)
        elif key == keys.INVENTORY:
            header = stored
        elif key.startswith(keys.OWNED):
            shards.append(stored)
        elif key == keys.PRUNE_HOLD:
            hold = decode_hold(stored.value, key, stored.mod_revision)
        elif key.startswith(keys.SUSPENDED):
            suspension = decode_suspension(stored.value, key, stored.mod_revision)
            suspended[suspension.name] = suspension
        else:
            continue
        count += 1
        highest = max(highest, stored.mod_revision)
    inventory = assemble(header, shards)
    for name, (policy, revision) in policies.items():
        if name in units:
            units[name] = replace(units[name], policy=policy, policy_revision=revision)
    for name, failed in reverted.items():
        if name in units:
            units[name] = replace(units[name], reverted=failed)
    return ActualState(
        units=units,
        inventory=inventory,
        inventory_revision=header.mod_revision if header is not None else 0,
        suspended=suspended,
        prune_hold=hold,
        state_index=f"{count}:{highest}",
        source="etcd",
    )


def _reverted(value: bytes, key: str) -> str:
    """``name@hash6`` if the report says that rollout failed health and was reverted."""
    try:
        report = decode_report(value, key)
    except StoreError:
        return ""  # the scheduler's to complain about; the plan does not need it
    if report.phase in (Phase.REVERTING, Phase.REVERTED) and report.failed_hash:
        return f"{key.rsplit('/', 1)[-1]}@{report.failed_hash}"
    return ""
