"""read_actual against a real etcd: what it returns, its fingerprint, malformed records."""

from __future__ import annotations

import time

import pytest

from kaylee_sync.errors import StoreError
from kaylee_sync.plan.model import Inventory, InventoryEntry
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.inventory import encode_inventory, shard_of
from kaylee_sync.sync.suspend import suspend

INVENTORY = Inventory("repo", "main", "units", "c1", {"web": InventoryEntry("units/web.yaml", "b")})


def test_an_empty_keyspace_is_an_empty_state(store: Store) -> None:
    actual = read_actual(store)

    assert actual.units == {}
    assert actual.inventory is None
    assert actual.inventory_revision == 0
    assert actual.suspended == {}
    assert actual.state_index == "0:0"
    assert actual.source == "etcd"


def test_units_inventory_and_suspensions_are_read_with_their_revisions(store: Store) -> None:
    web_rev = store.put_unit("web", '{"name":"web"}')
    values = encode_inventory(INVENTORY)  # the header and web's shard
    shard_rev = store.put(keys.owned_key(shard_of("web")), values[keys.owned_key(shard_of("web"))])
    inv_rev = store.put(keys.INVENTORY, values[keys.INVENTORY])
    paused = suspend(store, "db", who="ops", reason="hotfix", until=None, now=100.0)
    store.put(keys.MASTER, "leader-1")
    store.bump_restart("web")

    actual = read_actual(store)

    assert list(actual.units) == ["web"]
    assert actual.units["web"].value == '{"name":"web"}'
    assert actual.units["web"].mod_revision == web_rev
    assert actual.inventory == INVENTORY
    assert actual.inventory_revision == inv_rev
    assert actual.inventory is not None
    assert actual.inventory.stored.revisions == {
        keys.INVENTORY: inv_rev,
        keys.owned_key(shard_of("web")): shard_rev,
    }
    assert actual.suspended == {"db": paused}
    assert actual.suspended["db"].mod_revision == paused.mod_revision > 0
    assert actual.state_index == f"4:{paused.mod_revision}"  # master, restart/ not counted


def test_the_fingerprint_changes_on_every_create_change_and_delete(store: Store) -> None:
    store.put_unit("web", "1")
    store.put_unit("api", "1")
    seen = [read_actual(store).state_index]

    def step() -> None:
        index = read_actual(store).state_index
        assert index not in seen
        seen.append(index)

    store.put_unit("db", "1")
    step()
    store.put_unit("web", "2")
    step()
    store.delete_unit("web")
    step()
    store.delete_unit("db")  # not the newest key: the maximum stays, the count drops
    step()
    suspend(store, "api", who="ops", reason="why", until=None, now=time.time())
    step()
    for key, value in encode_inventory(INVENTORY).items():
        store.put(key, value)
        step()
    store.put(
        keys.owned_key(shard_of("web")),
        encode_inventory(INVENTORY)[keys.owned_key(shard_of("web"))],
    )
    step()  # the same value written again: a new revision
    store.delete(keys.suspended_key("api"))
    step()


def test_the_fingerprint_ignores_keys_sync_does_not_plan_from(store: Store) -> None:
    store.put_unit("web", "1")
    before = read_actual(store).state_index

    store.put(keys.MASTER, "leader-2")
    store.bump_restart("web")
    store.put(keys.rollout_key("web"), "{}")
    store.put(keys.STATUS, "{}")

    assert read_actual(store).state_index == before


def test_a_unit_value_that_is_not_utf8_is_passed_on_as_text(store: Store) -> None:
    store.put(keys.unit_key("web"), b"\xff{")

    assert read_actual(store).units["web"].value == "\ufffd{"


def test_a_malformed_inventory_stops_the_read_naming_the_key(store: Store) -> None:
    store.put_unit("web", "1")
    store.put(keys.INVENTORY, "{}")

    with pytest.raises(StoreError, match=r"^sync/inventory is not a valid inventory"):
        read_actual(store)


def test_a_malformed_suspension_stops_the_read_and_says_how_to_remove_it(store: Store) -> None:
    store.put(keys.suspended_key("web"), '{"who":"ops"}')

    with pytest.raises(StoreError) as caught:
        read_actual(store)

    assert str(caught.value).startswith("sync/suspended/web is not a valid suspension")
    assert "kaylee-sync resume web" in str(caught.value)
