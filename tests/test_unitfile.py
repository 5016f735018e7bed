"""fleet's unit-file parse/serialize/hash, checked against fleet's own outputs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kaylee_sync.errors import KayleeError
from kaylee_sync.unitfile import (
    LINE_MAX,
    UnitFileError,
    UnitOption,
    canonical,
    option_problems,
    parse,
    serialize,
    text_hash,
    unit_hash,
    value_problem,
)
from tests import vectors

ROWS: list[dict[str, Any]] = vectors.load("fleet-unit-hash.jsonl")


@pytest.mark.parametrize("row", [r for r in ROWS if "error" not in r], ids=lambda r: str(r["id"]))
def test_canonical_text_and_hash_match_fleet(row: dict[str, Any]) -> None:
    assert canonical(row["input"]) == row["canonical"]
    assert text_hash(row["input"]) == row["hash"]


@pytest.mark.parametrize("row", [r for r in ROWS if "error" in r], ids=lambda r: str(r["id"]))
def test_text_fleet_refuses_is_refused(row: dict[str, Any]) -> None:
    with pytest.raises(UnitFileError) as caught:
        parse(row["input"])
    # Our messages mirror go-systemd's, though only the refusal itself is required.
    assert str(caught.value) == row["error"]


def test_vectors_cover_both_outcomes() -> None:
    assert sum("error" in r for r in ROWS) > 0
    assert sum("error" not in r for r in ROWS) > 0


def test_unit_file_error_is_a_kaylee_value_error() -> None:
    assert issubclass(UnitFileError, KayleeError)
    assert issubclass(UnitFileError, ValueError)


def test_serialize_groups_sections_in_first_seen_order() -> None:
    options = [
        UnitOption("Unit", "A", "1"),
        UnitOption("Service", "B", "2"),
        UnitOption("Unit", "C", "3"),
    ]
    assert serialize(options) == "[Unit]\nA=1\nC=3\n\n[Service]\nB=2\n"


def test_empty_unit_serializes_to_nothing() -> None:
    assert serialize([]) == ""
    assert unit_hash([]) == "da39a3ee5e6b4b0d3255bfef95601890afd80709"


def test_option_hash_is_sha1_of_serialized_text() -> None:
    options = [UnitOption("Service", "ExecStart", "/bin/true")]
    assert unit_hash(options) == text_hash("[Service]\nExecStart=/bin/true\n")


def test_values_split_on_newline_only() -> None:
    # U+2028, \x1c and friends are line breaks to str.splitlines but not to go-systemd.
    text = "[S]\nA=x\u2028y\x1cz\x85w\n"
    assert parse(text) == (UnitOption("S", "A", "x\u2028y\x1cz\x85w"),)


def test_values_are_trimmed_with_go_whitespace() -> None:
    text = "[S]\nA=\u2028\u3000x\x1c\xa0\t\nB= \x1f \n"
    assert parse(text) == (UnitOption("S", "A", "x\x1c"), UnitOption("S", "B", "\x1f"))


def test_crlf_lines_lose_their_carriage_return() -> None:
    assert parse("[S]\r\nA=1\r\n") == (UnitOption("S", "A", "1"),)


def test_continuation_keeps_backslash_and_newline() -> None:
    assert parse("[S]\nA=a \\\n  b\nB=c\n") == (
        UnitOption("S", "A", "a \\\n  b"),
        UnitOption("S", "B", "c"),
    )


def test_blank_line_ends_continuation_and_newline_is_put_back() -> None:
    assert parse("[S]\nA=a\\\n   \nB=c\n") == (
        UnitOption("S", "A", "a\\\n"),
        UnitOption("S", "B", "c"),
    )


def test_comment_ending_in_backslash_swallows_next_line() -> None:
    assert parse("[S]\n# c \\\nA=1\nB=2\n") == (UnitOption("S", "B", "2"),)


def test_text_before_first_section_is_ignored() -> None:
    assert parse("junk = here\nA=1\n[S]\nB=2\n") == (UnitOption("S", "B", "2"),)


def test_section_name_runs_to_the_next_bracket() -> None:
    assert parse("[S\nT]\nA=1\n") == (UnitOption("S\nT", "A", "1"),)


def test_duplicates_and_empty_values_are_kept_and_hash_is_literal() -> None:
    assert parse("[S]\nA=\nA=#x %n\n") == (UnitOption("S", "A", ""), UnitOption("S", "A", "#x %n"))


@pytest.mark.parametrize(
    "text",
    ["[S", "[S]\nA\n", "[S]\nA", "[S] x\n"],
    ids=["unterminated-section", "no-equals", "eof-in-name", "garbage-after-section"],
)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(UnitFileError):
        parse(text)


def test_line_of_line_max_bytes_is_refused() -> None:
    line = "A=" + "x" * (LINE_MAX - 2)
    with pytest.raises(UnitFileError, match="line too long"):
        parse(f"[S]\n{line}\n")
    assert parse(f"[S]\n{line[:-1]}\n") == (UnitOption("S", "A", "x" * (LINE_MAX - 3)),)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a\nb", "newline"),
        ("a\rb", "carriage return"),
        ("a\0b", "NUL"),
        (" a", "whitespace"),
        ("a\u2028", "whitespace"),
        ("a\\", "backslash"),
    ],
)
def test_value_problem_names_the_reason(value: str, problem: str) -> None:
    reason = value_problem(value)
    assert reason is not None
    assert problem in reason


@pytest.mark.parametrize("value", ["", "a b", "x\x1c", "$$ip %n #c", "a\\b", '"q\\\\"'])
def test_value_problem_accepts_round_trippable_values(value: str) -> None:
    assert value_problem(value) is None
    assert parse(serialize([UnitOption("S", "A", value)])) == (UnitOption("S", "A", value),)


def test_option_problems_reports_bad_values_and_long_lines() -> None:
    options = [
        UnitOption("S", "A", "ok"),
        UnitOption("S", "B", "trailing "),
        UnitOption("S", "C", "x" * LINE_MAX),
    ]
    problems = option_problems(options)
    assert len(problems) == 2
    assert problems[0].startswith("[S] B:")
    assert problems[1].startswith("[S] C:")


_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
_sections = st.sampled_from(["Unit", "Service", "X-Fleet", "Install"])
_values = st.text(st.characters(exclude_characters="\n\r\0", codec="utf-8"), max_size=40).filter(
    lambda v: value_problem(v) is None
)


@given(st.lists(st.builds(UnitOption, _sections, _names, _values), max_size=12))
def test_round_trip_of_safe_options_preserves_order_within_sections(
    options: list[UnitOption],
) -> None:
    reparsed = parse(serialize(options))
    for section in {o.section for o in options}:
        assert [o for o in reparsed if o.section == section] == [
            o for o in options if o.section == section
        ]
    assert len(reparsed) == len(options)
    assert canonical(serialize(options)) == serialize(options)
