"""Reading presence keys: the ``etcdKey`` check, in etcd's v2 or v3 keyspace.

A service (or its sidekick, as in the original's sample unit) writes a key while it
serves; the prober asks which keys exist under one directory per unit and interval. The
v3 keyspace is read through the store, the v2 keyspace through fleet's etcd v2 client:
each library stays in its adapter, and errors arrive here already as KayleeErrors.
"""

from __future__ import annotations

from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.probe.prober import Prober
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.store import Store


class EtcdPresence:
    """A :data:`~kaylee_sync.probe.prober.PresenceReader` over the cluster's etcd."""

    def __init__(self, store: Store | None, v2: Etcd2Client | None) -> None:
        self.store, self.v2 = store, v2

    def close(self) -> None:
        """Close the v2 client (the store belongs to the caller)."""
        if self.v2 is not None:
            self.v2.close()

    def __call__(self, keyspace: str, directory: str) -> set[str]:
        if keyspace == "v3":
            return set() if self.store is None else self.store.keys_outside(directory)
        if self.v2 is None:
            return set()
        node = self.v2.get(directory.rstrip("/") or "/", recursive=True)
        if node is None:
            return set()
        return {n.key for n in node.walk() if not n.dir}


def cluster_prober(store: Store, settings: EtcdSettings) -> Prober:
    """The leader's prober for this cluster: presence keys read from its etcd (v3 through
    ``store``; v2 through a client on the same endpoints and credentials). Not started."""
    v2 = Etcd2Client(
        list(settings.endpoints),
        ca_cert=settings.ca_file,
        cert=settings.cert_file,
        key=settings.key_file,
        username=settings.username,
        password=settings.password,
        timeout=settings.timeout,
    )
    return Prober(EtcdPresence(store, v2))
