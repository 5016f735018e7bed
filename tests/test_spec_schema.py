"""The JSON Schema for editors: it matches the model and accepts what the loader accepts.

Values are checked with ``jsonschema`` (the reference validator, a test dependency), so
the schema is judged by the same rules an editor's validator applies.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from jsonschema import Draft202012Validator

from kaylee_sync.spec import App, EnvVar, UnitSpec, Volume, spec_to_dict, unit_schema
from tests.strategies import unit_specs
from tests.test_spec_validate import GLOBAL_WITH_REPLICAS, vectors

VALIDATOR = Draft202012Validator(unit_schema())


def check(value: Any) -> list[tuple[str, str]]:
    """Errors of ``value`` against the unit schema: (JSON path, failing keyword), sorted."""
    return sorted((e.json_path, str(e.validator)) for e in VALIDATOR.iter_errors(value))


FULL = UnitSpec(
    name="a",
    replicas=2,
    max_replicas_per_host=1,
    engine="rkt",
    env_files=("/etc/e",),
    env=(EnvVar("A", "b"),),
    volumes=(Volume(path="/p", id="i", driver="d", source="s", options="-o x"),),
    net="host",
    apps=(App("docker://x", cmd="c", args=("a",)),),
    args=("--x",),
    machine=("a=b",),
    machine_id="ab",
    global_=True,
    conflicts=("c",),
)


def test_schema_is_draft_2020_12_json() -> None:
    schema = unit_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)  # a valid schema by the metaschema
    assert json.loads(json.dumps(schema)) == schema


def test_schema_fields_are_the_model_fields() -> None:
    schema, data = unit_schema(), spec_to_dict(FULL)
    # The unit file also holds the rollout policy, which the stored spec never does.
    assert list(schema["properties"]) == [*data, "rollout", "health"]
    items = {k: schema["properties"][k]["items"]["properties"] for k in ("env", "volumes", "apps")}
    assert list(items["env"]) == list(data["env"][0])
    assert list(items["volumes"]) == list(data["volumes"][0])
    assert list(items["apps"]) == list(data["apps"][0])
    assert schema["required"] == ["name", "apps"]


def test_every_property_is_described() -> None:
    def walk(node: dict[str, Any]) -> None:
        assert node.get("additionalProperties") is False
        for prop in node["properties"].values():
            assert prop["description"]
            if prop.get("items", {}).get("type") == "object":
                walk(prop["items"])
            if prop.get("type") == "object":
                walk(prop)

    walk(unit_schema())


def test_go_vectors_match_the_schema_except_global_replicas() -> None:
    for vector in vectors():
        errors = check(vector["stored"])
        if vector["id"] in GLOBAL_WITH_REPLICAS:
            assert errors == [("$.replicas", "maximum")], vector["id"]
        else:
            assert errors == [], vector["id"]


@settings(max_examples=100, deadline=None)
@given(unit_specs())
def test_valid_specs_match_the_schema(spec: UnitSpec) -> None:
    assert check(spec_to_dict(spec)) == []


def test_schema_refuses_what_the_loader_refuses() -> None:
    app = [{"image": "x"}]
    assert check({"name": "a", "apps": app, "replica": 1}) == [("$", "additionalProperties")]
    assert check({"name": "a b", "apps": app}) == [("$.name", "pattern")]
    assert check({"name": "a", "apps": []}) == [("$.apps", "minItems")]
    assert check({"name": "a", "apps": app, "replicas": True}) == [("$.replicas", "type")]
    assert check({"name": "a", "apps": app, "volumes": [{"path": "/d"}]}) == [
        ("$.volumes[0]", "required")
    ]
    assert check({"name": "a", "apps": [{"image": "x\\"}]}) == [("$.apps[0].image", "pattern")]
    assert check({"name": "a", "apps": app, "env": [{"name": "A", "value": "x\ny"}]})
    assert check({"name": "a", "apps": app, "global": True, "machineId": "ab"}) == [("$", "not")]
