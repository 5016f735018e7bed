"""The ``/kaylee2`` keyspace as a small typed API: units, restarts, leader, transactions.

Callers (sync, scheduler, election, the ``kaylee`` CLI) speak in unit names and relative
keys; :class:`Store` adds the prefix (checked in one place, :meth:`Store._key`), talks to
etcd through :class:`~kaylee_sync.store.connection.Connection` — which owns failover and
error translation — and returns plain :class:`StoredValue` records, never etcd3 objects.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints
from etcd3.utils import prefix_range_end

from kaylee_sync.errors import ConflictError, StoreError, UsageError
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.store import keys
from kaylee_sync.store.connection import Connection
from kaylee_sync.store.txn import DEFAULT_BATCH, ETCD_MAX_TXN_OPS, Compare, Op, batches, packed
from kaylee_sync.store.watching import WatchEvent, WatchStream, open_stream, open_watch

# Keys per range request. A prefix read in one response stops working past grpc's message
# limit (64 MiB, see store/connection.py): 10,000 units of a few KiB fit, 70 of 1 MiB do
# not. Pages of this many keys keep a response at a few MiB for ordinary units; a page
# that is still too large (big values) is halved and asked again, down to one key, which
# always fits (etcd refuses values over 1.5 MiB).
RANGE_PAGE_KEYS = 1000

# Compare-and-swap retries before bump_restart gives up. Each failed attempt means another
# writer succeeded, so this bounds contention, not time; 100 concurrent bumps are absurd.
_MAX_CAS_ATTEMPTS = 100


@dataclass(frozen=True)
class StoredValue:
    """One key as read from etcd. ``key`` is relative to the prefix (``units/web``)."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int


