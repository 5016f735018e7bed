"""plan --out FILE / apply FILE: the JSON document loses nothing and refuses bad input."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from kaylee_sync.errors import SpecError, UsageError
from kaylee_sync.plan.compute import make_plan
from kaylee_sync.plan.model import (
    Action,
    ActualState,
    DesiredState,
    FleetEffect,
    Plan,
    PlanEntry,
)
from kaylee_sync.plan.output_json import plan_from_json, plan_to_json
from kaylee_sync.plan.prune import PruneLimits
from kaylee_sync.plan.summary import plan_exit_code
from kaylee_sync.spec import to_json
from tests.plan_builders import NOW, desired, problem, spec, synced, worlds

MODEST = settings(max_examples=60, deadline=None)
WEB = spec("web", replicas=3)


def through_a_file(plan: Plan) -> Plan:
    return plan_from_json(json.loads(json.dumps(plan_to_json(plan))), source="plan.json")


def sample_plan() -> Plan:
    before = desired(WEB, spec("db"), spec("old"))
    after = desired(
        dataclasses.replace(WEB, replicas=5), spec("new"), problems=[problem("units/db.yaml")]
    )
    return make_plan(after, synced(before), now=NOW)


@MODEST
@given(worlds())
def test_any_plan_survives_the_json_round_trip(
    world: tuple[DesiredState, ActualState, dict[str, Any]],
) -> None:
    state, etcd, options = world
    plan = make_plan(state, etcd, **options)
    assert through_a_file(plan) == plan


def test_the_document_has_the_documented_top_level_fields() -> None:
    doc = plan_to_json(sample_plan())
    assert list(doc) == [
        "version",
        "commit",
        "repo",
        "branch",
        "path",
        "committed_at",
        "against",
        "state_index",
        "inventory_revision",
        "summary",
        "entries",
        "units",
        "problems",
        "prune_refused",
        "prune_hold",
        "prune_overridden",
        "prune_released",
        "expired_suspensions",
    ]
    assert doc["version"] == 1
    assert doc["summary"] == {
        "create": 1,
        "update": 1,
        "delete": 1,
        "unchanged": 0,
        "suspended": 0,
        "invalid": 1,
        "policy": 0,
        "prune-refused": 0,
    }
    assert doc["units"]["web"]["value"] == to_json(dataclasses.replace(WEB, replicas=5))


def test_entries_keep_the_exact_bytes_apply_writes_and_compares() -> None:
    doc = plan_to_json(sample_plan())
    web = next(e for e in doc["entries"] if e["name"] == "web")
    assert web["new_value"] == to_json(dataclasses.replace(WEB, replicas=5))
    assert web["mod_revision"] > 0 and web["effect"]["summary"].startswith("scales from 3 to 5")


def test_a_plan_built_by_hand_with_other_problems_still_round_trips() -> None:
    plan = dataclasses.replace(sample_plan(), problems=())
    assert through_a_file(plan) == plan


def test_an_effect_and_issues_round_trip() -> None:
    base = sample_plan()
    extra = PlanEntry(
        "zzz",
        Action.INVALID,
        "units/zzz.yaml",
        "why",
        None,
        None,
        0,
        "",
        FleetEffect("x", ("a",), ("b", "c")),
        problem("units/zzz.yaml").issues,
    )
    plan = dataclasses.replace(base, entries=(*base.entries, extra))
    assert through_a_file(plan) == plan


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "plan format version 2 is not supported"),
        (lambda d: d.pop("entries"), "plan.json: entries: expected a list"),
        (lambda d: d["entries"][0].update(action="explode"), "entries[0].action: expected one of"),
        (lambda d: d["entries"][0].update(mod_revision="7"), "entries[0].mod_revision"),
        (lambda d: d["entries"][0].update(mod_revision=True), "expected an integer"),
        (lambda d: d.update(units=[]), "units: expected an object"),
        (lambda d: d["problems"][0]["issues"][0].pop("line"), "problems[0].issues[0].line"),
        (lambda d: d.update(committed_at="yesterday"), "committed_at: expected a number"),
    ],
)
def test_a_malformed_document_is_refused_naming_the_field(mutate: Any, message: str) -> None:
    doc = copy.deepcopy(plan_to_json(sample_plan()))
    mutate(doc)
    with pytest.raises(UsageError, match=r"^plan\.json: ") as err:
        plan_from_json(doc, source="plan.json")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(UsageError, match="not a kaylee-sync plan"):
        plan_from_json([], source="plan.json")  # type: ignore[arg-type]


def test_an_edited_value_that_is_not_a_valid_spec_is_refused() -> None:
    doc = plan_to_json(sample_plan())
    doc["units"]["new"]["value"] = '{"name":"new","apps":[]}'
    with pytest.raises(SpecError):
        plan_from_json(doc, source="plan.json")


def test_an_entry_that_disagrees_with_the_units_is_refused() -> None:
    doc = plan_to_json(sample_plan())
    web = next(e for e in doc["entries"] if e["name"] == "web")
    web["new_value"] = to_json(spec("web", "docker://evil:1"))
    with pytest.raises(UsageError, match=r"entry 'web' does not match units\.web"):
        plan_from_json(doc, source="plan.json")


def test_exit_code_is_1_for_invalid_files_2_for_changes_0_otherwise() -> None:
    assert plan_exit_code(sample_plan()) == 1
    changes = make_plan(desired(spec("new")), synced(desired()), now=NOW)
    assert plan_exit_code(changes) == 2
    state = desired(WEB)
    assert plan_exit_code(make_plan(state, synced(state), now=NOW)) == 0


def test_exit_code_is_1_when_a_prune_guard_refuses() -> None:
    everything_gone = make_plan(desired(), synced(desired(WEB)), now=NOW)
    assert everything_gone.prune_refused
    assert plan_exit_code(everything_gone) == 1
    allowed = make_plan(desired(), synced(desired(WEB)), now=NOW, prune=PruneLimits(allow=True))
    assert plan_exit_code(allowed) == 2


def test_every_field_of_the_document_is_documented() -> None:
    doc = plan_to_json(sample_plan())
    web = next(e for e in doc["entries"] if e["name"] == "web")
    text = (Path(__file__).resolve().parent.parent / "docs" / "plan.md").read_text()
    for field in [*doc, *web, "desired_problems", *web["effect"], *doc["problems"][0]]:
        assert f"`{field}`" in text, f"{field} is written by plan_to_json but not in docs/plan.md"
