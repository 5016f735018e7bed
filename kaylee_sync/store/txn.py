"""Transactions as plain data: what to compare and what to write, independent of etcd3.

The sync layer builds lists of :class:`Op` (and the :class:`Compare` that fences them)
from a Plan; only :mod:`kaylee_sync.store` turns them into etcd3 requests. Keeping them as
frozen dataclasses makes plans testable without a server and keeps etcd3's operator-
overloading compare objects (``Value(key) == x``) out of every other module.

Keys here are *relative* (``units/web``); the store adds and checks the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# etcd's default --max-txn-ops: the most compares, and the most success ops, in one txn.
ETCD_MAX_TXN_OPS = 128
# Ops per transaction by default: the most etcd takes with a guard each and the fence
# (127 compares + 1). Fewer, larger transactions: each one is an fsync on every member.
DEFAULT_BATCH = ETCD_MAX_TXN_OPS - 1
# etcd's default --max-request-bytes (1.5 MiB): a larger request is refused whole.
ETCD_MAX_REQUEST_BYTES = 1536 * 1024
# What one batch may carry: etcd's limit less room for the fence and the framing of the
# request itself; each op is counted with its full keys and framing (see _cost).
TXN_BYTES = ETCD_MAX_REQUEST_BYTES - 64 * 1024
OP_OVERHEAD = 64  # bytes of protobuf framing per op and per compare, generously


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction. Build it with the class methods."""

    key: str
    target: Literal["value", "mod_revision", "create_revision"]
    expected: bytes | int

    @classmethod
    def value_equals(cls, key: str, value: str | bytes) -> Compare:
        """The key exists and holds exactly ``value`` (e.g. ``master`` == my leader id)."""
        return cls(key, "value", _to_bytes(value))

    @classmethod
    def mod_revision_equals(cls, key: str, revision: int) -> Compare:
        """The key was last written at ``revision``: nobody changed it since it was read."""
        return cls(key, "mod_revision", revision)

    @classmethod
    def missing(cls, key: str) -> Compare:
        """The key does not exist (etcd: create revision == 0)."""
        return cls(key, "create_revision", 0)

    def describe(self) -> str:
        """A short human form for error messages (values are not shown: they may be big)."""
        if self.target == "create_revision":
            return f"{self.key} absent"
        if self.target == "mod_revision":
            return f"{self.key} unchanged since revision {self.expected!r}"
        return f"{self.key} holds the expected value"


@dataclass(frozen=True)
class Op:
    """One write of a transaction: a put (optionally bound to a lease) or a delete.

    ``guard``, when set, is a compare that must also hold for the transaction carrying
    this op (for example the mod revision read at plan time); :meth:`Store.apply_batched`
    adds it to that batch's compares.
    """

    kind: Literal["put", "delete"]
    key: str
    value: bytes = b""
    lease: int | None = None
    guard: Compare | None = None

    @classmethod
    def put(
        cls,
        key: str,
        value: str | bytes,
        lease: int | None = None,
        guard: Compare | None = None,
    ) -> Op:
        return cls("put", key, _to_bytes(value), lease, guard)

    @classmethod
    def delete(cls, key: str, guard: Compare | None = None) -> Op:
        return cls("delete", key, b"", None, guard)


def _cost(op: Op, key_bytes: int) -> int:
    """Bytes ``op`` adds to a request: its key (and its guard's), values and framing;
    ``key_bytes`` is what the store adds to every key (its prefix)."""
    keys = 2 if op.guard is not None else 1
    compared = op.guard.expected if op.guard is not None else b""  # a value compare's value
    extra = len(compared) if isinstance(compared, bytes) else 0
    return keys * (len(op.key.encode()) + key_bytes + OP_OVERHEAD) + len(op.value) + extra


def batches(
    ops: list[Op], size: int, max_bytes: int = TXN_BYTES, key_bytes: int = 0
) -> list[list[Op]]:
    """Split ``ops`` into consecutive chunks of at most ``size`` ops and ``max_bytes``
    bytes (no empty chunk; an op larger than ``max_bytes`` is a chunk of its own)."""
    return packed([[op] for op in ops], size, max_bytes, key_bytes)


def packed(
    groups: Sequence[Sequence[Op]], size: int, max_bytes: int = TXN_BYTES, key_bytes: int = 0
) -> list[list[Op]]:
    """Consecutive chunks of at most ``size`` ops and ``max_bytes`` bytes that never split
    a group (a group larger than either is a chunk of its own): ops that must land
    together. ``key_bytes``: what the store adds to every key."""
    chunks: list[list[Op]] = []
    used = 0
    for group in groups:
        if not group:
            continue
        cost = sum(_cost(op, key_bytes) for op in group)
        if chunks and len(chunks[-1]) + len(group) <= size and used + cost <= max_bytes:
            chunks[-1].extend(group)
            used += cost
        else:
            chunks.append(list(group))
            used = cost
    return chunks
