"""An operator's "sync now" from any node: ``kaylee-sync sync`` writes ``sync/request``.

Argo CD and Flux users expect to ask for a sync instead of waiting for the next poll,
from wherever they are; the leader may be on another host and its HTTP listener on
127.0.0.1. So the request travels through etcd: every daemon watches the key, and the
leader — only the leader — acknowledges it (``seen_at``, on its own clock, written only
if nobody rewrote the request meanwhile) and puts it into the one trigger funnel
(:class:`~kaylee_sync.daemon.triggers.SyncQueue`). ``kaylee-sync sync --wait`` then
knows its sync is the first one whose attempt *started* after ``seen_at`` — the same
clock that stamps ``sync/status`` — and not one that was already running.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from kaylee_sync.daemon.triggers import SyncQueue
from kaylee_sync.errors import StoreError
from kaylee_sync.store import Compare, Op, Store, keys
from kaylee_sync.supervise import Failures

log = logging.getLogger(__name__)
RETRY = 1.0  # seconds before watching again after etcd went away


class SyncRequests:
    """Watches ``sync/request`` in a thread of its own; the leader acknowledges and syncs."""

    def __init__(
        self,
        store: Store,
        queue: SyncQueue,
        is_leader: Callable[[], bool],
        identity: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.queue = queue
        self.is_leader = is_leader
        self.identity = identity
        self.clock = clock
        self._stop = threading.Event()
        self._cancel: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="sync-requests", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._cancel is not None:
            self._cancel()
        self._thread.join(5)

    def _run(self) -> None:
        failures = Failures("the watch of sync requests", log)
        while not self._stop.is_set():
            delay = RETRY
            try:
                events, self._cancel = self.store.watch_prefix(keys.SYNC_REQUEST)
                for event in events:
                    if self._stop.is_set():
                        return
                    if event.type == "put":
                        self.handle(event.value, event.mod_revision)
                        failures.succeeded()
            except StoreError as exc:
                if not self._stop.is_set():
                    log.debug("watch of sync requests ended (%s); watching again", exc)
            except Exception as exc:  # a bug: logged once, backed off, never the end
                delay = failures.failed(exc)
            self._stop.wait(delay)

    def handle(self, value: bytes, revision: int) -> bool:
        """Acknowledge and enqueue one request (leader only); True if it was taken."""
        try:
            request = json.loads(value)
        except ValueError:
            log.warning("ignoring an unreadable sync request")
            return False
        if not isinstance(request, dict) or "seen_at" in request or not self.is_leader():
            return False  # our own acknowledgement, or a standby's business
        ack = {**request, "seen_at": self.clock(), "seen_by": self.identity}
        op = Op.put(keys.SYNC_REQUEST, json.dumps(ack, sort_keys=True))
        if not self.store.txn([Compare.mod_revision_equals(keys.SYNC_REQUEST, revision)], [op]):
            return False  # rewritten meanwhile: the newer request gets its own event
        log.info("sync requested by %s", request.get("who", "someone"))
        self.queue.request("request")
        return True
