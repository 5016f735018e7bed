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

from dataclasses import dataclass, field

from kaylee_sync.errors import StoreError
from kaylee_sync.health import Phase, decode_report
from kaylee_sync.plan.model import ActualState, ActualUnit, PruneHold, Suspension
from kaylee_sync.store import Store, StoredValue, keys
from kaylee_sync.sync.inventory import ShardCache, assemble
from kaylee_sync.sync.prunehold import decode_hold
from kaylee_sync.sync.suspend import decode_suspension


def read_actual(store: Store) -> ActualState:
    """Units, inventory, suspensions and the prune hold at one etcd revision.

    StoreError (naming the key) if the inventory, the prune hold or a suspension is
    malformed: sync must stop rather than plan without them. A unit's value is passed
    on as text whatever it holds; the planner sees a malformed unit as drift and puts
    Git's version back.
    """
    space = Keyspace()
    space.ingest(store.get_prefix(""))
    return space.state()


@dataclass
class Keyspace:
    """The keys a plan depends on, as read, kept per key so that a later read of only
    what changed (:class:`kaylee_sync.sync.view.EtcdView`) can patch them.

    ``ingest`` returns the unit names a key touches, so a plan knows which of its
    entries may be different.
    """

    units: dict[str, ActualUnit] = field(default_factory=dict)
    values: dict[str, StoredValue] = field(default_factory=dict)  # units/<name> by name
    policies: dict[str, StoredValue] = field(default_factory=dict)  # policy/<name> by name
    reverted: dict[str, str] = field(default_factory=dict)
    suspended: dict[str, Suspension] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)  # restart/<name>
    orphan_policies: dict[str, tuple[str, int]] = field(default_factory=dict)  # no units/<name>
    header: StoredValue | None = None
    shards: dict[str, StoredValue] = field(default_factory=dict)  # by key
    hold: PruneHold | None = None
    present: set[str] = field(default_factory=set)  # every key read, whatever it is
    tracked: set[str] = field(default_factory=set)  # the keys the fingerprint covers
    highest: int = 0  # their highest mod revision (see the module docstring)
    shard_cache: ShardCache = field(default_factory=ShardCache)

    def ingest(self, stored_values: list[StoredValue]) -> set[str]:
        """Take in keys as read (new or changed since the last read); the unit names whose
        plan entry they may change."""
        touched: set[str] = set()
        for stored in stored_values:
            name = self._one(stored)
            if name is not None:
                touched.add(name)
        for name in touched:
            self._unit(name)
        return touched

    def _one(self, stored: StoredValue) -> str | None:
        key = stored.key
        self.present.add(key)
        name: str | None = None
        if key.startswith(keys.UNITS):
            name = key[len(keys.UNITS) :]
            if "/" in name:
                return None  # not a unit the store can address (written by hand with etcdctl)
            self.values[name] = stored
        elif key.startswith(keys.ROLLOUTS):
            # Not part of the state the plan is guarded by (the scheduler rewrites it):
            # only read to say when a change retries a rollout that was reverted.
            name = key[len(keys.ROLLOUTS) :]
            failed = _reverted(stored.value, key)
            if failed:
                self.reverted[name] = failed
            elif self.reverted.pop(name, None) is None:
                return None
            return name
        elif key.startswith(keys.RESTART):
            name = key[len(keys.RESTART) :]
            try:
                self.generations[name] = int(stored.value.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                self.generations.pop(name, None)  # the scheduler reports it; the plan shows 0
            return name
        elif key.startswith(keys.POLICY):
            name = key[len(keys.POLICY) :]
            self.policies[name] = stored
        elif key == keys.INVENTORY:
            self.header = stored
        elif key.startswith(keys.OWNED):
            self.shards[key] = stored
        elif key == keys.PRUNE_HOLD:
            self.hold = decode_hold(stored.value, key, stored.mod_revision)
        elif key.startswith(keys.SUSPENDED):
            suspension = decode_suspension(stored.value, key, stored.mod_revision)
            self.suspended[suspension.name] = suspension
            name = suspension.name
        else:
            return None
        self.tracked.add(key)
        self.highest = max(self.highest, stored.mod_revision)
        return name

    def _unit(self, name: str) -> None:
        stored = self.values.get(name)
        policy = self.policies.get(name)
        if stored is None:
            self.units.pop(name, None)
            if policy is not None:  # the unit was deleted by hand; its policy stayed
                text = policy.value.decode("utf-8", errors="replace")
                self.orphan_policies[name] = (text, policy.mod_revision)
            return
        self.orphan_policies.pop(name, None)
        self.units[name] = ActualUnit(
            name=name,
            value=stored.value.decode("utf-8", errors="replace"),
            mod_revision=stored.mod_revision,
            policy=policy.value.decode("utf-8", errors="replace") if policy else "",
            policy_revision=policy.mod_revision if policy else 0,
            reverted=self.reverted.get(name, ""),
        )

    def state(self) -> ActualState:
        """The ActualState these keys make (its dicts are copies: later reads patch these)."""
        header = self.header
        return ActualState(
            units=self.units.copy(),
            inventory=assemble(header, list(self.shards.values()), self.shard_cache),
            inventory_revision=header.mod_revision if header is not None else 0,
            suspended=self.suspended.copy(),
            prune_hold=self.hold,
            state_index=f"{len(self.tracked)}:{self.highest}",
            source="etcd",
            orphan_policies=self.orphan_policies.copy(),
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
