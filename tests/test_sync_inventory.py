"""The inventory: its sharded encoding, strict decoding, and which units stay owned."""

from __future__ import annotations

import hashlib
import json

import pytest

from kaylee_sync.errors import StoreError
from kaylee_sync.plan.model import (
    Action,
    DesiredState,
    DesiredUnit,
    Inventory,
    InventoryEntry,
    Plan,
    PlanEntry,
)
from kaylee_sync.spec import App, UnitSpec, to_json
from kaylee_sync.store import StoredValue, keys
from kaylee_sync.store.txn import ETCD_MAX_REQUEST_BYTES
from kaylee_sync.sync.inventory import (
    assemble,
    encode_inventory,
    encode_one_value,
    next_inventory,
    shard_of,
)

KEY = "sync/inventory"


def blob(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def inventory(units: dict[str, str], path: str = "units", commit: str = "c1") -> Inventory:
    """An inventory whose units live at ``<path>/<name>.yaml`` (or at the path given)."""
    entries = {
        name: InventoryEntry(where or f"{path}/{name}.yaml", blob(name + where))
        for name, where in units.items()
    }
    return Inventory("https://git.example/team/units.git", "main", path, commit, entries)


def desired_unit(name: str, path: str | None = None) -> DesiredUnit:
    spec = UnitSpec(name=name, apps=(App(image="example.com/app:1"),))
    where = path or f"units/{name}.yaml"
    return DesiredUnit(name, where, blob(where), spec, to_json(spec))


def plan_of(desired: list[DesiredUnit], entries: list[tuple[str, Action]]) -> Plan:
    state = DesiredState(
        repo="https://git.example/team/units.git",
        branch="main",
        path="units",
        commit="c2",
        units={u.name: u for u in desired},
    )
    rows = tuple(
        PlanEntry(name, action, None, "test", None, None, 0, "", None) for name, action in entries
    )
    return Plan(state, "etcd", rows, ())


def stored(values: dict[str, str], revision: int = 5) -> list[StoredValue]:
    return [StoredValue(k, v.encode(), revision, revision) for k, v in sorted(values.items())]


def read(values: dict[str, str]) -> Inventory | None:
    """The inventory ``values`` (key → value) say, read the way read_actual reads them."""
    found = stored(values)
    header = next((s for s in found if s.key == KEY), None)
    return assemble(header, [s for s in found if s.key.startswith(keys.OWNED)])


def test_an_inventory_round_trips_including_unconventional_paths() -> None:
    inv = inventory({"web": "", "api": "", "odd": "units/team/odd.yml", "top": "top.yaml"})

    values = encode_inventory(inv)

    assert read(values) == inv
    header = json.loads(values[KEY])
    assert header == {"v": 2, "repo": inv.repo, "branch": "main", "path": "units", "commit": "c1"}
    shard = json.loads(values[keys.owned_key(shard_of("odd"))])
    assert shard["paths"] == {"odd": "units/team/odd.yml"}
    web = json.loads(values[keys.owned_key(shard_of("web"))])
    assert web["units"]["web"] == inv.units["web"].blob  # full blob, path left implicit
    assert "web" not in web.get("paths", {})


def test_each_unit_is_listed_once_in_the_shard_its_name_hashes_to() -> None:
    inv = inventory({f"svc-{i}": "" for i in range(2_000)})

    values = encode_inventory(inv)

    listed: dict[str, str] = {}
    for key, value in values.items():
        if key != KEY:
            for name in json.loads(value)["units"]:
                assert name not in listed
                listed[name] = key
    assert listed == {n: keys.owned_key(shard_of(n)) for n in inv.units}
    assert len(values) == 1 + 256  # 2,000 names fill every shard: none is left out


def test_a_shard_keeps_the_path_its_shorthand_is_relative_to() -> None:
    """The header's path may change without the shard being rewritten: the shard's own
    path still says where its units' files are."""
    old = inventory({"web": ""})
    values = encode_inventory(old)
    moved = encode_inventory(Inventory(old.repo, "main", "deploy", "c2", {}))

    inv = read({**values, KEY: moved[KEY]})

    assert inv is not None and inv.path == "deploy"
    assert inv.units["web"].path == "units/web.yaml"


def test_an_inventory_of_the_whole_tree_uses_top_level_file_names() -> None:
    inv = Inventory("r", "main", "", "c", {"web": InventoryEntry("web.yaml", blob("w"))})

    values = encode_inventory(inv)

    assert "paths" not in json.loads(values[keys.owned_key(shard_of("web"))])
    assert read(values) == inv


def test_equal_inventories_encode_to_equal_bytes_whatever_the_insertion_order() -> None:
    a = inventory({"a": "", "b": ""})
    b = Inventory(a.repo, a.branch, a.path, a.commit, dict(reversed(list(a.units.items()))))

    assert encode_inventory(a) == encode_inventory(b)


def test_a_format_1_inventory_is_still_read_whole_and_shards_beside_it_are_ignored() -> None:
    """Format 1 is what sync wrote before format 2; shards beside it are what a
    conversion that stopped half way left, and say nothing until the header is format 2."""
    old = inventory({"web": "", "odd": "units/team/odd.yml"})
    stray = encode_inventory(inventory({"stray": ""}))

    inv = read({**stray, KEY: encode_one_value(old)})

    assert inv == old and inv is not None
    assert inv.stored.version == 1
    assert set(inv.stored.revisions) == {KEY, keys.owned_key(shard_of("stray"))}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v":3,"repo":"r","branch":"b","path":"p","commit":"c"}', "version 3"),
        (b'{"v":1,"branch":"b","path":"p","commit":"c","units":{}}', "repo: expected a string"),
        (b'{"v":2,"repo":"r","branch":"b","path":"p"}', "commit: expected a string"),
        (b'{"v":1,"repo":"r","branch":"b","path":"p","commit":"c","units":[]}', "units: expected"),
        (b'{"v":1,"repo":"r","branch":"b","path":"p","commit":"c","units":{"w":1}}', "units.w"),
        (
            b'{"v":1,"repo":"r","branch":"b","path":"p","commit":"c","units":{},"paths":{"x":"y"}}',
            "paths.x names no unit",
        ),
    ],
)
def test_a_malformed_inventory_is_an_error_naming_the_key(value: bytes, why: str) -> None:
    with pytest.raises(StoreError) as caught:
        assemble(StoredValue(KEY, value, 3, 3), [])

    message = str(caught.value)
    assert message.startswith("sync/inventory is not a valid inventory")
    assert why in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"null", "not a JSON object"),
        (b'{"v":1,"path":"units","units":{}}', "version 1"),
        (b'{"v":2,"units":{}}', "path: expected a string"),
        (b'{"v":2,"path":"units","units":{"w":null}}', "units.w: expected a string"),
        (b'{"v":2,"path":"units","units":{},"paths":{"x":"y"}}', "paths.x names no unit"),
        (b'{"v":2,"path":"units","units":{"web":"b"}}', "units.web belongs in sync/owned/"),
    ],
)
def test_a_malformed_shard_is_an_error_naming_it(value: bytes, why: str) -> None:
    header = encode_inventory(inventory({}))[KEY]
    key = "sync/owned/00"  # "web" hashes elsewhere

    with pytest.raises(StoreError) as caught:
        read({KEY: header, key: value.decode()})

    message = str(caught.value)
    assert message.startswith(f"{key} is not a valid inventory")
    assert why in message


