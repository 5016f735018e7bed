"""What etcd holds, kept between syncs: one full read, then only the keys that changed.

A sync of a 10,000-unit repository used to read all 10,000 values (10 MB) from etcd for
every commit. :class:`EtcdView` keeps the :class:`~kaylee_sync.sync.actual.Keyspace` of
its last read and then learns only what changed, in one of two ways:

- **From a watch** (the usual way): from each full read on, the view watches the whole
  prefix from that read's revision. To know that the watch has delivered every change
  made before the sync began, the sync writes a fresh token to ``sync/view-mark``
  (fenced on ``master`` like every write of the leader) and takes the watch's events up
  to that token's: a watch delivers the events of its range in revision order, so once
  the token's event is in, so is every change made before it. This works on every
  etcd 3 (etcd's own progress requests would save the write, but before 3.5.8 they
  could overtake the event they report: etcd issue 15220). It costs one small write,
  instead of etcd scanning every value under the prefix.
- **From a range read** of the keys written since the last read's revision
  (``min_mod_revision``): when the watch could not be opened, or the token cannot be
  written (not the leader). etcd still scans all values to filter them, but sends only
  the changes. The same answer carries how many keys the keyspace holds; if the keys
  known plus the new ones are more than that, keys were deleted.

Deletions are not patched in: a deleted key (a delete event, or the count) makes the
view read everything again, as does anything odd about the watch (it ended, failed, was
compacted, or the token did not arrive within the store's timeout).

What the view returns is the same :class:`ActualState` a full read would (a test holds
the two to that on long random histories), plus the names of the units whose keys
changed, for the incremental plan. It never decides on its own that something is safe
to skip: whoever writes behind its back is still caught by the guards of the apply (each
write is conditional on the revision the plan saw), and the sync then reads in full.
"""

from __future__ import annotations

import logging
import secrets

from kaylee_sync.errors import StoreError
from kaylee_sync.plan.model import ActualState
from kaylee_sync.store import Compare, Op, Store, StoredValue, keys
from kaylee_sync.store.watching import WatchStream
from kaylee_sync.sync.actual import Keyspace
from kaylee_sync.sync.inventory import FORMAT_VERSION

log = logging.getLogger(__name__)


class _Doubt(Exception):
    """The watch cannot say what changed: the view reads everything."""


class EtcdView:
    """The keyspace of one :class:`Store`, read in full once and then by difference."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._space: Keyspace | None = None
        self._revision = 0  # the revision up to which the keyspace is known
        self._watch: WatchStream | None = None
        self._token = secrets.token_hex(8)  # this view's marks: <token>:<n>
        self._marks = 0
        self.full_reads = 0  # how many reads were full (for tests and metrics)
        self.watched_reads = 0  # how many reads came from the watch

    def forget(self) -> None:
        """Read everything at the next :meth:`read` (after a failure, or when in doubt);
        the watch, if any, is cancelled."""
        self._space = None
        self._unwatch()

    def read(self, fence: Compare | None = None) -> tuple[ActualState, frozenset[str] | None]:
        """What etcd holds now, and the units whose keys changed since the last read
        (None after a full read: all may have). ``fence`` guards the watch's mark (the
        leader's condition on ``master``)."""
        try:
            space = self._space
            if space is not None:
                changed = self._changes(space, fence)
                if changed is not None:
                    touched = space.ingest(changed)
                    state = space.state()
                    inventory = state.inventory
                    if inventory is not None and inventory.stored.version != FORMAT_VERSION:
                        return state, None  # a format-1 inventory does not say what changed
                    return state, frozenset(touched | space.shard_cache.changed)
            self.forget()
            everything, _, revision = self.store.read_since(0)
            space = Keyspace()
            space.ingest(everything)
            state = space.state()
        except BaseException:
            self.forget()  # a half-read keyspace is not a base for the next read
            raise
        self._space, self._revision = space, revision
        self.full_reads += 1
        # Watched from here: the writes of the sync that follows (all 10,000 units after
        # a full read of an empty prefix) arrive as events in the background, and the
        # next sync does not read them back with a range.
        self._open_watch(revision)
        return state, None

    def generations(self) -> dict[str, int]:
        """The restart generation of each unit (``restart/<name>``) as last read."""
        return self._space.generations.copy() if self._space is not None else {}

    # -- what changed ----------------------------------------------------------------------

    def _changes(self, space: Keyspace, fence: Compare | None) -> list[StoredValue] | None:
        """The keys written since the last read, latest last; None if some were deleted
        (or the view cannot tell)."""
        if self._watch is not None:
            try:
                watched = self._watched(fence)
            except _Doubt:
                return None  # the watch failed or saw a deletion: read everything
            if watched is not None:
                self.watched_reads += 1
                return watched
        changed, count, revision = self.store.read_since(self._revision)
        new = sum(1 for stored in changed if stored.key not in space.present)
        if len(space.present) + new != count:
            return None  # something was deleted
        self._revision = revision
        if self._watch is None:
            self._open_watch(revision)  # the next sync tries the watch again
        return changed

    def _open_watch(self, revision: int) -> None:
        """Watch every change after ``revision``; without a watch the next sync reads a
        range."""
        try:
            self._watch = self.store.watch_stream("", start_revision=revision + 1)
        except StoreError as exc:
            log.debug("no watch for the next sync, it reads a range: %s", exc)

    def _watched(self, fence: Compare | None) -> list[StoredValue] | None:
        """The changes the watch delivered up to a fresh mark; None if the mark could not
        be written (a range read then tells); :class:`_Doubt` if the watch failed or
        delivered a deletion. Either way the watch is dropped."""
        assert self._watch is not None
        self._marks += 1
        mark = f"{self._token}:{self._marks}".encode()
        put = Op.put(keys.VIEW_MARK, mark)
        if not self.store.txn([fence] if fence is not None else [], [put]):
            self._unwatch()  # no longer the leader: no marks; read a range this time
            return None
        try:
            events = self._watch.take_until(
                lambda e: e.key == keys.VIEW_MARK and e.value == mark,
                timeout=self.store.settings.timeout,
            )
        except StoreError as exc:
            log.info("the sync's watch failed (%s); reading etcd in full", exc)
            self._unwatch()
            raise _Doubt from exc
        if any(event.type == "delete" for event in events):
            self._unwatch()
            raise _Doubt  # deletions are not patched in
        self._revision = events[-1].mod_revision
        return [StoredValue(e.key, e.value, e.mod_revision, 0) for e in events]

    def _unwatch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
