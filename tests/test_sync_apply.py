"""apply_plan against a real etcd: guards, the fence, the inventory around the unit writes."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

import pytest

from kaylee_sync.errors import ConflictError, StoreError, UsageError
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
from kaylee_sync.sync.inventory import decode_inventory, encode_inventory
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
    store.put(keys.INVENTORY, encode_inventory(Inventory(REPO, "main", "units", commit, entries)))
    return read_actual(store)


def values(store: Store) -> dict[str, str]:
    return {u.key[len(keys.UNITS) :]: u.value.decode() for u in store.list_units()}


def inventory(store: Store) -> Inventory:
    stored = store.get(keys.INVENTORY)
    assert stored is not None
    return decode_inventory(stored.value, keys.INVENTORY)


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
    assert result.revision >= store.get(keys.INVENTORY).mod_revision  # type: ignore[union-attr]


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

    def depose(n: int) -> None:
        if n == 3:  # interim inventory, then two units: another leader takes over
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
        assert result.batches == 2  # no interim inventory: a and b are already listed


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
    store.put(keys.INVENTORY, encode_inventory(Inventory(REPO, "main", "units", "cX", {})))

    with pytest.raises(ConflictError, match="writing sync/inventory"):
        apply_plan(store, plan, actual.inventory, fence=None)

    assert inventory(store).commit == "cX"


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


def test_an_inventory_too_big_for_etcd_stops_the_apply_before_any_write(store: Store) -> None:
    actual = read_actual(store)
    builder = PlanBuilder(actual)
    for i in range(15_000):
        builder.create(f"svc-{i:05d}".ljust(64, "x"))

    with pytest.raises(StoreError, match=r"15000 units would take .* bytes"):
        apply_plan(store, builder.build(), None, fence=None)

    assert store.get_prefix("") == []


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
