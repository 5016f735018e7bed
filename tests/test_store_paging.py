"""Prefix reads come in pages: more than grpc's 64 MiB under the prefix still reads whole.

The small page sizes here make a few dozen keys span many pages, so the paging itself
(continuing after the last key, one revision for all pages) is exercised with little
data; one slow test writes more than the 64 MiB that a single response may carry.
"""

from __future__ import annotations

import dataclasses

import pytest

from kaylee_sync.settings import EtcdSettings
from kaylee_sync.store import Store, keys


@pytest.mark.parametrize("page_keys", [1, 3, 7, 1000])
def test_a_paged_read_returns_every_key_once_in_order(
    etcd_settings: EtcdSettings, store: Store, page_keys: int
) -> None:
    names = [f"u{i:03}" for i in range(40)]
    for name in names:
        store.put_unit(name, f'{{"name":"{name}"}}')
    store.put("sync/inventory", "{}")  # a neighbour outside units/ must not leak in
    with Store(etcd_settings, page_keys=page_keys) as paged:
        listed = paged.list_units()
        assert [s.key for s in listed] == [keys.unit_key(n) for n in names]
        assert [s.value for s in listed] == [f'{{"name":"{n}"}}'.encode() for n in names]
        assert paged.unit_names() == names
        assert len(paged.get_prefix("")) == len(names) + 1


def test_pages_after_the_first_read_the_first_pages_revision(
    etcd_settings: EtcdSettings, store: Store
) -> None:
    for i in range(10):
        store.put_unit(f"u{i}", "old")

    class Interleaved(Store):
        """Writes between two pages, as another client could."""

        def __init__(self, settings: EtcdSettings) -> None:
            super().__init__(settings, page_keys=4)
            self.pages = 0
            real_call = self._conn.call

            def call(action: str, fn):  # type: ignore[no-untyped-def]
                result = real_call(action, fn)
                if action == "read units/":
                    self.pages += 1
                    if self.pages == 1:
                        store.put_unit("u9", "new")
                        store.delete_unit("u5")
                        store.put_unit("u95", "added")
                return result

            self._conn.call = call  # type: ignore[method-assign]

    with Interleaved(etcd_settings) as paged:
        listed = paged.list_units()
    assert paged.pages == 3
    # The snapshot of the first page: u5 still there, u9 old, u95 not yet written.
    assert [(s.key, s.value) for s in listed] == [
        (keys.unit_key(f"u{i}"), b"old") for i in range(10)
    ]


@pytest.mark.slow
def test_more_than_64_mib_under_the_prefix_is_read_whole(
    etcd_settings: EtcdSettings, store: Store
) -> None:
    value = b"x" * (1024 * 1024)  # 1 MiB: etcd's largest request is 1.5 MiB
    count = 70  # 70 MiB: more than one grpc message may carry
    # Moving 70 MiB can take longer than the fixture's 2 s on a loaded machine.
    patient = dataclasses.replace(etcd_settings, timeout=60.0)
    try:
        for i in range(count):
            store.put(f"units/big{i:02}", value)
        with Store(patient) as reader:  # the default page fails as too large, then halves
            listed = reader.list_units()
        assert [s.key for s in listed] == [keys.unit_key(f"big{i:02}") for i in range(count)]
        assert all(s.value == value for s in listed)
    finally:
        for i in range(count):
            store.delete(f"units/big{i:02}")
