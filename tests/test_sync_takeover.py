"""kaylee run/rm on Git-managed units: the ownership decision and the write are one
transaction, guarded by the inventory as it was read (real etcd)."""

from __future__ import annotations

import threading

import pytest

from kaylee_sync.errors import NotFoundError, UsageError
from kaylee_sync.plan.model import Inventory, InventoryEntry
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.inventory import encode_inventory, encode_one_value
from kaylee_sync.sync.takeover import Override, remove_unit, run_unit
from tests.gitrepo import unit_json

NOW = 1_700_000_000.0
HOTFIX = Override(who="alice@ops", reason="INC-1")


def own(store: Store, *names: str) -> None:
    units = {n: InventoryEntry(path=f"units/{n}.yaml", blob="0" * 40) for n in names}
    for key, value in encode_inventory(Inventory("repo", "main", "units", "c" * 40, units)).items():
        store.put(key, value)


def test_a_unit_in_a_format_1_inventory_is_managed_too(store: Store) -> None:
    units = {"web": InventoryEntry(path="units/web.yaml", blob="0" * 40)}
    store.put(keys.INVENTORY, encode_one_value(Inventory("repo", "main", "units", "c", units)))
    with pytest.raises(UsageError, match=r"web is managed by Git \(units/web.yaml in repo\)"):
        run_unit(store, "web", unit_json("web"), None, now=NOW)
    assert store.get_unit("web") is None


def test_an_unmanaged_unit_is_written_and_nothing_is_suspended(store: Store) -> None:
    written = run_unit(store, "web", unit_json("web"), None, now=NOW)
    assert written.suspension is None and written.note == ""
    stored = store.get_unit("web")
    assert stored is not None and stored.mod_revision == written.revision


def test_a_managed_unit_is_refused_and_nothing_is_written(store: Store) -> None:
    own(store, "web")
    with pytest.raises(UsageError, match="web is managed by Git"):
        run_unit(store, "web", unit_json("web"), None, now=NOW)
    assert store.get_unit("web") is None and store.get_prefix(keys.SUSPENDED) == []


def test_an_override_writes_suspension_and_spec_at_one_revision(store: Store) -> None:
    own(store, "web")
    written = run_unit(store, "web", unit_json("web", "example.com/hotfix:1"), HOTFIX, now=NOW)
    assert written.suspension is not None and written.suspension.reason == "INC-1"
    suspended = store.get(keys.suspended_key("web"))
    unit = store.get_unit("web")
    assert suspended is not None and unit is not None
    assert suspended.mod_revision == unit.mod_revision == written.revision


def test_remove_deletes_the_unit_and_its_generation_or_says_there_is_none(store: Store) -> None:
    run_unit(store, "web", unit_json("web"), None, now=NOW)
    store.bump_restart("web")
    remove_unit(store, "web", None, now=NOW)
    assert store.get_unit("web") is None and store.restart_generation("web") == 0
    with pytest.raises(NotFoundError):
        remove_unit(store, "web", None, now=NOW)


def test_git_taking_the_unit_over_meanwhile_is_noticed(store: Store) -> None:
    """The inventory changes between the ownership read and the write: the write must be
    decided again — here, refused, because Git now owns the unit."""
    own(store, "other")
    real_txn = store.txn
    raced = threading.Event()

    def txn_after_git_moved(compares, ops):  # type: ignore[no-untyped-def]
        if not raced.is_set():
            raced.set()
            own(store, "other", "web")  # a sync commits "web" to Git right now
        return real_txn(compares, ops)

    store.txn = txn_after_git_moved  # type: ignore[method-assign]
    with pytest.raises(UsageError, match="web is managed by Git"):
        run_unit(store, "web", unit_json("web"), None, now=NOW)
    assert raced.is_set() and store.get_unit("web") is None
