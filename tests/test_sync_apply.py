"""apply_plan against a real etcd: guards, the fence, the inventory around the unit writes."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from kaylee_sync.errors import ConflictError, UsageError
from kaylee_sync.plan.model import (
    Action,
    ActualState,
    DesiredState,
    DesiredUnit,
    Inventory,
    InventoryEntry,
    Plan,
    PlanEntry,
)
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.spec import App, UnitSpec, to_json
from kaylee_sync.store import Compare, Op, Store, keys
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.apply import apply_plan
from kaylee_sync.sync.inventory import encode_inventory, encode_one_value, shard_of
from kaylee_sync.sync.suspend import suspend

REPO = "https://git.example/team/units.git"

# -- building plans by hand (the planner is tested on its own) --------------------------


def spec_json(name: str, image: str = "example.com/app:1") -> str:
    return to_json(UnitSpec(name=name, apps=(App(image=image),)))


def blob_of(name: str, image: str) -> str:
    return hashlib.sha1(f"{name} {image}".encode()).hexdigest()


class PlanBuilder:
    """Entries for a plan against ``actual``: say what happens to each unit, then build()."""

    def __init__(self, actual: ActualState, commit: str = "c2") -> None:
        self.actual = actual
        self.commit = commit
        self.entries: list[PlanEntry] = []
        self.desired: dict[str, DesiredUnit] = {}
        self.expired: tuple[str, ...] = ()

    def _want(self, name: str, image: str) -> str:
        value = spec_json(name, image)
        spec = UnitSpec(name=name, apps=(App(image=image),))
        self.desired[name] = DesiredUnit(
            name, f"units/{name}.yaml", blob_of(name, image), spec, value
        )
        return value

    def _rev(self, name: str) -> int:
        unit = self.actual.units.get(name)
        return 0 if unit is None else unit.mod_revision

    def create(self, name: str, image: str = "example.com/app:1") -> PlanBuilder:
        value = self._want(name, image)
        self._add(name, Action.CREATE, None, value)
        return self

    def update(self, name: str, image: str = "example.com/app:2") -> PlanBuilder:
        value = self._want(name, image)
        self._add(name, Action.UPDATE, self.actual.units[name].value, value)
        return self

    def unchanged(self, name: str, image: str = "example.com/app:1") -> PlanBuilder:
        value = self._want(name, image)
        self._add(name, Action.UNCHANGED, value, value)
        return self

    def delete(self, name: str) -> PlanBuilder:
        self._add(name, Action.DELETE, self.actual.units[name].value, None)
        return self

    def leave(self, name: str, action: Action) -> PlanBuilder:
        """INVALID, PRUNE_REFUSED or SUSPENDED (Git no longer defines the unit)."""
        unit = self.actual.units.get(name)
        self._add(name, action, unit.value if unit else None, None)
        return self

    def _add(self, name: str, action: Action, old: str | None, new: str | None) -> None:
        self.entries.append(
            PlanEntry(name, action, None, "test", old, new, self._rev(name), "", None)
        )

    def build(self) -> Plan:
        desired = DesiredState(REPO, "main", "units", self.commit, dict(self.desired))
        return Plan(
            desired=desired,
            against="etcd",
            entries=tuple(sorted(self.entries, key=lambda e: e.name)),
            problems=(),
            state_index=self.actual.state_index,
            inventory_revision=self.actual.inventory_revision,
            expired_suspensions=self.expired,
        )


def seed(store: Store, units: Sequence[str], commit: str = "c1") -> ActualState:
    """``units`` in etcd (image app:1) and listed in the inventory at ``commit``."""
    entries = {}
    for name in units:
        store.put_unit(name, spec_json(name))
        entries[name] = InventoryEntry(f"units/{name}.yaml", blob_of(name, "example.com/app:1"))
    put_inventory(store, Inventory(REPO, "main", "units", commit, entries))
    return read_actual(store)


def put_inventory(store: Store, inv: Inventory) -> None:
    for key, value in encode_inventory(inv).items():
        store.put(key, value)


def values(store: Store) -> dict[str, str]:
    return {u.key[len(keys.UNITS) :]: u.value.decode() for u in store.list_units()}


def inventory(store: Store) -> Inventory:
    inv = read_actual(store).inventory
    assert inv is not None
    return inv


class InterleavedStore(Store):
    """A real Store that runs ``between(n)`` after its n-th successful transaction.

    It stands for another process writing while an apply is under way, at a chosen
    point: the writes and their conflicts all happen in the real etcd.
    """

    def __init__(self, settings: EtcdSettings, between: Callable[[int], None]) -> None:
        super().__init__(settings)
        self.between = between
        self.txns = 0

    def txn(self, compare: Sequence[Compare], success: Sequence[Op]) -> bool:
        ok = super().txn(compare, success)
        if ok:
            self.txns += 1
            self.between(self.txns)
        return ok


# -- tests ------------------------------------------------------------------------------


def test_creates_updates_and_deletes_are_written_and_the_inventory_follows(
    store: Store,
) -> None:
    actual = seed(store, ["api", "old", "web"])
    plan = PlanBuilder(actual).create("new").update("web").delete("old").unchanged("api").build()

    result = apply_plan(store, plan, actual.inventory, fence=None)

    assert values(store) == {
        "api": spec_json("api"),
        "new": spec_json("new"),
        "web": spec_json("web", "example.com/app:2"),
    }
    assert (result.created, result.updated, result.deleted) == (1, 1, 1)
    inv = inventory(store)
    assert inv.commit == "c2"
    assert sorted(inv.units) == ["api", "new", "web"]
    assert inv.units["web"].blob == blob_of("web", "example.com/app:2")
    assert result.inventory_written
    # interim inventory (lists "new" first), one unit batch, the final inventory
    assert result.batches == 3


def test_a_manual_change_after_planning_fails_its_batch_and_writes_none_of_it(
    store: Store,
) -> None:
    actual = seed(store, ["gone", "web"])
    plan = PlanBuilder(actual).create("new").update("web").delete("gone").build()
    store.put_unit("web", spec_json("web", "example.com/hotfix:1"))  # kaylee run, meanwhile

    with pytest.raises(ConflictError, match=r"writing units: batch 1 of 1 not applied"):
        apply_plan(store, plan, actual.inventory, fence=None)

    assert values(store) == {
        "gone": spec_json("gone"),
        "web": spec_json("web", "example.com/hotfix:1"),
    }
    # The unit about to be created was listed first (harmless while absent); nothing dropped.
    inv = inventory(store)
    assert inv.commit == "c1"
    assert sorted(inv.units) == ["gone", "new", "web"]


def test_a_create_whose_key_appeared_meanwhile_conflicts(store: Store) -> None:
    actual = seed(store, [])
    plan = PlanBuilder(actual).create("web").build()
    store.put_unit("web", spec_json("web", "example.com/handmade:1"))

    with pytest.raises(ConflictError):
        apply_plan(store, plan, actual.inventory, fence=None)

    assert values(store) == {"web": spec_json("web", "example.com/handmade:1")}


def test_a_fence_that_does_not_hold_writes_nothing_at_all(store: Store) -> None:
    seed(store, ["gone", "web"])
    now = time.time()
    suspend(store, "web", who="ops", reason="hotfix", until=now + 60, now=now)
    store.put(keys.MASTER, "other-leader")
    actual = read_actual(store)
    before = store.get_prefix("")
    builder = PlanBuilder(actual, commit="c9").create("new").update("web").delete("gone")
    builder.expired = ("web",)
    plan = builder.build()
    fence = Compare.value_equals(keys.MASTER, "me")

    with pytest.raises(ConflictError, match="master holds the expected value"):
        apply_plan(store, plan, actual.inventory, fence=fence, suspended=actual.suspended)

    assert store.get_prefix("") == before


def test_a_fence_that_holds_lets_the_leader_write(store: Store) -> None:
    actual = seed(store, [])
    store.put(keys.MASTER, "me")
    plan = PlanBuilder(actual).create("web").build()

    apply_plan(store, plan, actual.inventory, fence=Compare.value_equals(keys.MASTER, "me"))

    assert values(store) == {"web": spec_json("web")}


def test_losing_leadership_between_batches_keeps_every_created_unit_owned(
    etcd_settings: EtcdSettings,
) -> None:
    names = [f"u{i}" for i in range(5)]
    listing = len({shard_of(n) for n in names})  # one shard per txn (the header stays)

    def depose(n: int) -> None:
        if n == listing + 2:  # interim inventory, then two units: another leader takes over
            store.put(keys.MASTER, "other-leader")

    with InterleavedStore(etcd_settings, depose) as store:
        actual = seed(store, ["gone"])
        store.put(keys.MASTER, "me")
        builder = PlanBuilder(actual)
        for name in names:
            builder.create(name)
        plan = builder.delete("gone").build()
        fence = Compare.value_equals(keys.MASTER, "me")

        with pytest.raises(ConflictError, match=r"writing units: batch 3 of 6 not applied"):
            apply_plan(store, plan, actual.inventory, fence=fence, batch=1)

        assert sorted(values(store)) == ["gone", "u0", "u1"]
        inv = inventory(store)
        # Every unit created so far (and the ones still to come) is owned; the unit not
        # yet deleted is still owned too, so the next leader will prune it.
        assert sorted(inv.units) == ["gone", *names]
        assert inv.commit == "c1"


def test_after_a_stop_half_way_the_next_plan_finishes_the_job(
    etcd_settings: EtcdSettings,
) -> None:
    def meddle(n: int) -> None:
        if n == 2:  # the first create landed; someone edits the unit about to be deleted
            store.put_unit("gone", spec_json("gone", "example.com/edited:1"))

    with InterleavedStore(etcd_settings, meddle) as store:
        actual = seed(store, ["gone"])
        plan = PlanBuilder(actual).create("a").create("b").delete("gone").build()
        with pytest.raises(ConflictError, match="batch 3 of 3"):
            apply_plan(store, plan, actual.inventory, fence=None, batch=1)
        assert sorted(values(store)) == ["a", "b", "gone"]
        assert sorted(inventory(store).units) == ["a", "b", "gone"]

        again = read_actual(store)
        replan = PlanBuilder(again).unchanged("a").unchanged("b").delete("gone").build()
        result = apply_plan(store, replan, again.inventory, fence=None, batch=1)

        assert sorted(values(store)) == ["a", "b"]
        assert sorted(inventory(store).units) == ["a", "b"]
        assert inventory(store).commit == "c2"
        # no interim inventory (a and b are already listed): the delete, then gone's
        # shard and the header, one per transaction
        assert result.batches == 3


def test_the_inventory_keeps_invalid_refused_and_suspended_units(store: Store) -> None:
    actual = seed(store, ["broken", "refused", "paused", "web"])
    plan = (
        PlanBuilder(actual)
        .leave("broken", Action.INVALID)
        .leave("refused", Action.PRUNE_REFUSED)
        .leave("paused", Action.SUSPENDED)
        .update("web")
        .build()
    )

    apply_plan(store, plan, actual.inventory, fence=None)

    inv = inventory(store)
    assert inv.commit == "c2"
    assert sorted(inv.units) == ["broken", "paused", "refused", "web"]
    assert actual.inventory is not None
    assert inv.units["broken"] == actual.inventory.units["broken"]
    assert sorted(values(store)) == ["broken", "paused", "refused", "web"]


def test_a_plan_without_changes_writes_nothing_unless_the_commit_moved(store: Store) -> None:
    actual = seed(store, ["web"])
    same = PlanBuilder(actual, commit="c1").unchanged("web").build()

    result = apply_plan(store, same, actual.inventory, fence=None)

    assert (result.batches, result.inventory_written) == (0, False)
    assert read_actual(store).state_index == actual.state_index

    moved = PlanBuilder(actual, commit="c3").unchanged("web").build()
    result = apply_plan(store, moved, actual.inventory, fence=None)

    assert (result.batches, result.inventory_written) == (1, True)
    assert inventory(store).commit == "c3"


def test_the_first_sync_creates_the_inventory(store: Store) -> None:
    actual = read_actual(store)
    plan = PlanBuilder(actual).create("web").build()

    apply_plan(store, plan, None, fence=None)

    assert sorted(inventory(store).units) == ["web"]
    assert inventory(store).commit == "c2"


def test_an_inventory_changed_after_planning_is_not_overwritten(store: Store) -> None:
    actual = seed(store, ["web"])
    plan = PlanBuilder(actual).update("web").build()
    header = encode_inventory(Inventory(REPO, "main", "units", "cX", {}))[keys.INVENTORY]
    store.put(keys.INVENTORY, header)

    with pytest.raises(ConflictError, match="writing the inventory"):
        apply_plan(store, plan, actual.inventory, fence=None)

    assert inventory(store).commit == "cX"


def test_a_shard_changed_after_planning_is_not_overwritten(store: Store) -> None:
    actual = seed(store, ["web", "db"])
    plan = PlanBuilder(actual).update("web").delete("db").build()
    shard = keys.owned_key(shard_of("web"))
    edited = read_actual(store).inventory
    assert edited is not None
    by_hand = Inventory(REPO, "main", "units", "c1", {"web": InventoryEntry("elsewhere", "b")})
    store.put(shard, encode_inventory(by_hand)[shard])

    with pytest.raises(ConflictError, match="writing the inventory"):
        apply_plan(store, plan, actual.inventory, fence=None)

    assert inventory(store).units["web"] == InventoryEntry("elsewhere", "b")
    assert inventory(store).commit == "c1"  # the header is written last: not reached


def test_one_changed_unit_rewrites_one_shard_and_the_header(store: Store) -> None:
    actual = seed(store, [f"svc-{i:04d}" for i in range(1_000)])
    before = {s.key: s.mod_revision for s in store.get_prefix("sync/")}
    plan = PlanBuilder(actual).update("svc-0042").build()

    apply_plan(store, plan, actual.inventory, fence=None)

    after = {s.key: s.mod_revision for s in store.get_prefix("sync/")}
    rewritten = sorted(k for k in after if after[k] != before.get(k))
    assert rewritten == [keys.INVENTORY, keys.owned_key(shard_of("svc-0042"))]
    assert inventory(store).units["svc-0042"].blob == blob_of("svc-0042", "example.com/app:2")


def seed_format_1(store: Store, units: Sequence[str]) -> ActualState:
    """What the code before format 2 left: the units, and the inventory as one value."""
    entries = {}
    for name in units:
        store.put_unit(name, spec_json(name))
        entries[name] = InventoryEntry(f"units/{name}.yaml", blob_of(name, "example.com/app:1"))
    store.put(keys.INVENTORY, encode_one_value(Inventory(REPO, "main", "units", "c1", entries)))
    return read_actual(store)


def keep(builder: PlanBuilder, names: Sequence[str]) -> PlanBuilder:
    for name in names:
        builder.unchanged(name)
    return builder


def test_a_format_1_inventory_is_converted_by_the_next_apply(store: Store) -> None:
    names = [f"svc-{i:03d}" for i in range(300)]
    actual = seed_format_1(store, names)
    assert actual.inventory is not None and actual.inventory.stored.version == 1

    apply_plan(store, keep(PlanBuilder(actual), names).build(), actual.inventory, fence=None)

    after = read_actual(store).inventory
    assert after is not None and after.stored.version == 2
    assert after.units == actual.inventory.units and after.commit == "c2"
    assert len(store.get_prefix(keys.OWNED)) == len({shard_of(n) for n in names})


def test_a_conversion_that_stops_half_way_leaves_format_1_in_force_and_is_finished_later(
    etcd_settings: EtcdSettings,
) -> None:
    """Shards are written before the format-2 header: until it lands, readers see the
    format-1 inventory whole, and the shards already written are overwritten next time."""
    names = [f"svc-{i:03d}" for i in range(40)]

    def depose(n: int) -> None:
        if n == 5:  # five shards written, one at a time: another leader takes over
            store.put(keys.MASTER, "other-leader")

    with InterleavedStore(etcd_settings, depose) as store:
        actual = seed_format_1(store, names)
        store.put(keys.MASTER, "me")
        fence = Compare.value_equals(keys.MASTER, "me")
        plan = keep(PlanBuilder(actual), names[1:]).create("new").delete("svc-000").build()

        with pytest.raises(ConflictError, match="listing new units in the inventory: batch 6"):
            apply_plan(store, plan, actual.inventory, fence=fence, batch=1)

        half = read_actual(store)
        assert len(store.get_prefix(keys.OWNED)) == 5
        assert half.inventory == actual.inventory  # format 1, whole, shards ignored
        assert sorted(values(store)) == names  # no unit was written

        store.put(keys.MASTER, "me")
        replan = keep(PlanBuilder(half), names[1:]).create("new").delete("svc-000").build()
        apply_plan(store, replan, half.inventory, fence=fence)

        done = inventory(store)
        assert done.stored.version == 2 and done.commit == "c2"
        assert sorted(done.units) == sorted([*names[1:], "new"])
        assert sorted(values(store)) == sorted([*names[1:], "new"])


def test_expired_suspensions_are_removed_and_logged(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    seed(store, ["web", "db"])
    now = time.time()
    suspend(store, "web", who="ops", reason="hotfix", until=now + 60, now=now)
    suspend(store, "db", who="ops", reason="maintenance", until=None, now=now)
    actual = read_actual(store)
    builder = PlanBuilder(actual).update("web").leave("db", Action.SUSPENDED)
    builder.expired = ("web",)
    caplog.set_level(logging.INFO, logger="kaylee_sync.sync")

    result = apply_plan(
        store, builder.build(), actual.inventory, fence=None, suspended=actual.suspended
    )

    assert result.resumed == ("web",)
    assert [s.key for s in store.get_prefix(keys.SUSPENDED)] == ["sync/suspended/db"]
    assert "suspension of web expired; Git sync resumes" in caplog.messages
    assert values(store)["web"] == spec_json("web", "example.com/app:2")


def test_a_suspension_renewed_after_planning_is_not_removed(store: Store) -> None:
    seed(store, ["web"])
    now = time.time()
    suspend(store, "web", who="ops", reason="hotfix", until=now + 60, now=now)
    actual = read_actual(store)
    builder = PlanBuilder(actual).update("web")
    builder.expired = ("web",)
    suspend(store, "web", who="ops", reason="longer", until=now + 3600, now=now + 1)

    with pytest.raises(ConflictError, match="removing expired suspensions"):
        apply_plan(store, builder.build(), actual.inventory, fence=None, suspended=actual.suspended)
    # without the planned revisions the suspension is read again and found still running
    result = apply_plan(
        store, builder.build(), actual.inventory, fence=None, clock=lambda: now + 61
    )

    assert result.resumed == ()
    assert store.get(keys.suspended_key("web")) is not None


def test_without_the_planned_suspensions_expired_ones_are_read_again(store: Store) -> None:
    actual = seed(store, ["web"])
    now = time.time()
    suspend(store, "web", who="ops", reason="hotfix", until=now + 60, now=now)
    builder = PlanBuilder(read_actual(store), commit="c1").unchanged("web")
    builder.expired = ("web", "never-suspended")

    result = apply_plan(
        store, builder.build(), actual.inventory, fence=None, clock=lambda: now + 61
    )

    assert result.resumed == ("web",)
    assert store.get_prefix(keys.SUSPENDED) == []


def test_a_plan_against_another_commit_cannot_be_applied(store: Store) -> None:
    plan = PlanBuilder(read_actual(store)).create("web").build()
    plan = Plan(plan.desired, "origin/main (1a2b3c4)", plan.entries, ())

    with pytest.raises(UsageError, match="against origin/main"):
        apply_plan(store, plan, None, fence=None)

    assert values(store) == {}


@pytest.mark.slow
def test_more_units_than_one_etcd_value_could_list_are_applied(store: Store) -> None:
    """Format 1 listed every unit in one value: 15,000 units with 64-character names
    took 1.6 MB, which etcd refused (every sync failed). Shards have no such ceiling."""
    actual = read_actual(store)
    builder = PlanBuilder(actual)
    for i in range(15_000):
        builder.create(f"svc-{i:05d}".ljust(64, "x"))

    apply_plan(store, builder.build(), None, fence=None)

    again = read_actual(store)
    assert again.inventory is not None and len(again.inventory.units) == 15_000
    assert sorted(again.inventory.units) == sorted(again.units)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [64, 126])
def test_ten_thousand_units_are_applied_in_batches(store: Store, batch: int) -> None:
    """Correctness at scale; how long it takes is measured by bench/repo_sync.py."""
    actual = read_actual(store)
    builder = PlanBuilder(actual)
    for i in range(10_000):
        builder.create(f"svc-{i:05d}")
    plan = builder.build()

    result = apply_plan(store, plan, None, fence=None, batch=batch)

    again = read_actual(store)
    assert len(again.units) == 10_000
    assert again.inventory is not None and len(again.inventory.units) == 10_000
    assert result.created == 10_000
    assert result.batches >= 10_000 // batch


def test_big_unit_values_are_split_below_etcds_request_limit(store: Store) -> None:
    """64 units of 30 KB each are 1.9 MB: more than etcd takes in one request (1.5 MiB).
    A unit file may be that large (many environment variables), and a batch of them must
    not make every sync fail."""
    actual = read_actual(store)
    builder = PlanBuilder(actual)
    for i in range(64):
        builder.create(f"big-{i:02d}", "example.com/app:" + "x" * 30_000)

    result = apply_plan(store, builder.build(), None, fence=None)

    assert result.created == 64
    assert len(store.get_prefix(keys.UNITS)) == 64
    assert result.batches > 2  # the creates took more than one transaction


# -- trials: an apply stopped after any transaction ---------------------------------------

TRIALS = int(os.environ.get("INVENTORY_TRIALS", "40"))


@pytest.mark.slow
def test_an_apply_stopped_after_any_transaction_never_loses_ownership(
    etcd_settings: EtcdSettings,
) -> None:
    """Random inventories (format 1 or 2, up to 60 units, units made by hand beside
    them) and random plans, applied in random batch sizes and stopped after a random
    transaction (the leader deposed): whatever was written, every Git unit in etcd is
    still listed, no unit made by hand is listed or touched, and the next apply reaches
    the state an uninterrupted one would. docs/reliability.md has the counts of a long
    run (``INVENTORY_TRIALS=1000``)."""
    failures: list[str] = []
    stopped = 0
    for trial in range(TRIALS):
        rng = random.Random(trial)
        settings = replace(etcd_settings, prefix=f"{etcd_settings.prefix}/t{trial}")
        cut = Cut()
        with InterleavedStore(settings, cut) as store:
            cut.store = store
            problem, was_cut = _stopped_apply_trial(rng, store, cut)
        stopped += was_cut
        if problem:
            failures.append(f"trial {trial}: {problem}")
    print(f"{TRIALS} trials, {stopped} stopped half way, {len(failures)} failures")
    assert not failures, failures[:5]
    assert stopped >= TRIALS // 2  # the trials must mostly stop an apply, not finish it


class Cut:
    """Deposes the leader after the ``at``-th transaction (0: never)."""

    def __init__(self) -> None:
        self.at = 0
        self.store: Store | None = None

    def __call__(self, n: int) -> None:
        if n == self.at and self.store is not None:
            self.store.put(keys.MASTER, "other-leader")


def _stopped_apply_trial(rng: random.Random, store: Store, cut: Cut) -> tuple[str, bool]:
    pool = [f"u{i:02d}" for i in range(rng.randint(5, 60))]
    existing = [n for n in pool if rng.random() < 0.6]
    (seed_format_1 if rng.random() < 0.3 else seed)(store, existing)
    by_hand = [f"hand-{i}" for i in range(rng.randint(0, 3))]
    for name in by_hand:
        store.put_unit(name, spec_json(name))
    actual = read_actual(store)
    want: dict[str, str] = {}  # the image each unit of the commit has
    invalid: list[str] = []
    builder = PlanBuilder(actual)
    for name in pool:
        roll = rng.random()
        if name in existing and roll < 0.15:
            builder.delete(name)
        elif name in existing and roll < 0.25:
            builder.leave(name, Action.INVALID)
            invalid.append(name)
        elif name in existing:
            want[name] = rng.choice(["example.com/app:1", "example.com/app:2"])
            (builder.unchanged if want[name].endswith(":1") else builder.update)(name, want[name])
        elif roll < 0.5:
            want[name] = "example.com/app:1"
            builder.create(name)
    batch = rng.choice([1, 2, 5, 127])
    plan = builder.build()
    changes = sum(
        1 for e in plan.entries if e.action in (Action.CREATE, Action.UPDATE, Action.DELETE)
    )
    # about how many transactions the apply takes: the units, the shards listing and
    # delisting them (all of them when converting format 1), two headers
    shards = len(existing) if actual.inventory and actual.inventory.stored.version == 1 else 0
    cut.at = rng.randint(1, -(-(2 * changes + shards) // batch) + 2)
    store.put(keys.MASTER, "me")
    fence = Compare.value_equals(keys.MASTER, "me")
    was_cut = False
    try:
        apply_plan(store, plan, actual.inventory, fence=fence, batch=batch)
    except ConflictError:
        was_cut = True
    cut.at = 0
    half = read_actual(store)  # a malformed inventory would raise here
    owned = set(half.inventory.units) if half.inventory is not None else set()
    unlisted = sorted(n for n in half.units if n in pool and n not in owned)
    if unlisted:
        return f"in etcd but not listed after the stop: {unlisted}", was_cut
    if owned & set(by_hand) or any(n not in half.units for n in by_hand):
        return "a unit made by hand was listed or removed", was_cut

    store.put(keys.MASTER, "me")
    again = PlanBuilder(half)
    for name in pool:
        if name in want and name in half.units:
            same = half.units[name].value == spec_json(name, want[name])
            (again.unchanged if same else again.update)(name, want[name])
        elif name in want:
            again.create(name, want[name])
        elif name in invalid:
            again.leave(name, Action.INVALID)
        elif name in half.units and name in owned:
            again.delete(name)
    apply_plan(store, again.build(), half.inventory, fence=fence, batch=batch)
    done = read_actual(store)
    expected_units = sorted([*want, *invalid, *by_hand])
    if sorted(done.units) != expected_units:
        return f"units {sorted(done.units)} != {expected_units}", was_cut
    inv = done.inventory
    if inv is None or sorted(inv.units) != sorted([*want, *invalid]):
        return f"inventory {inv and sorted(inv.units)} != {sorted([*want, *invalid])}", was_cut
    if (inv.commit, inv.stored.version) != ("c2", 2):
        return f"header {inv.commit!r}, format {inv.stored.version}", was_cut
    return "", was_cut
