"""What people read: the plan as text (terminal, CI log) and as a pull-request comment."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kaylee_sync.plan.compute import make_plan
from kaylee_sync.plan.diffs import pretty
from kaylee_sync.plan.model import ActualState, DesiredState, Plan
from kaylee_sync.plan.output_markdown import render_markdown
from kaylee_sync.plan.output_text import MAX_NAMES, render_text
from kaylee_sync.spec import EnvVar, UnitSpec
from tests.plan_builders import (
    NOW,
    actual,
    desired,
    problem,
    spec,
    suspension,
    synced,
    unit,
    worlds,
)

WEB = spec("web", replicas=3)


def mixed_plan() -> Plan:
    before = desired(WEB, spec("db"), spec("old"), spec("same"), spec("held"))
    after = desired(
        dataclasses.replace(WEB, replicas=12),
        spec("db", "docker://db:2"),
        spec("new", replicas=2),
        spec("same"),
        spec("held", "docker://held:2"),
        problems=[problem("units/bad.yaml", "bad")],
    )
    return make_plan(after, synced(before, suspended=[suspension("held")]), now=NOW)


def big_spec(name: str, lines: int) -> UnitSpec:
    return spec(name, args=tuple(f"--flag-{name}-{k}=value" for k in range(lines)))


def many_changes(count: int, lines: int = 1) -> Plan:
    units = [big_spec(f"u{k:05d}", lines) for k in range(count)]
    return make_plan(desired(*units), actual({}, {}), now=NOW)


# -- text ----------------------------------------------------------------------------------


def test_text_has_header_one_line_per_change_and_the_totals_last() -> None:
    text = render_text(mixed_plan(), color=False)
    lines = text.splitlines()
    assert lines[0] == (
        "Plan for https://git.example.com/team/units.git main @ 1a2b3c4 (units) against etcd"
    )
    assert "  ! bad   invalid   units/bad.yaml is invalid; units/bad is not created" in lines
    assert any(line.startswith("  ~ db    update    file changed; fleet: dest") for line in lines)
    assert any(line.startswith("  # held  suspended Git would update it, but") for line in lines)
    assert any(line.startswith("  + new   create    new file; fleet: starts 2") for line in lines)
    assert any(line.startswith("  - old   delete    units/old.yaml was removed") for line in lines)
    assert not any(" same " in line for line in lines)  # unchanged: only counted
    assert lines[-1] == "1 to create, 2 to update, 1 to delete, 1 unchanged, 1 suspended, " + (
        "1 invalid file."
    )


def test_text_lists_diffs_fleet_units_and_invalid_files() -> None:
    text = render_text(mixed_plan(), color=False)
    assert "--- etcd units/web\n+++ units/web.yaml @ 1a2b3c4\n" in text
    assert '-  "replicas": 3,\n+  "replicas": 12,' in text
    assert "  fleet units:\n    - k2:db:" in text
    assert "Invalid files:\n  units/bad.yaml:3: apps[0].image: must be a string\n" in text


def test_text_caps_the_fleet_unit_names_it_lists() -> None:
    plan = make_plan(desired(dataclasses.replace(WEB, replicas=40)), actual({}, {}), now=NOW)
    text = render_text(plan, color=False)
    assert text.count("    + k2:web:") == MAX_NAMES
    assert f"    + … and {40 - MAX_NAMES} more" in text


def test_text_is_colored_only_when_asked() -> None:
    plain = render_text(mixed_plan(), color=False)
    assert "\x1b" not in plain
    colored = render_text(mixed_plan(), color=True)
    assert "\x1b[32m  + new" in colored and "\x1b[31m-" in colored


def test_text_shows_prune_refusal_and_expired_suspensions() -> None:
    etcd = synced(desired(WEB), suspended=[suspension("gone", until=NOW - 5)])
    text = render_text(make_plan(desired(), etcd, now=NOW), color=False)
    assert "  x web  prune-refused units/web.yaml was removed from Git, but the prune" in text
    assert (
        "Prune guard: refusing to delete every managed unit (1); restore the files, or pass" in text
    )
    assert "Suspension ran out for gone: Git syncs them again." in text


def test_text_escapes_control_characters_from_commits_and_etcd() -> None:
    sneaky = unit(spec("web"), path="units/\x1b]0;pwned\x07.yaml")
    text = render_text(make_plan(desired(sneaky), actual({}, {}), now=NOW), color=False)
    assert "\x1b" not in text and "\x07" not in text
    assert "units/\\x1b]0;pwned\\x07.yaml" in text


def test_text_of_a_plan_without_changes_is_just_the_header_and_totals() -> None:
    state = desired(WEB)
    text = render_text(make_plan(state, synced(state), now=NOW), color=False)
    assert text.splitlines()[1:] == ["", "0 to create, 0 to update, 0 to delete, 1 unchanged."]


# -- markdown ------------------------------------------------------------------------------


def test_markdown_puts_title_table_diffs_then_problems() -> None:
    md = render_markdown(mixed_plan())
    title = md.index("## kaylee-sync plan for <code>")
    table = md.index("| action | unit | file | fleet effect |\n|---|---|---|---|\n")
    diffs = md.index("<details><summary>~ update <code>db</code>: file changed</summary>")
    problems = md.index("### Invalid files\n\n- <code>units/bad.yaml:3: apps[0].image:")
    assert title < table < diffs < problems
    totals = "1 to create, 2 to update, 1 to delete, 1 unchanged, 1 suspended, 1 invalid file"
    assert f"**{totals}**" in md
    new = "| + create | <code>new</code> | <code>units/new.yaml</code> | starts 2 fleet units |"
    assert new in md
    assert "```diff\n--- etcd units/db\n" in md and "\n```\n\n</details>" in md
    assert "<code>same</code>" not in md


def test_markdown_escapes_what_would_break_the_table_or_inject_html() -> None:
    odd = unit(spec("web", env=(EnvVar("X", "a```b"),)), path="units/<script>|x`.yaml")
    md = render_markdown(make_plan(desired(odd), actual({}, {}), now=NOW))
    outside_fences = re.sub(r"````diff\n.*?\n````\n", "", md, flags=re.S)
    assert "<script>" not in outside_fences and "&lt;script&gt;&#124;x`.yaml" in md
    row = next(line for line in md.splitlines() if line.startswith("| + create"))
    assert row.count("|") - row.count("\\|") == 5  # four cells, none split by the path
    assert "````diff\n" in md  # a fence longer than the value's backtick run


def test_markdown_of_5000_changed_units_fits_a_github_comment() -> None:
    plan = many_changes(5000)
    md = render_markdown(plan)
    assert len(md) <= 65536
    omitted = re.search(r"_… (\d+) more rows omitted; run kaylee-sync plan locally", md)
    assert omitted is not None
    shown_rows = md.count("\n| + create |")
    assert shown_rows > 100 and shown_rows + int(omitted.group(1)) == 5000
    assert "**5000 to create, 0 to update, 0 to delete, 0 unchanged**" in md
    assert "_… 5000 more diffs omitted; run kaylee-sync plan locally for the full diff._" in md


def test_markdown_cuts_the_largest_diff_first_and_says_how_much() -> None:
    units = [big_spec("huge", 4000), *(big_spec(f"small{k}", 5) for k in range(5))]
    md = render_markdown(make_plan(desired(*units), actual({}, {}), now=NOW), limit=20000)
    assert len(md) <= 20000
    assert md.count("<details>") == md.count("</details>") == 6
    assert md.count("diff truncated (") == 1
    assert re.search(r"… diff truncated \((\d+) lines omitted\); run kaylee-sync plan locally", md)
    assert "--flag-small4-4=value" in md  # every small diff is whole


def test_markdown_drops_later_diffs_when_even_short_ones_do_not_fit() -> None:
    md = render_markdown(many_changes(300, lines=40), limit=65536)
    assert len(md) <= 65536
    assert "| + create | <code>u00299</code>" in md  # the table is whole
    dropped = re.search(r"_… (\d+) more diffs omitted; run kaylee-sync plan locally", md)
    assert dropped is not None
    assert md.count("<details>") + int(dropped.group(1)) == 300
    assert "<code>u00000</code>: new file</summary>" in md  # the first ones are kept


def test_markdown_keeps_room_for_invalid_files_when_the_table_is_cut() -> None:
    problems = [problem(f"units/bad{k:04d}.yaml") for k in range(2000)]
    units = [big_spec(f"u{k:05d}", 1) for k in range(2000)]
    md = render_markdown(make_plan(desired(*units, problems=problems), actual({}, {}), now=NOW))
    assert len(md) <= 65536
    assert "### Invalid files" in md and "more issues omitted" in md
    assert "more rows omitted" in md


@settings(max_examples=40, deadline=None)
@given(worlds(), st.integers(300, 20000))
def test_markdown_never_exceeds_the_limit(
    world: tuple[DesiredState, ActualState, dict[str, Any]], limit: int
) -> None:
    state, etcd, options = world
    md = render_markdown(make_plan(state, etcd, **options), limit=limit)
    assert len(md) <= limit
    if not md.endswith("…\n"):  # not hard-cut: every block it opened is closed
        assert md.count("<details>") == md.count("</details>")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_pretty_prints_exactly_what_json_dumps_with_indent_2_does(data: Any) -> None:
    value = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    assert pretty(value) == json.dumps(data, indent=2, ensure_ascii=False)


def test_pretty_leaves_a_value_that_is_not_json_as_it_is() -> None:
    assert pretty("name: web\n") == "name: web\n"
