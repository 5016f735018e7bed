"""sync/status: last attempt and last success, written fenced, read back leniently."""

from __future__ import annotations

import json
import logging

import pytest

from kaylee_sync.errors import ConflictError
from kaylee_sync.store import Compare, Store, keys
from kaylee_sync.sync.status import (
    MAX_PROBLEMS,
    AttemptRecord,
    SyncStatus,
    read_status,
    record_attempt,
    write_status,
)

PROBLEM: dict[str, str | int] = {
    "file": "units/web.yaml",
    "line": 3,
    "field": "apps[0].image",
    "reason": "required",
}


def attempt(ok: bool, commit: str = "c1", at: float = 100.0, **kw: object) -> AttemptRecord:
    return AttemptRecord(time=at, commit=commit, ok=ok, **kw)  # type: ignore[arg-type]


def test_a_failed_attempt_keeps_the_last_success() -> None:
    good = attempt(True, "c1", counts={"create": 2})
    status = record_attempt(None, good)
    assert status.last_success == good

    bad = attempt(False, "c2", at=200.0, error="etcd unavailable")
    status = record_attempt(status, bad)
    status = record_attempt(status, attempt(False, "c3", at=300.0))

    assert status.attempt.commit == "c3"
    assert status.last_success == good


def test_a_failure_with_no_previous_status_has_no_last_success() -> None:
    assert record_attempt(None, attempt(False)).last_success is None


def test_status_round_trips_through_etcd(store: Store) -> None:
    good = attempt(
        True,
        counts={"create": 1, "unchanged": 4},
        problems=[PROBLEM],
        prune_refused="",
        duration_seconds=0.25,
        leader="host:1:abc",
    )
    status = record_attempt(record_attempt(None, good), attempt(False, "c2", error="boom"))

    write_status(store, status, fence=None)

    assert read_status(store) == SyncStatus(
        attempt=attempt(False, "c2", error="boom"),
        last_success=AttemptRecord(
            time=100.0,
            commit="c1",
            ok=True,
            counts={"create": 1, "unchanged": 4},
            problems=(PROBLEM,),
            duration_seconds=0.25,
            leader="host:1:abc",
        ),
    )


def test_no_status_reads_as_none(store: Store) -> None:
    assert read_status(store) is None


def test_a_fence_that_does_not_hold_leaves_the_status_alone(store: Store) -> None:
    store.put(keys.MASTER, "other")

    with pytest.raises(ConflictError):
        write_status(
            store,
            record_attempt(None, attempt(True)),
            fence=Compare.value_equals(keys.MASTER, "me"),
        )

    assert read_status(store) is None


def test_errors_are_stored_on_one_line_without_url_credentials(store: Store) -> None:
    error = "fetch of https://bot:s3cret@git.example/r.git failed:\n  fatal: denied"
    write_status(store, record_attempt(None, attempt(False, error=error)), fence=None)

    stored = read_status(store)

    assert stored is not None
    assert stored.attempt.error == "fetch of https://***@git.example/r.git failed: fatal: denied"
    assert "s3cret" not in store.get(keys.STATUS).value.decode()  # type: ignore[union-attr]


def test_problems_beyond_the_cap_are_counted_not_stored(store: Store) -> None:
    many = [dict(PROBLEM, line=i) for i in range(MAX_PROBLEMS + 7)]
    write_status(store, record_attempt(None, attempt(False, problems=many)), fence=None)

    stored = read_status(store)

    assert stored is not None
    assert len(stored.attempt.problems) == MAX_PROBLEMS
    assert stored.attempt.problems_omitted == 7


@pytest.mark.parametrize(
    "value", [b"nonsense", b"[]", b'{"v":1}', b'{"v":1,"attempt":{"commit":"c"}}']
)
def test_a_malformed_status_reads_as_none_and_is_logged(
    store: Store, value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store.put(keys.STATUS, value)
    caplog.set_level(logging.WARNING, logger="kaylee_sync.sync")

    assert read_status(store) is None
    assert any("sync/status is malformed" in m for m in caplog.messages)


def test_the_stored_json_is_what_operators_expect(store: Store) -> None:
    write_status(store, record_attempt(None, attempt(True, problems=[PROBLEM])), fence=None)

    doc = json.loads(store.get(keys.STATUS).value)  # type: ignore[union-attr]

    assert doc["v"] == 1
    assert doc["attempt"] == doc["last_success"]
    assert set(doc["attempt"]) == {
        "time",
        "commit",
        "ok",
        "error",
        "counts",
        "problems",
        "problems_omitted",
        "prune_refused",
        "prune_hold",
        "prune_overridden",
        "prune_released",
        "duration_seconds",
        "leader",
    }
    assert doc["attempt"]["problems"] == [PROBLEM]
