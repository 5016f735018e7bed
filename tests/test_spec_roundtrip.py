"""Property tests: valid specs survive JSON (etcd) and YAML (unit file) round trips."""

from __future__ import annotations

import yaml
from hypothesis import given, settings

from kaylee_sync.spec import (
    UnitSpec,
    load_unit,
    parse_stored,
    spec_to_dict,
    to_json,
    validate_spec,
)
from tests.strategies import unit_specs

MODEST = settings(max_examples=200, deadline=None)


@MODEST
@given(unit_specs())
def test_generated_specs_pass_every_rule(spec: UnitSpec) -> None:
    assert validate_spec(spec, "gen.yaml") == []


@MODEST
@given(unit_specs())
def test_spec_survives_go_json_and_parse_stored(spec: UnitSpec) -> None:
    stored = to_json(spec)
    assert parse_stored(stored, f"units/{spec.name}", spec.name) == spec
    assert parse_stored(stored.encode(), f"units/{spec.name}", strict=True) == spec


@MODEST
@given(unit_specs())
def test_spec_survives_yaml_dump_and_load_unit(spec: UnitSpec) -> None:
    text = yaml.safe_dump(spec_to_dict(spec), allow_unicode=True, sort_keys=False)
    assert load_unit(text.encode("utf-8"), "unit.yaml") == spec


@MODEST
@given(unit_specs())
def test_spec_survives_ascii_escaped_yaml(spec: UnitSpec) -> None:
    text = yaml.safe_dump(spec_to_dict(spec), allow_unicode=False, default_flow_style=True)
    assert load_unit(text.encode("ascii"), "unit.yaml") == spec
