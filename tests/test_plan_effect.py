"""The fleet effect a plan announces must be what the scheduler then does."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from kaylee_sync.plan.effect import (
    create_effect,
    delete_effect,
    fleet_unit_names,
    update_effect,
)
from kaylee_sync.render import render_units
from kaylee_sync.scheduler.decide import replica_variant
from kaylee_sync.spec import UnitSpec, spec_hash6, to_json
from tests.plan_builders import spec
from tests.strategies import unit_specs

# Few examples: a spec may have 1000 replicas, and replica_variant hashes up to 1000 specs.
MODEST = settings(max_examples=40, deadline=None)
WEB = spec("web", replicas=4, max_replicas_per_host=2)


@MODEST
@given(unit_specs(), st.sampled_from(["k2", "prod"]), st.integers(0, 3))
def test_names_are_the_names_render_units_gives(s: UnitSpec, prefix: str, gen: int) -> None:
    rendered = tuple(u.name for u in render_units(s, prefix, gen))
    assert fleet_unit_names(s, prefix, gen) == rendered


@MODEST
@given(unit_specs(), unit_specs(), st.integers(0, 2))
def test_scale_in_place_is_announced_exactly_when_the_scheduler_keeps_the_hash(
    old: UnitSpec, new: UnitSpec, gen: int
) -> None:
    new = dataclasses.replace(new, name=old.name)
    for candidate in (new, dataclasses.replace(old, replicas=new.replicas)):
        effect = update_effect(to_json(old), candidate, old.name, "k2", gen)
        same_hash = spec_hash6(old, gen) == spec_hash6(candidate, gen)
        keeps_hash = replica_variant(candidate, gen, spec_hash6(old, gen))
        assert effect.summary.startswith("scales from") == (keeps_hash and not same_hash)


def test_create_starts_every_instance() -> None:
    effect = create_effect(WEB, "k2", 0)
    assert effect.summary == "starts 4 fleet units"
    assert effect.new_units == tuple(u.name for u in render_units(WEB)) and not effect.old_units


def test_global_units_say_fleet_runs_one_per_machine() -> None:
    effect = create_effect(spec("agent", global_=True), "k2", 0)
    assert effect.summary == "starts 1 fleet unit; global: fleet runs one on every matching machine"


def test_delete_destroys_all_fleet_units() -> None:
    effect = delete_effect(to_json(WEB), "web", "k2", 0)
    assert effect.summary == "destroys all 4 fleet units"
    assert effect.old_units == fleet_unit_names(WEB, "k2", 0)


def test_an_unreadable_entry_is_said_to_be_unreadable() -> None:
    assert "current entry unreadable" in delete_effect("{not json", "web", "k2", 0).summary
    update = update_effect('{"name": 1}', WEB, "web", "k2", 0)
    assert update.summary.startswith("current entry unreadable; then rolling replacement")
    assert update.new_units == fleet_unit_names(WEB, "k2", 0)


def test_replicas_only_change_scales_in_place_and_names_the_instances_that_go() -> None:
    down = update_effect(to_json(WEB), dataclasses.replace(WEB, replicas=2), "web", "k2", 0)
    assert down.summary == "scales from 4 to 2 replicas in place (no restarts)"
    assert down.old_units == fleet_unit_names(WEB, "k2", 0)[2:] and not down.new_units
    up = update_effect(to_json(WEB), dataclasses.replace(WEB, replicas=6), "web", "k2", 0)
    assert up.summary == "scales from 4 to 6 replicas in place (no restarts)"


def test_another_change_to_a_replica_unit_is_a_rolling_replacement() -> None:
    new = dataclasses.replace(WEB, apps=spec("x", "docker://web:2").apps)
    effect = update_effect(to_json(WEB), new, "web", "k2", 0)
    assert effect.summary == "rolling replacement of 4 replicas, one at a time"
    assert effect.old_units == fleet_unit_names(WEB, "k2", 0)
    assert effect.new_units == fleet_unit_names(new, "k2", 0)
    resized = update_effect(to_json(WEB), dataclasses.replace(new, replicas=1), "web", "k2", 0)
    assert resized.summary == "rolling replacement of 1 replica, one at a time (was 4 replicas)"


def test_a_non_replica_or_global_unit_is_destroyed_then_created() -> None:
    db = spec("db")
    effect = update_effect(to_json(db), spec("db", "docker://db:2"), "db", "k2", 0)
    assert effect.summary == "destroy then create (brief downtime)"
    agent = spec("agent", global_=True)
    changed = update_effect(to_json(agent), spec("agent", "x:2", global_=True), "agent", "k2", 0)
    assert changed.summary.startswith("destroy then create (brief downtime); global")


def test_the_restart_generation_is_part_of_the_names() -> None:
    assert create_effect(WEB, "k2", 0).new_units != create_effect(WEB, "k2", 3).new_units
    assert create_effect(WEB, "k2", 3).new_units[0].split(":")[2] == spec_hash6(WEB, 3)


def test_the_same_spec_in_other_bytes_changes_nothing_in_fleet() -> None:
    effect = update_effect(to_json(WEB).replace(",", ", "), WEB, "web", "k2", 0)
    assert effect.summary == "no fleet change" and not effect.old_units and not effect.new_units
