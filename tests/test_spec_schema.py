"""The JSON Schema for editors: it matches the model and accepts what the loader accepts.

``jsonschema`` is not a dependency, so ``check`` below implements the handful of
keywords ``unit_schema()`` uses; an unknown keyword fails the test rather than passing.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings

from kaylee_sync.spec import App, EnvVar, UnitSpec, Volume, spec_to_dict, unit_schema
from tests.strategies import unit_specs
from tests.test_spec_validate import GLOBAL_WITH_REPLICAS, vectors

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
}
_ANNOTATIONS = {"$schema", "$id", "title", "description"}


def check(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Errors of ``value`` against ``schema`` (the subset of 2020-12 the unit schema uses)."""
    errors: list[str] = []
    for key, rule in schema.items():
        if key in _ANNOTATIONS or key in ("then", "else"):
            continue
        if key == "type":
            ok = isinstance(value, _TYPES[rule])
            if rule == "integer" and isinstance(value, bool):
                ok = False
            if not ok:
                return [f"{path}: not {rule}"]
        elif key == "properties" and isinstance(value, dict):
            for name, sub in rule.items():
                if name in value:
                    errors += check(value[name], sub, f"{path}.{name}")
        elif key == "required" and isinstance(value, dict):
            errors += [f"{path}.{name}: required" for name in rule if name not in value]
        elif key == "additionalProperties" and isinstance(value, dict):
            assert rule is False
            errors += [f"{path}.{k}: not allowed" for k in value if k not in schema["properties"]]
        elif key == "items" and isinstance(value, list):
            for i, item in enumerate(value):
                errors += check(item, rule, f"{path}[{i}]")
        elif key == "minItems" and isinstance(value, list) and len(value) < rule:
            errors.append(f"{path}: too few items")
        elif key == "pattern" and isinstance(value, str) and not re.search(rule, value):
            errors.append(f"{path}: does not match {rule}")
        elif key in ("minimum", "maximum") and isinstance(value, int):
            if value < rule if key == "minimum" else value > rule:
                errors.append(f"{path}: {key} {rule}")
        elif key == "enum" and value not in rule:
            errors.append(f"{path}: not one of {rule}")
        elif key == "const" and value != rule:
            errors.append(f"{path}: not {rule!r}")
        elif key == "not" and not check(value, rule, path):
            errors.append(f"{path}: matches a forbidden schema")
        elif key == "allOf":
            for sub in rule:
                errors += check(value, sub, path)
        elif key == "if":
            branch = "then" if not check(value, rule, path) else "else"
            errors += check(value, schema.get(branch, {}), path)
        elif key not in {
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "pattern",
            "minimum",
            "maximum",
            "enum",
            "const",
            "not",
            "allOf",
            "if",
        }:
            raise AssertionError(f"check() does not implement {key!r}")
    return errors


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
    schema = unit_schema()
    for vector in vectors():
        errors = check(vector["stored"], schema)
        if vector["id"] in GLOBAL_WITH_REPLICAS:
            assert errors == [".replicas: maximum 1"], vector["id"]
        else:
            assert errors == [], vector["id"]


@settings(max_examples=100, deadline=None)
@given(unit_specs())
def test_valid_specs_match_the_schema(spec: UnitSpec) -> None:
    assert check(spec_to_dict(spec), unit_schema()) == []


def test_schema_refuses_what_the_loader_refuses() -> None:
    schema = unit_schema()
    app = [{"image": "x"}]
    assert check({"name": "a", "apps": app, "replica": 1}, schema) == [".replica: not allowed"]
    assert check({"name": "a b", "apps": app}, schema)[0].startswith(".name: does not match")
    assert check({"name": "a", "apps": []}, schema) == [".apps: too few items"]
    assert check({"name": "a", "apps": app, "replicas": True}, schema) == [".replicas: not integer"]
    assert check({"name": "a", "apps": app, "volumes": [{"path": "/d"}]}, schema) == [
        ".volumes[0].source: required"
    ]
    assert check({"name": "a", "apps": [{"image": "x\\"}]}, schema)[0].startswith(
        ".apps[0].image: does not match"
    )
    assert check({"name": "a", "apps": app, "env": [{"name": "A", "value": "x\ny"}]}, schema)
    assert check({"name": "a", "apps": app, "global": True, "machineId": "ab"}, schema) == [
        ": matches a forbidden schema"
    ]
