"""Watching a range of keys: a stream of put/delete events, as plain dataclasses.

Why not etcd3's own ``watch_prefix``: etcd3 0.13's watcher thread ends every stream with
a ``NameError`` (it calls ``six`` without importing it), and it gives no way to wait until
the server has *created* the watch. We speak etcd's Watch RPC directly through etcd3's
generated stub instead, and :func:`open_watch` returns only once etcd confirmed the watch:
a write made after it returns is guaranteed to be seen.

One reader thread per watch moves responses from grpc into a queue; the iterator the
caller gets reads that queue, so cancelling never races with a half-read response.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import etcd3.exceptions as etcd3_exc
import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2

from kaylee_sync.errors import StoreError
from kaylee_sync.store.connection import Connection
from kaylee_sync.store.keys import relative_key


@dataclass(frozen=True)
class WatchEvent:
    """One change under a watched prefix. ``key`` is relative; ``value`` is b"" on delete."""

    type: Literal["put", "delete"]
    key: str
    value: bytes
    mod_revision: int


_END = object()


class WatchStream:
    """One open watch: its events in order, :meth:`take_until` with a deadline, cancel."""

    def __init__(
        self,
        conn: Connection,
        prefix: str,
        key: bytes,
        range_end: bytes,
        start_revision: int | None,
    ) -> None:
        self._conn = conn
        self._prefix = prefix
        self._request = etcdrpc.WatchRequest(
            create_request=etcdrpc.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision or 0
            )
        )
        self._stop = threading.Event()
        self._cancelled = False
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending: deque[WatchEvent] = deque()  # decoded, not yet taken (take_until)
        self._call: Any = None

    def start(self, client: Any) -> None:
        """Open the stream on the current endpoint; return once etcd created the watch."""
        stub = etcdrpc.WatchStub(client.channel)
        self._call = stub.Watch(self._requests(), metadata=self._conn.metadata)
        threading.Thread(target=self._read, name="kaylee-etcd-watch", daemon=True).start()
        try:
            first = self._queue.get(timeout=self._conn.settings.timeout)
        except queue.Empty:
            self.cancel()
            raise etcd3_exc.WatchTimedOut() from None
        if isinstance(first, grpc.RpcError):
            self.cancel()
            raise first  # Connection.call fails over or translates it
        if first is _END or not first.created:
            self.cancel()
            raise StoreError("etcd ended the watch before creating it")
        if first.compact_revision:
            self.cancel()
            raise StoreError(
                f"cannot watch from revision {self._request.create_request.start_revision}: "
                f"compacted up to {first.compact_revision}"
            )
        if first.canceled:
            self.cancel()
            raise StoreError(f"etcd refused the watch: {first.cancel_reason or 'canceled'}")

    def _requests(self) -> Iterator[Any]:
        yield self._request
        # Keep our half of the stream open until cancelled (or the stream ended).
        while not self._stop.wait(1.0):
            pass

    def _read(self) -> None:
        try:
            for response in self._call:
                self._queue.put(response)
        except grpc.RpcError as exc:
            if not self._cancelled and exc.code() != grpc.StatusCode.CANCELLED:
                self._queue.put(exc)
        except Exception as exc:  # never let the thread die with an unreported error
            self._queue.put(exc)
        finally:
            self._stop.set()
            self._queue.put(_END)

    def cancel(self) -> None:
        """End the watch; the iterator stops. Safe to call twice, from any thread."""
        self._cancelled = True
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        self._queue.put(_END)

    def events(self) -> Iterator[WatchEvent]:
        while True:
            item = self._queue.get()
            if item is _END or self._cancelled:
                return
            yield from self._decode(item)

    def take_until(self, done: Callable[[WatchEvent], bool], timeout: float) -> list[WatchEvent]:
        """The events delivered so far and on, up to and including the first for which
        ``done`` holds. StoreError if the watch ends or fails first, or if ``timeout``
        seconds pass without such an event (the watch is then no longer to be trusted:
        cancel it)."""
        deadline = time.monotonic() + timeout
        out: list[WatchEvent] = []
        pending = self._pending
        while True:
            while pending:
                event = pending.popleft()
                out.append(event)
                if done(event):
                    return out  # the rest of that response waits for the next call
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise StoreError(f"the watch delivered no awaited event in {timeout:g} s") from None
            if item is _END or self._cancelled:
                self._queue.put(_END)  # the next caller sees the end too
                raise StoreError("the watch ended")
            pending.extend(self._decode(item))

    def _decode(self, item: Any) -> Iterator[WatchEvent]:
        if isinstance(item, BaseException):
            raise self._conn.translate("watch", item) from item
        if item.canceled or item.compact_revision:
            reason = item.cancel_reason or f"revision compacted to {item.compact_revision}"
            raise StoreError(f"etcd cancelled the watch: {reason}")
        for ev in item.events:
            yield WatchEvent(
                type="delete" if ev.type == kv_pb2.Event.DELETE else "put",
                key=relative_key(self._prefix, ev.kv.key),
                value=bytes(ev.kv.value),
                mod_revision=int(ev.kv.mod_revision),
            )


def open_watch(
    conn: Connection, prefix: str, key: bytes, range_end: bytes, start_revision: int | None
) -> tuple[Iterator[WatchEvent], Callable[[], None]]:
    """Watch ``[key, range_end)``; see :meth:`Store.watch_prefix`."""
    watch = open_stream(conn, prefix, key, range_end, start_revision)
    return watch.events(), watch.cancel


def open_stream(
    conn: Connection, prefix: str, key: bytes, range_end: bytes, start_revision: int | None
) -> WatchStream:
    """Watch ``[key, range_end)`` as a :class:`WatchStream`; see :meth:`Store.watch_stream`."""

    def attempt(client: Any) -> WatchStream:
        # A fresh stream per attempt: a failed attempt cancels its own, and failover retries.
        watch = WatchStream(conn, prefix, key, range_end, start_revision)
        watch.start(client)
        return watch

    return conn.call("watch", attempt)
