"""sync/inventory: its compact encoding, strict decoding, and which units stay owned."""

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
from kaylee_sync.sync.apply import ETCD_MAX_REQUEST_BYTES
from kaylee_sync.sync.inventory import decode_inventory, encode_inventory, next_inventory

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


def test_an_inventory_round_trips_including_unconventional_paths() -> None:
    inv = inventory({"web": "", "api": "", "odd": "units/team/odd.yml", "top": "top.yaml"})

    value = encode_inventory(inv)

    assert decode_inventory(value.encode(), KEY) == inv
    doc = json.loads(value)
    assert doc["paths"] == {"odd": "units/team/odd.yml", "top": "top.yaml"}
    assert doc["units"]["web"] == inv.units["web"].blob  # full blob, path left implicit


def test_an_inventory_of_the_whole_tree_uses_top_level_file_names() -> None:
    inv = Inventory("r", "main", "", "c", {"web": InventoryEntry("web.yaml", blob("w"))})

    value = encode_inventory(inv)

    assert "paths" not in json.loads(value)
    assert decode_inventory(value.encode(), KEY).units["web"].path == "web.yaml"


def test_equal_inventories_encode_to_equal_bytes_whatever_the_insertion_order() -> None:
    a = inventory({"a": "", "b": ""})
    b = Inventory(a.repo, a.branch, a.path, a.commit, dict(reversed(list(a.units.items()))))

    assert encode_inventory(a) == encode_inventory(b)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v":2,"repo":"r","branch":"b","path":"p","commit":"c","units":{}}', "version 2"),
        (b'{"v":1,"branch":"b","path":"p","commit":"c","units":{}}', "repo: expected a string"),
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
        decode_inventory(value, KEY)

    message = str(caught.value)
    assert message.startswith("sync/inventory is not a valid inventory")
    assert why in message
    assert "\n" not in message


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
def test_ten_thousand_units_fit_in_one_etcd_request(name_length: int) -> None:
    units = {f"svc-{i:05d}".ljust(name_length, "x"): "" for i in range(10_000)}
    inv = inventory(units)

    size = len(encode_inventory(inv).encode())

    assert size < ETCD_MAX_REQUEST_BYTES - 4096
    print(f"10,000 units, {name_length}-char names: inventory {size} bytes")
