"""Suspensions: suspend, list, expire and resume, against a real etcd."""

from __future__ import annotations

import json

import pytest

from kaylee_sync.errors import StoreError, UsageError
from kaylee_sync.plan.model import Suspension
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.suspend import (
    decode_suspension,
    encode_suspension,
    list_suspensions,
    resume,
    suspend,
)


def test_a_suspension_round_trips(store: Store) -> None:
    made = suspend(store, "web", who="alice", reason="hotfix #12", until=2000.0, now=1000.0)

    assert made == Suspension("web", "alice", "hotfix #12", 1000.0, 2000.0, made.mod_revision)
    assert made.mod_revision > 0
    assert list_suspensions(store) == {"web": made}
    doc = json.loads(store.get(keys.suspended_key("web")).value)  # type: ignore[union-attr]
    assert doc == {"who": "alice", "reason": "hotfix #12", "since": 1000.0, "until": 2000.0}


def test_a_suspension_without_end_lasts_until_resumed() -> None:
    s = Suspension("web", "alice", "why", since=10.0)

    assert decode_suspension(encode_suspension(s).encode(), "sync/suspended/web") == s
    assert not s.expired(1e12)


def test_a_suspension_expires_at_its_end_time(store: Store) -> None:
    made = suspend(store, "web", who="alice", reason="why", until=2000.0, now=1000.0)

    assert not made.expired(1999.9)
    assert made.expired(2000.0)


def test_suspending_again_replaces_the_suspension(store: Store) -> None:
    suspend(store, "web", who="alice", reason="first", until=None, now=1.0)
    second = suspend(store, "web", who="bob", reason="second", until=None, now=2.0)

    assert list_suspensions(store) == {"web": second}


@pytest.mark.parametrize(
    ("who", "reason", "until", "message"),
    [
        ("alice", "  ", None, "a reason is required"),
        ("", "why", None, "who is suspending it is required"),
        ("alice", "why", 999.0, "not in the future"),
    ],
)
def test_a_suspension_needs_who_why_and_a_future_end(
    store: Store, who: str, reason: str, until: float | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        suspend(store, "web", who=who, reason=reason, until=until, now=1000.0)

    assert list_suspensions(store) == {}


@pytest.mark.parametrize(
    ("name", "message"), [("a/b", "must not contain '/'"), ("../master", "'..' segment")]
)
def test_a_name_that_would_escape_its_key_is_refused(store: Store, name: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        suspend(store, name, who="alice", reason="why", until=None, now=1.0)

    assert store.get_prefix("") == []


def test_resume_removes_the_suspension_and_returns_it(store: Store) -> None:
    made = suspend(store, "web", who="alice", reason="why", until=None, now=1.0)

    assert resume(store, "web") == made
    assert list_suspensions(store) == {}
    assert resume(store, "web") is None


def test_resume_removes_even_a_malformed_suspension(store: Store) -> None:
    store.put(keys.suspended_key("web"), "not json")
    with pytest.raises(StoreError, match="sync/suspended/web is not a valid suspension"):
        list_suspensions(store)

    removed = resume(store, "web")

    assert removed is not None and removed.reason == "(malformed suspension removed)"
    assert list_suspensions(store) == {}


@pytest.mark.parametrize(
    "value",
    [
        b"\xff",
        b"[]",
        b'{"who":"a","reason":"r"}',
        b'{"who":"a","reason":"r","since":"yesterday"}',
        b'{"who":"a","reason":"r","since":true}',
        b'{"who":1,"reason":"r","since":1}',
        b'{"who":"a","reason":"r","since":1,"until":-5}',
    ],
)
def test_a_malformed_suspension_is_an_error_naming_its_key(value: bytes) -> None:
    with pytest.raises(StoreError, match=r"^sync/suspended/web is not a valid suspension"):
        decode_suspension(value, "sync/suspended/web")
