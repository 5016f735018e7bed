"""``kaylee run`` / ``kaylee rm`` on a unit: refuse what Git manages, or take it over.

The original CLI writes ``units/<name>`` directly. A unit listed in the inventory
(``sync/inventory`` and its shards) belongs to Git: writing it by hand would be undone
at the next sync (drift is put back), and removing it would be re-created. So such a
write is refused unless it is an emergency override (``--override --reason``), which
suspends Git sync for the unit.

The suspension and the change are one transaction, guarded by the inventory's revisions
(its header and the unit's shard) as they were read when ownership was decided: there is
no moment at which the spec is changed but not yet protected (a sync in between would
undo it), nor one at which Git is suspended for a change that never happened; and if Git
took the unit over (or let it go) between the read and the write, nothing is written and
the decision is made again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kaylee_sync.errors import ConflictError, NotFoundError, StoreError, UsageError
from kaylee_sync.plan.model import Suspension
from kaylee_sync.store import Compare, Op, Store, StoredValue, keys
from kaylee_sync.sync.inventory import assemble, shard_of
from kaylee_sync.sync.suspend import suspension_op

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 10  # a transaction lost to a concurrent write is decided again


@dataclass(frozen=True)
class Override:
    """An operator's ``--override --reason``: who takes the unit from Git, and why."""

    who: str
    reason: str


@dataclass(frozen=True)
class Written:
    """What a takeover did: the unit's revision now, and the suspension it wrote (if any)."""

    revision: int
    suspension: Suspension | None = None
    note: str = ""  # for the user: e.g. "not managed by Git; nothing to override"


def run_unit(
    store: Store,
    name: str,
    value: str,
    override: Override | None,
    *,
    now: float,
    policy: str | None = None,
) -> Written:
    """Write ``units/<name>`` (``kaylee run``), suspending Git sync first when overriding.

    ``policy``: the unit file's rollout policy as stored (``policy/<name>``), written in the
    same transaction; "" deletes it (the file has none); None leaves it alone.
    """
    return _write(store, name, "run", value, override, now, policy)


def remove_unit(store: Store, name: str, override: Override | None, *, now: float) -> Written:
    """Delete ``units/<name>`` and its restart generation (``kaylee rm``); NotFoundError if
    there is no such unit."""
    return _write(store, name, "rm", None, override, now)


def _write(
    store: Store,
    name: str,
    verb: str,
    value: str | None,
    override: Override | None,
    now: float,
    policy: str | None = None,
) -> Written:
    for _ in range(_MAX_ATTEMPTS):
        where, compares = _owner(store, name, override)
        ops: list[Op] = []
        suspension = None
        if where and override is not None:
            op, suspension = suspension_op(
                name, who=override.who, reason=override.reason, until=None, now=now
            )
            ops.append(op)
        elif where:
            change = "change it there" if verb == "run" else "remove it there"
            raise UsageError(
                f"{name} is managed by Git ({where}); {change}, or use --override --reason … "
                "to take it over in an emergency"
            )
        unit_key = keys.unit_key(name)
        if value is None:
            current = store.get(unit_key)
            if current is None:
                raise NotFoundError(f"no unit named {name!r} (see 'kaylee ls')")
            compares.append(Compare.mod_revision_equals(unit_key, current.mod_revision))
            ops += [Op.delete(unit_key), Op.delete(keys.restart_key(name))]
            ops.append(Op.delete(keys.policy_key(name)))
        else:
            ops.append(Op.put(unit_key, value))
            if policy is not None:
                policy_key = keys.policy_key(name)
                ops.append(Op.put(policy_key, policy) if policy else Op.delete(policy_key))
        if not store.txn(compares, ops):
            continue  # the inventory or the unit changed meanwhile: decide again
        if suspension is not None:
            log.warning(
                "%s: Git sync suspended by %s (%s) to %s it by hand",
                name,
                suspension.who,
                suspension.reason,
                verb,
            )
        stored = store.get(unit_key)
        note = (
            ""
            if where or override is None
            else f"{name} is not managed by Git; nothing to override"
        )
        return Written(stored.mod_revision if stored else 0, suspension, note)
    raise ConflictError(f"{name}: etcd kept changing while writing it; try again")


def _owner(store: Store, name: str, override: Override | None) -> tuple[str, list[Compare]]:
    """Where Git keeps ``name`` ("" if Git does not manage it), and the compares that hold
    while that is still true: the inventory's header and the shard that would list
    ``name``, each unchanged since read (or still absent). Read one after the other,
    they are checked together when the transaction runs, so the decision is made on
    what both hold then."""
    header = store.get(keys.INVENTORY)
    shard = store.get(keys.owned_key(shard_of(name)))
    guards = [
        _unchanged(keys.INVENTORY, header),
        _unchanged(keys.owned_key(shard_of(name)), shard),
    ]
    try:
        inventory = assemble(header, [shard] if shard is not None else [])
    except StoreError as exc:  # unreadable: we cannot tell, so treat it as managed
        if override is None:
            raise UsageError(
                f"cannot tell whether Git manages {name} ({exc}); use --override "
                "--reason … to go ahead anyway"
            ) from None
        return "an unreadable inventory", guards
    entry = inventory.units.get(name) if inventory is not None else None
    return (f"{entry.path} in {inventory.repo}" if entry and inventory else ""), guards


def _unchanged(key: str, stored: StoredValue | None) -> Compare:
    if stored is None:
        return Compare.missing(key)
    return Compare.mod_revision_equals(key, stored.mod_revision)
