"""Reading presence keys: the ``etcdKey`` check, in etcd's v2 or v3 keyspace.

A service (or its sidekick, as in the original's sample unit) writes a key while it
serves; the prober asks which keys exist under one directory per unit and interval. The
v3 keyspace is read through the store, the v2 keyspace through fleet's etcd v2 client:
each library stays in its adapter, and errors arrive here already as KayleeErrors.
"""

from __future__ import annotations

from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.store import Store


class EtcdPresence:
    """A :data:`~kaylee_sync.probe.prober.PresenceReader` over the cluster's etcd."""

    def __init__(self, store: Store | None, v2: Etcd2Client | None) -> None:
        self.store, self.v2 = store, v2

    def __call__(self, keyspace: str, directory: str) -> set[str]:
        if keyspace == "v3":
            return set() if self.store is None else self.store.keys_outside(directory)
        if self.v2 is None:
            return set()
        node = self.v2.get(directory.rstrip("/") or "/", recursive=True)
        if node is None:
            return set()
        return {n.key for n in node.walk() if not n.dir}
