"""What etcd holds, kept between syncs: one full read, then only the keys that changed.

A sync of a 10,000-unit repository used to read all 10,000 values (10 MB) from etcd for
every commit. :class:`EtcdView` keeps the :class:`~kaylee_sync.sync.actual.Keyspace` of
its last read and asks etcd only for the keys written since that read's revision
(``min_mod_revision``): a commit that changes one unit brings back that unit, one
inventory shard, the header and the status. The same answer carries how many keys the
keyspace holds; if the keys known plus the new ones are more than that, keys were
deleted, and deletions are not in such an answer, so the view reads everything again.

What the view returns is the same :class:`ActualState` a full read would (a test holds
the two to that on long random histories), plus the names of the units whose keys
changed, for the incremental plan. It never decides on its own that something is safe
to skip: whoever writes behind its back is still caught by the guards of the apply (each
write is conditional on the revision the plan saw), and the sync then reads in full.
"""

from __future__ import annotations

from kaylee_sync.plan.model import ActualState
from kaylee_sync.store import Store
from kaylee_sync.sync.actual import Keyspace
from kaylee_sync.sync.inventory import FORMAT_VERSION


class EtcdView:
    """The keyspace of one :class:`Store`, read in full once and then by difference."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._space: Keyspace | None = None
        self._revision = 0  # the revision of the last read
        self.full_reads = 0  # how many reads were full (for tests and metrics)

    def forget(self) -> None:
        """Read everything at the next :meth:`read` (after a failure, or when in doubt)."""
        self._space = None

    def read(self) -> tuple[ActualState, frozenset[str] | None]:
        """What etcd holds now, and the units whose keys changed since the last read
        (None after a full read: all may have)."""
        try:
            if self._space is not None:
                changed, count, revision = self.store.read_since(self._revision)
                space = self._space
                new = sum(1 for stored in changed if stored.key not in space.present)
                if len(space.present) + new == count:  # nothing was deleted
                    touched = space.ingest(changed)
                    state = space.state()
                    self._revision = revision
                    inventory = state.inventory
                    if inventory is not None and inventory.stored.version != FORMAT_VERSION:
                        return state, None  # a format-1 inventory does not say what changed
                    return state, frozenset(touched | space.shard_cache.changed)
            self._space = None
            everything, _, revision = self.store.read_since(0)
            space = Keyspace()
            space.ingest(everything)
            state = space.state()
        except BaseException:
            self._space = None  # a half-read keyspace is not a base for the next read
            raise
        self._space, self._revision = space, revision
        self.full_reads += 1
        return state, None

    def generations(self) -> dict[str, int]:
        """The restart generation of each unit (``restart/<name>``) as last read."""
        return dict(self._space.generations) if self._space is not None else {}
