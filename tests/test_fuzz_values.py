"""Property tests of the decoders that range-check values from flags and from etcd.

Whatever the text or JSON, each decoder either returns a value inside its documented
bounds or raises its one documented error — never anything else, which is what would
turn into a traceback (a flag) or a dead loop (a stored value) further on.
"""

from __future__ import annotations

import json
import math

import click
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from kaylee_sync.bounds import MAX_DURATION, MAX_UNIX_TIME, load_json
from kaylee_sync.cli.values import Duration, Seconds
from kaylee_sync.errors import StoreError, UsageError
from kaylee_sync.plan.compute import format_time
from kaylee_sync.settings import check_endpoint
from kaylee_sync.sync.status import decode_status
from kaylee_sync.sync.suspend import decode_suspension

EXAMPLES = hsettings(max_examples=200)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**40), max_value=10**40),
)
number_text = st.one_of(
    numbers.map(str), st.from_regex(r"-?[0-9]{1,400}(\.[0-9]+)?(e-?[0-9]{1,4})?")
)
duration_text = st.one_of(
    st.from_regex(r"([0-9]{1,12}(\.[0-9]{1,3})?[smhd]){1,4}", fullmatch=True), st.text(max_size=30)
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


@EXAMPLES
@given(duration_text)
def test_a_duration_is_positive_and_at_most_ten_years_or_a_usage_error(text: str) -> None:
    try:
        seconds = Duration().convert(text, None, None)
    except click.BadParameter:
        return
    assert 0 < seconds <= MAX_DURATION
    format_time(1_700_000_000 + seconds)  # what suspend shows: must not raise


@EXAMPLES
@given(st.one_of(number_text, st.text(max_size=30)))
def test_seconds_are_finite_and_within_their_range_or_a_usage_error(text: str) -> None:
    try:
        value = Seconds(min=0.1, max=3600).convert(text, None, None)
    except click.BadParameter:
        return
    assert math.isfinite(value) and 0.1 <= value <= 3600


@EXAMPLES
@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda s, h, p: f"{s}://{h}:{p}",
            st.sampled_from(["http", "https", "ftp", "unix", ""]),
            st.text(max_size=20),
            st.text(max_size=8),
        ),
    )
)
def test_an_endpoint_is_a_host_and_port_url_or_a_usage_error(text: str) -> None:
    try:
        url = check_endpoint(text)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert url.startswith(("http://", "https://"))


def _status(record: dict[str, object]) -> bytes:
    return json.dumps({"v": 1, "attempt": record, "last_success": None}).encode()


@EXAMPLES
@given(
    st.fixed_dictionaries(
        {"time": json_values, "commit": json_values, "ok": json_values},
        optional={
            "duration_seconds": json_values,
            "counts": json_values,
            "problems": json_values,
            "problems_omitted": json_values,
        },
    )
)
def test_a_stored_status_decodes_within_bounds_or_is_malformed(record: dict[str, object]) -> None:
    try:
        status = decode_status(_status(record))
    except (ValueError, KeyError, TypeError):
        return
    attempt = status.attempt
    assert 0 <= attempt.time <= MAX_UNIX_TIME
    assert 0 <= attempt.duration_seconds <= MAX_DURATION
    format_time(attempt.time)  # what 'kaylee-sync status' shows: must not raise


@EXAMPLES
@given(
    st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"who": json_values, "reason": json_values, "since": numbers, "until": json_values}
        ).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=40),
    )
)
def test_a_stored_suspension_decodes_within_bounds_or_names_its_key(value: bytes) -> None:
    try:
        suspension = decode_suspension(value, "sync/suspended/web")
    except StoreError as exc:
        assert "sync/suspended/web" in str(exc) and "\n" not in str(exc)
        return
    assert 0 <= suspension.since <= MAX_UNIX_TIME
    assert suspension.until is None or 0 <= suspension.until <= MAX_UNIX_TIME
    if suspension.until is not None:
        format_time(suspension.until)


@pytest.mark.parametrize("depth", [10, 10_000, 200_000])
def test_deeply_nested_json_is_malformed_not_a_recursion_error(depth: int) -> None:
    value = b"[" * depth + b"]" * depth
    try:
        load_json(value)
    except ValueError as exc:
        assert "nested too deeply" in str(exc)
