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


def batches(ops: list[Op], size: int) -> list[list[Op]]:
    """Split ``ops`` into consecutive chunks of at most ``size`` (no empty chunk)."""
    return [ops[i : i + size] for i in range(0, len(ops), size)]


def packed(groups: Sequence[Sequence[Op]], size: int) -> list[list[Op]]:
    """Consecutive chunks of at most ``size`` ops that never split a group (a group
    larger than ``size`` is a chunk of its own): ops that must land together."""
    chunks: list[list[Op]] = []
    for group in groups:
        if not group:
            continue
        if chunks and len(chunks[-1]) + len(group) <= size:
            chunks[-1].extend(group)
        else:
            chunks.append(list(group))
    return chunks
