"""The sync's view of etcd between syncs (sync/view.py), against a real etcd.

The equivalence test (test_sync_incremental.py) holds the view's answers to full reads
on long random histories; these tests pin down how it learns what changed: a full read,
then a range read of the keys written since, then the watch up to a mark, and a full
read again whenever the watch cannot be trusted.
"""

from __future__ import annotations

import pytest

from kaylee_sync.store import Compare, Store, keys
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.view import EtcdView

LEADER = "test:1:leader"


@pytest.fixture
def fence(store: Store) -> Compare:
    store.put(keys.MASTER, LEADER)
    return Compare.value_equals(keys.MASTER, LEADER)


def _units(view: EtcdView, fence: Compare | None) -> tuple[dict[str, str], frozenset[str] | None]:
    state, touched = view.read(fence)
    return {name: unit.value for name, unit in state.units.items()}, touched


def _watching(store: Store, fence: Compare) -> EtcdView:
    """A view past its full read: the next read uses the watch."""
    store.put_unit("web", "w1")
    store.put_unit("db", "d1")
    view = EtcdView(store)
    view.read(fence)
    assert (view.full_reads, view.watched_reads) == (1, 0)
    return view


def test_the_watch_brings_a_write_made_just_before_the_read(store: Store, fence: Compare) -> None:
    view = _watching(store, fence)
    for i in range(5):  # each write right before the read: only the mark makes this exact
        store.put_unit("web", f"w{i + 2}")
        units, touched = _units(view, fence)
        assert units == {"web": f"w{i + 2}", "db": "d1"}
        assert touched == {"web"}
    assert (view.full_reads, view.watched_reads) == (1, 5)
    assert store.get(keys.VIEW_MARK) is not None


def test_what_the_watch_builds_is_what_a_full_read_sees(store: Store, fence: Compare) -> None:
    view = _watching(store, fence)
    store.put_unit("web", "w2")
    store.put_unit("web", "w3")  # two events of one key: the last one counts
    store.put_unit("api", "a1")
    store.put(keys.policy_key("api"), '{"rollout": {}}')
    state, touched = view.read(fence)
    assert touched == {"web", "api"}
    assert view.watched_reads == 1
    full = read_actual(store)
    assert state.units == full.units
    assert state.state_index == full.state_index


def test_a_deletion_seen_by_the_watch_makes_the_next_read_full(
    store: Store, fence: Compare
) -> None:
    view = _watching(store, fence)
    store.delete_unit("db")
    units, touched = _units(view, fence)
    assert units == {"web": "w1"}
    assert touched is None  # a full read: everything may have changed
    assert view.full_reads == 2


def test_a_watch_that_ended_makes_the_read_full_and_correct(store: Store, fence: Compare) -> None:
    view = _watching(store, fence)
    view._watch.cancel()  # type: ignore[union-attr]  # as if etcd or grpc ended the stream
    store.put_unit("web", "w2")
    units, touched = _units(view, fence)
    assert units == {"web": "w2", "db": "d1"}
    assert touched is None
    assert view.full_reads == 2
    # and the view recovers: the full read opened a new watch
    store.put_unit("db", "d2")
    assert _units(view, fence) == ({"web": "w2", "db": "d2"}, frozenset({"db"}))
    assert (view.full_reads, view.watched_reads) == (2, 1)


def test_a_view_that_is_no_longer_the_leader_writes_no_mark_and_reads_a_range(
    store: Store, fence: Compare
) -> None:
    view = _watching(store, fence)
    store.put(keys.MASTER, "someone-else")
    mark = store.get(keys.VIEW_MARK)
    store.put_unit("web", "w2")
    units, touched = _units(view, fence)
    assert units == {"web": "w2", "db": "d1"}
    assert touched is not None and "web" in touched  # still incremental, from the range
    assert store.get(keys.VIEW_MARK) == mark  # the fence refused the mark
    assert (view.full_reads, view.watched_reads) == (1, 0)
    # leading again: the watch the range read opened serves the next sync
    store.put(keys.MASTER, LEADER)
    store.put_unit("db", "d2")
    assert _units(view, fence) == ({"web": "w2", "db": "d2"}, frozenset({"db"}))
    assert (view.full_reads, view.watched_reads) == (1, 1)


def test_forget_cancels_the_watch_and_reads_in_full(store: Store, fence: Compare) -> None:
    view = _watching(store, fence)
    store.put_unit("web", "w2")
    _units(view, fence)
    watch = view._watch
    view.forget()
    assert view._watch is None and watch is not None
    with pytest.raises(Exception, match="ended"):
        watch.take_until(lambda e: True, timeout=1.0)
    store.put_unit("web", "w3")
    assert _units(view, fence) == ({"web": "w3", "db": "d1"}, None)


def test_what_a_sync_wrote_after_a_full_read_comes_from_the_watch(
    store: Store, fence: Compare
) -> None:
    view = EtcdView(store)
    view.read(fence)  # an empty prefix, as a new leader of a new cluster sees it
    for i in range(300):  # what the first sync then writes
        store.put_unit(f"u{i:03}", f"v{i}")
    units, touched = _units(view, fence)
    assert units == {f"u{i:03}": f"v{i}" for i in range(300)}
    assert touched == {f"u{i:03}" for i in range(300)}
    assert (view.full_reads, view.watched_reads) == (1, 1)  # no range read of them
