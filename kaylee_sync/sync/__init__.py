"""Sync: read what etcd holds, apply a Plan to it in fenced transactions, keep the records.

:func:`read_actual` gives the planner its "actual" half at one etcd revision;
:func:`apply_plan` writes a Plan (guarded, fenced, batched, ownership-safe order);
``sync/inventory`` (:mod:`.inventory`) records which units Git owns, ``sync/status``
(:mod:`.status`) what the last attempts did, and ``sync/suspended/<name>``
(:mod:`.suspend`) which units Git must leave alone. Nothing here knows about Git or fleet:
:mod:`.syncer` strings the layers together.
"""

from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.apply import ApplyResult, apply_plan
from kaylee_sync.sync.inventory import assemble, encode_inventory, next_inventory
from kaylee_sync.sync.status import (
    AttemptRecord,
    SyncStatus,
    read_status,
    record_attempt,
    write_status,
)
from kaylee_sync.sync.suspend import (
    decode_suspension,
    encode_suspension,
    list_suspensions,
    resume,
    suspend,
)

__all__ = [
    "ApplyResult",
    "AttemptRecord",
    "SyncStatus",
    "apply_plan",
    "assemble",
    "decode_suspension",
    "encode_inventory",
    "encode_suspension",
    "list_suspensions",
    "next_inventory",
    "read_actual",
    "read_status",
    "record_attempt",
    "resume",
    "suspend",
    "write_status",
]