class Store:
    """The kaylee keyspace on etcd v3. Thread-safe; use as a context manager or close()."""

    def __init__(self, settings: EtcdSettings, *, page_keys: int = RANGE_PAGE_KEYS) -> None:
        # No I/O here: the first request connects (and authenticates), so every connection
        # problem surfaces from the same place with the same one-line messages.
        if page_keys < 1:
            raise ValueError(f"page_keys must be at least 1, not {page_keys}")
        self.settings = settings
        self.page_keys = page_keys
        self.prefix = settings.prefix
        self._conn = Connection(settings)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key(self, relative: str, *, is_prefix: bool = False) -> str:
        """The absolute key for ``relative``; the one place keys are checked (UsageError)."""
        return keys.absolute_key(self.prefix, relative, is_prefix=is_prefix)

    def _stored(self, kv: Any) -> StoredValue:
        return StoredValue(
            key=keys.relative_key(self.prefix, kv.key),
            value=bytes(kv.value),
            mod_revision=int(kv.mod_revision),
            create_revision=int(kv.create_revision),
        )

    # -- units -------------------------------------------------------------------------

    def get_unit(self, name: str) -> StoredValue | None:
        return self.get(keys.unit_key(name))

    def list_units(self) -> list[StoredValue]:
        """Every unit, sorted by name, read in one range request (one consistent revision)."""
        return self.get_prefix(keys.UNITS)

    def unit_names(self) -> list[str]:
        start = self._key(keys.UNITS, is_prefix=True)
        kvs, _, _ = self._range(start, "list units", keys_only=True)
        return [keys.relative_key(self.prefix, kv.key)[len(keys.UNITS) :] for kv in kvs]

    def put_unit(self, name: str, value: str) -> int:
        """Write a unit's JSON; returns the revision of the write."""
        return self.put(keys.unit_key(name), value)

    def delete_unit(self, name: str) -> bool:
        """Delete a unit; False when it did not exist."""
        return self.delete(keys.unit_key(name))

    # -- restarts and leader -----------------------------------------------------------

    def restart_generation(self, name: str) -> int:
        """The unit's restart generation; 0 when it was never restarted."""
        stored = self.get(keys.restart_key(name))
        return 0 if stored is None else _generation(stored)

    def bump_restart(self, name: str) -> int:
        """Atomically add one to the restart generation; returns the new generation.

        A compare-and-swap loop: the write succeeds only if the key still has the mod
        revision (or absence) we read, so concurrent bumps never lose an increment.
        """
        key = keys.restart_key(name)
        for _ in range(_MAX_CAS_ATTEMPTS):
            current = self.get(key)
            if current is None:
                generation, expect = 1, Compare.missing(key)
            else:
                generation = _generation(current) + 1
                expect = Compare.mod_revision_equals(key, current.mod_revision)
            if self.txn([expect], [Op.put(key, str(generation))]):
                return generation
        raise ConflictError(f"could not bump {key}: {_MAX_CAS_ATTEMPTS} concurrent writers won")

    def clear_restart(self, name: str) -> None:
        self.delete(keys.restart_key(name))

    def leader(self) -> str | None:
        """The current leader's id (the ``master`` key), None when there is no leader."""
        stored = self.get(keys.MASTER)
        return None if stored is None else stored.value.decode("utf-8", errors="replace")

    # -- low level: keys, leases, watches ----------------------------------------------

    def get(self, key: str) -> StoredValue | None:
        full = self._key(key)
        response = self._conn.call(f"read {key}", lambda c: c.get_response(full))
        return self._stored(response.kvs[0]) if response.kvs else None

    def get_prefix(self, rel_prefix: str) -> list[StoredValue]:
        """Every key under ``rel_prefix`` ("" for the whole keyspace), sorted by key."""
        start = self._key(rel_prefix, is_prefix=True)
        kvs, _, _ = self._range(start, f"read {rel_prefix or 'keyspace'}")
        return [self._stored(kv) for kv in kvs]

    def read_since(self, revision: int) -> tuple[list[StoredValue], int, int]:
        """The keys of the whole keyspace written after ``revision`` (created or changed,
        sorted by key), how many keys it holds in all, and the revision of the read.

        A key deleted since shows only in the count: a caller that knew the keys at
        ``revision`` finds that some are gone when its count of them, plus the keys new
        here, is more than the count. etcd still scans the keyspace to filter it, but
        sends only what changed.
        """
        start = self._key("", is_prefix=True)
        kvs, count, at = self._range(start, "read keyspace changes", min_mod_revision=revision + 1)
        return [self._stored(kv) for kv in kvs], count, at

    def _range(
        self, start: str, action: str, *, keys_only: bool = False, min_mod_revision: int = 0
    ) -> tuple[list[Any], int, int]:
        """Every key-value under the absolute prefix ``start``, sorted, read page by page;
        with the number of keys under it and the revision of the read.

        Each page continues after the last key of the one before, and every page after
        the first reads at the first page's revision: together they are one consistent
        snapshot, exactly what a single range request would have returned.
        ``min_mod_revision`` leaves out keys last written before it (the count does not).
        """
        cursor, end = start.encode(), prefix_range_end(start.encode())
        revision: int | None = None
        count = 0
        limit = self.page_keys
        out: list[Any] = []
        while True:
            ask = functools.partial(
                _range_page,
                cursor,
                end,
                limit=limit,
                revision=revision,
                keys_only=keys_only,
                min_mod_revision=min_mod_revision or None,
            )
            try:
                response = self._conn.call(action, ask)
            except StoreError as exc:
                if limit > 1 and _too_large(exc):
                    limit = max(1, limit // 2)
                    continue
                raise
            out.extend(response.kvs)
            if revision is None:
                revision, count = int(response.header.revision), int(response.count)
            if not response.more or not response.kvs:
                return out, count, revision
            cursor = bytes(response.kvs[-1].key) + b"\0"  # the next key after the last

    def keys_outside(self, absolute_prefix: str) -> set[str]:
        """The keys under an absolute prefix *outside* the kaylee keyspace (keys only).

        For health checks' presence keys (``/services/web/<id>``), which the services
        write wherever they like; reading them is all kaylee-sync ever does there.
        """
        if not absolute_prefix.startswith("/"):
            raise UsageError(f"key prefix {absolute_prefix!r} must be absolute")
        response = self._conn.call(
            f"read {absolute_prefix}",
            lambda c: c.get_prefix_response(absolute_prefix, keys_only=True),
        )
        return {bytes(kv.key).decode("utf-8", errors="replace") for kv in response.kvs}

    def put(self, key: str, value: str | bytes, lease: int | None = None) -> int:
        """Write ``key`` (optionally bound to a lease); returns the revision of the write."""
        full = self._key(key)
        response = self._conn.call(f"write {key}", lambda c: c.put(full, value, lease=lease))
        return int(response.header.revision)

    def delete(self, key: str) -> bool:
        full = self._key(key)
        response = self._conn.call(f"delete {key}", lambda c: c.delete(full, return_response=True))
        return int(response.deleted) > 0

    def revision(self) -> int:
        """The cluster's current revision (of the whole etcd, not only this prefix)."""
        response = self._conn.call(
            "read the revision", lambda c: c.get_response(self.prefix + "/", count_only=True)
        )
        return int(response.header.revision)

    def lease(self, ttl: int) -> int:
        """Grant a lease of ``ttl`` seconds; returns its id."""
        return int(self._conn.call("grant a lease", lambda c: c.lease(ttl)).id)

    def refresh_lease(self, lease_id: int) -> int:
        """Keep a lease alive once; returns its new TTL (<= 0: the lease has expired)."""
        responses = self._conn.call("renew a lease", lambda c: list(c.refresh_lease(lease_id)))
        return int(responses[-1].TTL) if responses else 0

    def revoke(self, lease_id: int) -> bool:
        """Revoke a lease (its keys are deleted); False when it had already expired."""
        try:
            self._conn.call("revoke a lease", lambda c: c.revoke_lease(lease_id))
        except StoreError as exc:
            if "lease not found" in str(exc):
                return False
            raise
        return True

    def watch_prefix(
        self, rel_prefix: str, start_revision: int | None = None
    ) -> tuple[Iterator[WatchEvent], Callable[[], None]]:
        """Watch every key under ``rel_prefix``: (events, cancel).

        Returns once etcd has created the watch, so any later write is seen. Without
        ``start_revision`` events start after the current revision; with it, history from
        that revision is replayed first (StoreError if it was compacted). The iterator
        raises StoreUnavailable if the connection is lost: re-list, then watch again.
        """
        start = self._key(rel_prefix, is_prefix=True).encode()
        return open_watch(self._conn, self.prefix, start, prefix_range_end(start), start_revision)

    def watch_stream(self, rel_prefix: str, start_revision: int | None = None) -> WatchStream:
        """:meth:`watch_prefix` as a :class:`WatchStream` (events, ``take_until``, cancel)."""
        start = self._key(rel_prefix, is_prefix=True).encode()
        return open_stream(self._conn, self.prefix, start, prefix_range_end(start), start_revision)

    # -- transactions ------------------------------------------------------------------

    def txn(self, compare: Sequence[Compare], success: Sequence[Op]) -> bool:
        """Apply ``success`` atomically if every compare holds; False (nothing written) if not."""
        compares = [self._compare(c) for c in compare]
        ops = [self._op(o) for o in success]
        succeeded, _ = self._conn.call(
            "run a transaction", lambda c: c.transaction(compare=compares, success=ops, failure=[])
        )
        return bool(succeeded)

    def apply_batched(
        self,
        ops: Sequence[Op],
        fence: Compare | None,
        batch: int = DEFAULT_BATCH,
        *,
        groups: Sequence[Sequence[Op]] | None = None,
    ) -> int:
        """Apply ``ops`` in transactions of at most ``batch`` ops; returns how many ran.

        ``groups`` (the same ops, grouped) keeps each group in one transaction: a unit
        and its rollout policy land together.

        Every transaction carries ``fence`` (e.g. ``master`` == my id, so a deposed leader
        writes nothing) and the ``guard`` of each of its ops. Batches are atomic one by
        one, not together: if a compare fails, ConflictError says which batch, earlier
        batches stay applied, and the caller re-plans from what is now in etcd.
        """
        if not 1 <= batch < ETCD_MAX_TXN_OPS:
            # < max: a batch's compares are its guards plus the fence, max + 1 otherwise.
            raise ValueError(f"batch must be between 1 and {ETCD_MAX_TXN_OPS - 1}, not {batch}")
        seen: set[str] = set()
        for op in ops:
            if op.key in seen:
                raise ValueError(f"{op.key} appears twice in one batched apply")
            seen.add(op.key)
        # every batch also stays below etcd's request size: a batch of large unit values
        # would otherwise be refused whole, at every sync
        extra = len(self.prefix.encode()) + 1
        if groups is None:
            chunks = batches(list(ops), batch, key_bytes=extra)
        else:
            chunks = packed(groups, batch, key_bytes=extra)
        for number, chunk in enumerate(chunks, start=1):
            guards = [op.guard for op in chunk if op.guard is not None]
            compares = ([fence] if fence is not None else []) + guards
            if not self.txn(compares, chunk):
                why = [fence.describe()] if fence is not None else []
                why += [f"{len(guards)} keys unchanged since read"] if guards else []
                done = f"; batches 1-{number - 1} were applied" if number > 1 else ""
                raise ConflictError(
                    f"batch {number} of {len(chunks)} not applied: "
                    f"a condition no longer holds ({', '.join(why)}){done}"
                )
        return len(chunks)

    def _compare(self, compare: Compare) -> Any:
        build = self._conn.client.transactions
        key = self._key(compare.key)
        if compare.target == "value":
            return build.value(key) == compare.expected
        if compare.target == "mod_revision":
            return build.mod(key) == compare.expected
        return build.create(key) == compare.expected

    def _op(self, op: Op) -> Any:
        build = self._conn.client.transactions
        key = self._key(op.key)
        if op.kind == "put":
            return build.put(key, op.value, lease=op.lease)
        return build.delete(key)


def _range_page(
    start: bytes,
    end: bytes,
    client: Any,
    *,
    limit: int,
    revision: int | None,
    keys_only: bool,
    min_mod_revision: int | None,
) -> Any:
    return client.get_range_response(
        start,
        end,
        sort_order="ascend",
        sort_target="key",
        limit=limit,
        revision=revision,
        keys_only=keys_only,
        min_mod_revision=min_mod_revision,
    )


def _too_large(exc: StoreError) -> bool:
    """Whether ``exc`` is grpc refusing a response over its message size limit."""
    cause = exc.__cause__
    code = getattr(cause, "code", None)
    return callable(code) and code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _generation(stored: StoredValue) -> int:
    try:
        return int(stored.value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise StoreError(
            f"{stored.key} holds {stored.value[:40]!r}, not a restart generation"
        ) from None
