"""The ``/kaylee2`` keyspace on etcd v3 (see :mod:`kaylee_sync.store.keys` for the layout).

Public surface: :class:`Store`, its records (:class:`StoredValue`, :class:`WatchEvent`),
transaction data (:class:`Compare`, :class:`Op`) and the key helpers. etcd3 and grpc never
leave this package; their errors arrive as ``kaylee_sync.errors.StoreError`` and kin.
"""

from kaylee_sync.store.keys import (
    INVENTORY,
    MASTER,
    RESTART,
    ROLLOUTS,
    STATUS,
    SUSPENDED,
    UNITS,
    restart_key,
    rollout_key,
    suspended_key,
    unit_key,
)
from kaylee_sync.store.store import Store, StoredValue
from kaylee_sync.store.txn import ETCD_MAX_TXN_OPS, Compare, Op
from kaylee_sync.store.watching import WatchEvent

__all__ = [
    "ETCD_MAX_TXN_OPS",
    "INVENTORY",
    "MASTER",
    "RESTART",
    "ROLLOUTS",
    "STATUS",
    "SUSPENDED",
    "UNITS",
    "Compare",
    "Op",
    "Store",
    "StoredValue",
    "WatchEvent",
    "restart_key",
    "rollout_key",
    "suspended_key",
    "unit_key",
]
