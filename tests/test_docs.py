"""docs/unit-file.md documents every field of the unit schema.

A field added to ``spec.schema`` without a line in the reference fails here, so the
operators' page cannot silently fall behind the loader.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kaylee_sync.spec.schema import unit_schema

UNIT_FILE_DOC = Path(__file__).resolve().parent.parent / "docs" / "unit-file.md"
NESTED = ("env", "volumes", "apps")


def documented_fields() -> list[str]:
    """Every top-level property, then each item property of env, volumes and apps."""
    properties = unit_schema()["properties"]
    fields = list(properties)
    for nested in NESTED:
        fields += [f"{nested}.{name}" for name in properties[nested]["items"]["properties"]]
    return fields


def test_nested_lists_have_item_properties() -> None:
    properties = unit_schema()["properties"]
    for nested in NESTED:
        assert properties[nested]["items"]["properties"], nested


@pytest.mark.parametrize("field", documented_fields())
def test_field_is_documented(field: str) -> None:
    name = field.rsplit(".", 1)[-1]
    assert f"`{name}`" in UNIT_FILE_DOC.read_text(encoding="utf-8"), (
        f"{field} is in unit_schema() but `{name}` is not mentioned in docs/unit-file.md"
    )
