"""The typed rollout report: strict decoding, a lossless round trip, one judgement."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kaylee_sync.errors import StoreError
from kaylee_sync.health import (
    FleetTally,
    Phase,
    RolloutReport,
    StuckWatch,
    Verdict,
    decode_report,
    encode_report,
    judge,
)

KEY = "/kaylee2/scheduler/rollouts/web"

reports = st.builds(
    RolloutReport,
    phase=st.sampled_from(Phase),
    hash6=st.text(max_size=8),
    desired=st.integers(0, 1000),
    running=st.integers(0, 1000),
    message=st.text(max_size=40),
    failed_hash=st.text(max_size=8),
    error=st.text(max_size=40),
    created=st.dictionaries(st.text(max_size=20), st.floats(0, 1e10), max_size=3),
    updated=st.none() | st.floats(0, 1e10),
)


@given(reports)
def test_a_report_survives_encoding_unchanged(report: RolloutReport) -> None:
    assert decode_report(encode_report(report), KEY) == report


def test_a_report_written_before_the_type_existed_reads_the_same() -> None:
    # the exact bytes the scheduler wrote as a dict (keys sorted), with an int time
    old = (
        '{"created": {"k2:web:abcdef:1:0.service": 1700000000.5}, "desired": 2, '
        '"error": "", "failed_hash": "", "hash6": "abcdef", "message": "1/2 new", '
        '"phase": "rolling", "running": 1, "updated": 1700000001}'
    )
    report = decode_report(old, KEY)
    assert report.phase is Phase.ROLLING and report.running == 1 and report.updated == 1.7e9 + 1
    assert json.loads(encode_report(report)) == json.loads(old)


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("null", "expected a JSON object"),
        ("[]", "expected a JSON object"),
        ("{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ('{"phase": "exploding"}', 'phase: unknown phase "exploding"'),
        ('{"phase": ["steady"]}', "phase: unknown phase"),
        ('{"phase": "steady", "desired": -1}', "desired: expected a count"),
        ('{"phase": "steady", "running": true}', "running: expected a count"),
        ('{"phase": "steady", "running": 1e400}', "running: expected a count"),
        ('{"phase": "steady", "hash6": 7}', "hash6: expected a string"),
        ('{"phase": "steady", "created": []}', "created: expected an object"),
        ('{"phase": "steady", "created": {"u": NaN}}', "created.u: expected a unix time"),
        ('{"phase": "steady", "updated": 1e300}', "updated: expected a unix time"),
        ('{"phase": "steady", "updated": "soon"}', "updated: expected a unix time"),
    ],
)
def test_a_malformed_record_is_an_error_naming_the_key_and_field(
    value: str | bytes, names: str
) -> None:
    with pytest.raises(StoreError) as raised:
        decode_report(value, KEY)
    assert str(raised.value).startswith(KEY + ": ") and names in str(raised.value)


def same(h: str) -> bool:
    return h == "abcdef"


def steady(**changes: object) -> RolloutReport:
    base = RolloutReport(Phase.STEADY, hash6="abcdef", desired=2, running=2)
    return RolloutReport(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_done_needs_a_steady_report_about_this_spec_and_fleet_agreeing() -> None:
    assert judge(steady(), is_identity=same, desired=2).verdict is Verdict.DONE
    agrees = FleetTally(new_total=2, new_running=2, old=0)
    assert judge(steady(), is_identity=same, desired=2, fleet=agrees).verdict is Verdict.DONE
    for tally in (FleetTally(2, 2, 1), FleetTally(2, 1, 0), FleetTally(3, 3, 0)):
        assert judge(steady(), is_identity=same, desired=2, fleet=tally).verdict is Verdict.PENDING
    assert judge(steady(running=1), is_identity=same, desired=2).verdict is Verdict.PENDING
    # about another spec (another hash, or another instance count): not believed
    assert judge(steady(hash6="012345"), is_identity=same, desired=2).verdict is Verdict.PENDING
    assert judge(steady(), is_identity=same, desired=3).verdict is Verdict.PENDING
    assert judge(None, is_identity=same, desired=2).verdict is Verdict.PENDING


def test_failed_is_a_failure_of_this_hash_only() -> None:
    failed = steady(phase=Phase.FAILED, running=0, failed_hash="abcdef", message="did not run")
    judgement = judge(failed, is_identity=same, desired=2)
    assert judgement.verdict is Verdict.FAILED and judgement.reason == "did not run"
    older = steady(phase=Phase.FAILED, failed_hash="999999")
    assert judge(older, is_identity=same, desired=2).verdict is Verdict.PENDING
    first_deploy = steady(phase=Phase.FAILED, running=0)  # no failed_hash: the current hash
    assert judge(first_deploy, is_identity=same, desired=2).verdict is Verdict.FAILED


def test_stuck_is_no_leader_or_the_same_error_for_longer_than_its_grace() -> None:
    watch = StuckWatch(leaderless_grace=10, error_grace=3)
    assert watch.observe(0, leaderless=True, error="") is None
    assert watch.observe(9, leaderless=True, error="") is None
    assert watch.observe(9.5, leaderless=False, error="") is None  # a leader came back
    assert watch.observe(15, leaderless=True, error="") is None  # the clock starts again
    stuck = watch.observe(25, leaderless=True, error="")
    assert stuck is not None and stuck.leaderless and "none for 10 s" in stuck.reason

    errors = StuckWatch(leaderless_grace=10, error_grace=3)
    assert errors.observe(0, leaderless=False, error="create failed") is None
    assert errors.observe(2, leaderless=False, error="launch failed") is None  # another error
    assert errors.observe(4, leaderless=False, error="launch failed") is None
    stuck = errors.observe(5, leaderless=False, error="launch failed")
    assert stuck is not None and not stuck.leaderless
    assert stuck.reason == "the scheduler keeps failing: launch failed"


def test_quiet_phases_are_the_ones_where_nothing_moves() -> None:
    assert {p for p in Phase if p.quiet} == {
        Phase.STEADY,
        Phase.FAILED,
        Phase.DELETED,
        Phase.REVERTED,  # the last healthy spec runs again; the failed hash is pinned
        Phase.PAUSED,  # an operator holds the rollout
    }
