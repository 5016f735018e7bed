"""The diff fast paths agree with what they replace: difflib for creates and deletes, the
generic pretty-printer for values, and the spec's remembered JSON with a fresh encoding."""

from __future__ import annotations

import dataclasses
import difflib
import json

import pytest

from kaylee_sync.plan.diffs import pretty, unified_diff
from kaylee_sync.spec import to_json
from kaylee_sync.spec.codec import go_json, spec_to_dict
from kaylee_sync.spec.model import App, UnitSpec

VALUES = [
    '{"name":"web","apps":[{"image":"docker://x:1"}]}',
    '{"name":"a\\u003cb","replicas":3,"env":[{"name":"X","value":"\\u2028 é \\"q\\" \\\\"}]}',
    '{"k":[],"m":{},"n":null,"t":true,"f":1.5,"big":1e400}',
    '"just a string"',
    "not json at all\nsecond line",
    "",
    "x",
]


def _difflib(old: str | None, new: str | None) -> str:
    a = pretty(old).split("\n") if old else []
    b = pretty(new).split("\n") if new else []
    out = "\n".join(difflib.unified_diff(a, b, fromfile="o", tofile="n", lineterm=""))
    return out + "\n" if out else ""


@pytest.mark.parametrize("value", VALUES)
def test_create_and_delete_diffs_are_difflibs(value: str) -> None:
    assert unified_diff(None, value, "o", "n") == _difflib(None, value)
    assert unified_diff(value, None, "o", "n") == _difflib(value, None)


@pytest.mark.parametrize("value", [v for v in VALUES if v and v[0] in '{["'])
def test_pretty_is_json_dumps_indent_2(value: str) -> None:
    assert pretty(value) == json.dumps(json.loads(value), indent=2, ensure_ascii=False)


def test_one_line_create_has_a_one_line_range() -> None:
    assert unified_diff(None, "x", "o", "n") == "--- o\n+++ n\n@@ -0,0 +1 @@\n+x\n"


def test_remembered_json_is_a_fresh_encoding_and_invisible_to_equality() -> None:
    spec = UnitSpec("web", (App("docker://x:1", args=("<a>",)),), replicas=2)
    first = to_json(spec)
    assert first == go_json(spec_to_dict(spec))
    assert to_json(spec) is first  # remembered, not encoded again
    twin = UnitSpec("web", (App("docker://x:1", args=("<a>",)),), replicas=2)
    assert spec == twin and hash(spec) == hash(twin) and repr(spec) == repr(twin)
    changed = dataclasses.replace(spec, replicas=3)  # a new spec: its own JSON
    assert '"replicas":3' in to_json(changed)
