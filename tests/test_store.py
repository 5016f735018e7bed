"""The /kaylee2 keyspace against a real etcd: units, restarts, transactions, watches, failover."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kaylee_sync.embedded_etcd import EmbeddedEtcd, free_port
from kaylee_sync.errors import ConflictError, StoreError, StoreUnavailable, UsageError
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.store import (
    MASTER,
    Compare,
    Op,
    Store,
    StoredValue,
    WatchEvent,
    restart_key,
    rollout_key,
    suspended_key,
)
from kaylee_sync.store.txn import packed


def test_unit_put_get_delete_round_trip(store: Store) -> None:
    revision = store.put_unit("web", '{"name": "web"}')

    stored = store.get_unit("web")

    assert stored == StoredValue("units/web", b'{"name": "web"}', revision, revision)
    assert store.delete_unit("web") is True
    assert store.get_unit("web") is None
    assert store.delete_unit("web") is False


def test_list_units_is_sorted_by_name(store: Store) -> None:
    for name in ["zeta", "alpha", "mid"]:
        store.put_unit(name, name)

    assert [s.key for s in store.list_units()] == ["units/alpha", "units/mid", "units/zeta"]
    assert store.unit_names() == ["alpha", "mid", "zeta"]


def test_prefixes_are_isolated(store: Store, etcd_settings: EtcdSettings) -> None:
    # A sibling prefix that merely starts with the same characters must not leak in.
    other = EtcdSettings(endpoints=etcd_settings.endpoints, prefix=etcd_settings.prefix + "x")
    with Store(other) as neighbour:
        neighbour.put_unit("foreign", "{}")
        store.put_unit("mine", "{}")
        assert store.unit_names() == ["mine"]
        assert neighbour.unit_names() == ["foreign"]


def test_units_listing_ignores_other_areas(store: Store) -> None:
    store.put_unit("web", "{}")
    store.bump_restart("web")
    store.put(MASTER, "me")

    assert store.unit_names() == ["web"]
    assert [s.key for s in store.get_prefix("")] == ["master", "restart/web", "units/web"]


def test_restart_generation_counts_bumps_and_clears(store: Store) -> None:
    assert store.restart_generation("web") == 0
    assert store.bump_restart("web") == 1
    assert store.bump_restart("web") == 2
    assert store.restart_generation("web") == 2

    store.clear_restart("web")

    assert store.restart_generation("web") == 0


def test_concurrent_restart_bumps_never_lose_an_increment(etcd_settings: EtcdSettings) -> None:
    # Two writers, each with its own connection, as two `kaylee restart` processes would be.
    errors: list[BaseException] = []

    def bump_twenty() -> None:
        try:
            with Store(etcd_settings) as own:
                for _ in range(20):
                    own.bump_restart("web")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump_twenty) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    with Store(etcd_settings) as reader:
        assert reader.restart_generation("web") == 40


def test_garbage_restart_generation_is_a_store_error(store: Store) -> None:
    store.put(restart_key("web"), "not a number")

    with pytest.raises(StoreError, match="restart/web"):
        store.restart_generation("web")


def test_leader_is_the_master_key(store: Store) -> None:
    assert store.leader() is None
    store.put(MASTER, "host:42:abc")
    assert store.leader() == "host:42:abc"


def test_revision_grows_with_every_write(store: Store) -> None:
    before = store.revision()
    written = store.put("sync/status", "{}")
    assert written > before
    assert store.revision() >= written


@pytest.mark.parametrize(
    "compare",
    [
        Compare.value_equals(MASTER, "someone-else"),
        Compare.mod_revision_equals(MASTER, 1),
        Compare.missing(MASTER),
    ],
    ids=["value", "mod-revision", "missing"],
)
def test_failed_compare_writes_nothing(store: Store, compare: Compare) -> None:
    store.put(MASTER, "me")

    applied = store.txn([compare], [Op.put("units/web", "{}"), Op.delete(MASTER)])

    assert applied is False
    assert store.get_unit("web") is None
    assert store.leader() == "me"


def test_txn_applies_when_every_compare_holds(store: Store) -> None:
    revision = store.put(MASTER, "me")

    applied = store.txn(
        [Compare.value_equals(MASTER, "me"), Compare.mod_revision_equals(MASTER, revision)],
        [Op.put("units/web", "{}"), Op.put("units/db", "{}")],
    )

    assert applied is True
    assert store.unit_names() == ["db", "web"]


def test_apply_batched_splits_300_ops_into_3_fenced_transactions(store: Store) -> None:
    store.put(MASTER, "me")
    ops = [Op.put(f"units/u{i:03}", str(i)) for i in range(300)]

    ran = store.apply_batched(ops, fence=Compare.value_equals(MASTER, "me"))

    assert ran == 3  # 127 + 127 + 46: with the fence, 128 compares at most
    assert len(store.list_units()) == 300


def test_apply_batched_with_lost_fence_writes_nothing(store: Store) -> None:
    store.put(MASTER, "new-leader")
    ops = [Op.put(f"units/u{i:03}", str(i)) for i in range(300)]

    with pytest.raises(ConflictError, match="batch 1 of 3 not applied"):
        store.apply_batched(ops, fence=Compare.value_equals(MASTER, "old-leader"))

    assert store.list_units() == []


def test_apply_batched_names_the_batch_whose_guard_failed(store: Store) -> None:
    revision = store.put_unit("u100", "old")
    store.put_unit("u100", "changed by hand")
    ops = [Op.put(f"units/u{i:03}", str(i)) for i in range(100)]
    ops.append(
        Op.put("units/u100", "new", guard=Compare.mod_revision_equals("units/u100", revision))
    )

    with pytest.raises(ConflictError, match=r"batch 2 of 2 .*batches 1-1 were applied"):
        store.apply_batched(ops, fence=None, batch=64)

    assert len(store.list_units()) == 65  # batch 1 (64 units) plus u100
    assert store.get_unit("u100") is not None


def test_apply_batched_rejects_oversized_batches_and_duplicate_keys(store: Store) -> None:
    with pytest.raises(ValueError, match="batch"):
        store.apply_batched([Op.delete("units/a")], fence=None, batch=128)
    with pytest.raises(ValueError, match="twice"):
        store.apply_batched([Op.delete("units/a"), Op.put("units/a", "x")], fence=None)
    assert store.apply_batched([], fence=None) == 0


def test_watch_sees_put_and_delete(store: Store) -> None:
    events, cancel = store.watch_prefix("units/")
    try:
        put_rev = store.put_unit("web", "{}")
        store.put("sync/status", "{}")  # outside the watched prefix
        del_rev = store.delete_unit("web") and store.revision()

        seen = [next(events), next(events)]
    finally:
        cancel()

    assert seen == [
        WatchEvent("put", "units/web", b"{}", put_rev),
        WatchEvent("delete", "units/web", b"", del_rev),
    ]
    assert list(events) == []  # cancelled: the iterator ends


def test_watch_from_a_revision_replays_history(store: Store) -> None:
    first = store.put_unit("a", "1")
    store.put_unit("b", "2")

    events, cancel = store.watch_prefix("units/", start_revision=first)
    try:
        keys = [next(events).key, next(events).key]
    finally:
        cancel()

    assert keys == ["units/a", "units/b"]


def test_cancel_from_another_thread_ends_a_blocked_iterator(store: Store) -> None:
    events, cancel = store.watch_prefix("")
    threading.Timer(0.2, cancel).start()

    assert list(events) == []


def test_key_bound_to_a_lease_goes_with_it(store: Store) -> None:
    lease = store.lease(10)
    store.put(MASTER, "me", lease=lease)
    assert store.refresh_lease(lease) > 0

    assert store.revoke(lease) is True

    assert store.leader() is None
    assert store.revoke(lease) is False
    assert store.refresh_lease(lease) <= 0


@pytest.mark.parametrize("name", ["a/b", "..", ".", "../master", "", "x\n", "/abs"])
def test_names_that_would_leave_their_area_are_refused(store: Store, name: str) -> None:
    attempts: list[Callable[[], object]] = [
        lambda: store.put_unit(name, "{}"),
        lambda: store.get_unit(name),
        lambda: store.bump_restart(name),
        lambda: store.delete_unit(name),
        lambda: store.put(suspended_key(name), "{}"),
        lambda: store.put(rollout_key(name), "{}"),
    ]
    for attempt in attempts:
        with pytest.raises(UsageError):
            attempt()
    assert store.get_prefix("") == []


def test_relative_keys_must_stay_inside_the_prefix(store: Store) -> None:
    for key in ["/etc/passwd", "units/../master", "sync//status", "sync/suspended/a/b"]:
        with pytest.raises(UsageError):
            store.put(key, "x")
    with pytest.raises(UsageError):
        store.txn([Compare.missing("../x")], [])


def _dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_unreachable_endpoint_fails_fast_with_one_line(etcd_prefix: str) -> None:
    settings = EtcdSettings(
        endpoints=(_dead_endpoint(),),
        prefix=etcd_prefix,
        username="kaylee",
        password="hunter2-secret",
        timeout=2.0,
    )
    started = time.monotonic()

    with Store(settings) as store, pytest.raises(StoreUnavailable) as caught:
        store.list_units()

    assert time.monotonic() - started < settings.timeout + 1
    message = str(caught.value)
    assert message == f"cannot reach etcd at {settings.endpoints[0]}: connection refused"
    assert "hunter2" not in message and "\n" not in message


def test_every_dead_endpoint_is_named(etcd_prefix: str) -> None:
    settings = EtcdSettings(endpoints=(_dead_endpoint(), _dead_endpoint()), prefix=etcd_prefix)

    with Store(settings) as store, pytest.raises(StoreUnavailable) as caught:
        store.get_unit("web")

    assert settings.endpoints_label in str(caught.value)


def test_fails_over_from_a_dead_endpoint_to_a_live_one(
    etcd_endpoint: str, etcd_prefix: str
) -> None:
    # etcd3 picks the first endpoint at random, so try enough fresh stores to start on
    # the dead one at least once (and every request must succeed regardless).
    settings = EtcdSettings(endpoints=(_dead_endpoint(), etcd_endpoint), prefix=etcd_prefix)
    for i in range(8):
        with Store(settings) as store:
            store.put_unit(f"u{i}", "{}")
            _events, cancel = store.watch_prefix("units/")
            cancel()
    with Store(settings) as store:
        assert len(store.unit_names()) == 8


def test_watch_on_a_server_that_dies_raises_store_unavailable(tmp_path: Path) -> None:
    with EmbeddedEtcd(data_dir=tmp_path / "data", name="kaylee-dying") as server:
        store = Store(EtcdSettings(endpoints=(server.endpoint,), timeout=2.0))
        events, cancel = store.watch_prefix("units/")
    try:
        with pytest.raises(StoreUnavailable, match=f"cannot reach etcd at {server.endpoint}"):
            next(events)
    finally:
        cancel()
        store.close()


@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=40_000), min_size=0, max_size=4),
        max_size=60,
    ),
    st.integers(min_value=1, max_value=127),
    st.integers(min_value=0, max_value=1024),
)
def test_packed_chunks_keep_groups_whole_and_within_ops_and_bytes(
    sizes: list[list[int]], size: int, key_bytes: int
) -> None:
    """Every op lands once, in order; a group is never split; a chunk of more than one
    group stays within the op count and the byte budget (the budget set low here)."""
    budget = 100_000
    groups = [
        [Op.put(f"units/g{g}-{i}", b"v" * n, guard=Compare.missing(f"units/g{g}-{i}"))
         for i, n in enumerate(group)]
        for g, group in enumerate(sizes)
    ]  # fmt: skip
    chunks = packed(groups, size, budget, key_bytes)
    assert [op for chunk in chunks for op in chunk] == [op for group in groups for op in group]
    for chunk in chunks:
        keys_in = {op.key.split("-")[0] for op in chunk}
        whole = [g for g in groups if g and g[0].key.split("-")[0] in keys_in]
        assert sum(len(g) for g in whole) == len(chunk)  # only whole groups
        if len(whole) > 1:
            assert len(chunk) <= size
            cost = sum(2 * (len(op.key) + key_bytes + 64) + len(op.value) for op in chunk)
            assert cost <= budget