def test_shards_without_a_header_still_say_which_units_git_owns() -> None:
    """The header is written before any shard, so only an operator removes it; the
    ownership the shards record is kept (read as empty, every unit would be orphaned)."""
    values = encode_inventory(inventory({"web": "", "api": ""}))
    del values[KEY]

    inv = read(values)

    assert inv is not None and sorted(inv.units) == ["api", "web"]
    assert (inv.commit, inv.stored.version) == ("", 2)
    assert KEY not in inv.stored.revisions  # the next apply creates it


def test_next_inventory_lists_every_desired_unit_with_its_file_and_blob() -> None:
    web, odd = desired_unit("web"), desired_unit("odd", "units/x/odd.yml")
    plan = plan_of([web, odd], [("odd", Action.CREATE), ("web", Action.UNCHANGED)])

    inv = next_inventory(plan, None)

    assert inv.commit == "c2"
    assert inv.path == "units"
    assert inv.units == {
        "odd": InventoryEntry("units/x/odd.yml", odd.blob),
        "web": InventoryEntry("units/web.yaml", web.blob),
    }


def test_next_inventory_keeps_units_git_still_claims_and_drops_deleted_ones() -> None:
    old = inventory({n: "" for n in ("broken", "refused", "paused", "gone", "vanished", "web")})
    plan = plan_of(
        [desired_unit("web"), desired_unit("paused-but-desired")],
        [
            ("broken", Action.INVALID),
            ("refused", Action.PRUNE_REFUSED),
            ("paused", Action.SUSPENDED),  # suspended and its file deleted in Git
            ("paused-but-desired", Action.SUSPENDED),
            ("gone", Action.DELETE),
            ("web", Action.UPDATE),
        ],
    )

    inv = next_inventory(plan, old)

    assert sorted(inv.units) == ["broken", "paused", "paused-but-desired", "refused", "web"]
    for kept in ("broken", "refused", "paused"):
        assert inv.units[kept] == old.units[kept]  # the entry that deployed it, unchanged
    assert inv.units["web"].blob == desired_unit("web").blob  # Git's new blob


def test_an_invalid_file_for_a_unit_git_never_owned_does_not_claim_it() -> None:
    plan = plan_of([], [("handmade", Action.INVALID), ("other", Action.SUSPENDED)])

    assert next_inventory(plan, inventory({"web": ""})).units == {}
    assert next_inventory(plan, None).units == {}


@pytest.mark.parametrize("name_length", [20, 64])
def test_one_change_at_fifty_thousand_units_writes_one_small_shard(name_length: int) -> None:
    """Format 1 was one value of 110 bytes per unit: etcd refused it beyond ~15,000 units.
    A shard holds about units / 256 of them, so the largest stays tens of KB."""
    units = {f"svc-{i:05d}".ljust(name_length, "x"): "" for i in range(50_000)}
    inv = inventory(units)

    values = encode_inventory(inv)

    largest = max(len(v.encode()) for k, v in values.items() if k != KEY)
    assert largest < 64 * 1024 < ETCD_MAX_REQUEST_BYTES
    changed = dict(inv.units, **{"svc-00007".ljust(name_length, "x"): InventoryEntry("u", "b")})
    after = encode_inventory(Inventory(inv.repo, inv.branch, inv.path, "c2", changed))
    differ = sorted(k for k in values if values[k] != after[k])
    assert differ == [KEY, keys.owned_key(shard_of("svc-00007".ljust(name_length, "x")))]
    print(f"50,000 units, {name_length}-char names: largest shard {largest} bytes")
