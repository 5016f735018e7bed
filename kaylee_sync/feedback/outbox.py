"""A bounded outbox: HTTP deliveries sent by a thread of their own, retried until they land.

Feedback (commit statuses, webhook notifications) must never slow the work it reports
on: :meth:`Outbox.put` only appends to a deque under a lock and returns, whatever the
receiver is doing. One sender thread per outbox sends the oldest delivery first and
retries it — with exponential backoff, or as long as the receiver's ``Retry-After``
asks — before it sends the next, so deliveries to one receiver keep their order (a
commit's "synced" never overtakes its "pending"). That is at-least-once: a delivery is
removed only after a 2xx answer (a receiver that answered but whose answer was lost gets
it again; the ``delivery`` id in each request lets it notice).

Bounded, so that a dead receiver costs memory once, not forever: when the outbox is full
the oldest delivery is dropped (logged, counted), and a delivery is given up after
``max_attempts``; a 4xx answer other than 408/429 is given up at once — retrying a bad
token or a wrong URL would only hammer the server. A token bucket spaces the sends when
the receiver has a rate limit of its own (the Git hosts' APIs).

The request headers may hold a token: they are never logged; log lines name the
delivery (``what``) and the answer's status code only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from kaylee_sync.secrets import redact

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class OutboxSettings:
    capacity: int = 1000
    """Deliveries held at most; when full, the oldest is dropped. 1000 statuses or events
    is hours of a busy cluster, and a few hundred KiB."""
    max_attempts: int = 12
    """Attempts before a delivery is given up (with the default backoff, about an hour)."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled at each further one."""
    max_backoff: float = 600.0
    """The longest wait between two attempts (also caps a receiver's Retry-After)."""
    timeout: float = 10.0
    """Seconds one request may take (a slow receiver delays only this outbox's thread)."""
    rate: float | None = None
    """Sends per second at most (a token bucket of ``burst``); None: as fast as answered."""
    burst: int = 10


@dataclass
class Delivery:
    """One HTTP request to make; ``what`` names it in logs (never the headers)."""

    what: str
    method: str
    url: str
    body: bytes
    headers: Mapping[str, str] = field(repr=False, default_factory=dict)
    attempts: int = 0
    not_before: float = 0.0


class TokenBucket:
    """``rate`` sends per second on average, ``burst`` at once; the clock is injected."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self._tokens = float(burst)
        self._at = clock()

    def wait_time(self) -> float:
        """Seconds until a send is allowed (0: now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        self._refill()
        self._tokens -= 1

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now


class Outbox:
    """Deliveries to one receiver, in order, from one daemon thread (see the module doc)."""

    def __init__(
        self,
        name: str,
        settings: OutboxSettings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = s = settings or OutboxSettings()
        self.clock = clock
        self._client = httpx.Client(timeout=s.timeout, transport=transport)
        self._bucket = TokenBucket(s.rate, s.burst, clock) if s.rate else None
        self._queue: deque[Delivery] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.sent = self.dropped = self.given_up = 0  # counters, read by tests and metrics
        self._thread = threading.Thread(target=self._run, name=f"outbox-{name}", daemon=True)
        self._thread.start()

    def put(self, delivery: Delivery) -> None:
        """Queue ``delivery``; never blocks (a full outbox drops its oldest delivery)."""
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self.settings.capacity:
                old = self._queue.popleft()
                self.dropped += 1
                log.warning(
                    "%s: outbox full, dropped the oldest delivery (%s)", self.name, old.what
                )
            self._queue.append(delivery)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, drain: float = 5.0) -> None:
        """Stop; what is still queued after ``drain`` seconds of trying is dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(drain)
        with self._cond:  # a request still in flight ends within its timeout, then the thread
            self._queue.clear()
            self._cond.notify()

    # -- the sender thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                item = self._next()
                if item is None:
                    return
                retry_after = self._send(item)
                with self._cond:
                    self._settle(item, retry_after)
        finally:
            self._client.close()

    def _next(self) -> Delivery | None:
        """The oldest delivery once it may be sent; None when closed."""
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                item = self._queue[0]
                if self._closing and item.attempts:  # shutting down: no more backoff waits
                    return None
                wait = item.not_before - self.clock()
                if self._bucket is not None:
                    wait = max(wait, self._bucket.wait_time())
                if wait <= 0:
                    if self._bucket is not None:
                        self._bucket.take()
                    return item
                self._cond.wait(wait)

    def _send(self, item: Delivery) -> float | None:
        """Send once. None: done (delivered, or not worth retrying); else seconds to wait."""
        item.attempts += 1
        try:
            answer = self._client.request(
                item.method, item.url, content=item.body, headers=dict(item.headers)
            )
        except httpx.HTTPError as exc:
            log.warning("%s: %s not delivered: %s", self.name, item.what, redact(str(exc)))
            return 0.0
        if answer.is_success:
            self.sent += 1
            log.debug("%s: delivered %s", self.name, item.what)
            return None
        if answer.status_code in _RETRY_STATUS:
            log.warning("%s: %s answered %d; will retry", self.name, item.what, answer.status_code)
            return _retry_after(answer.headers.get("retry-after"))
        self.given_up += 1
        log.error(
            "%s: %s refused with HTTP %d; not retried (check the URL, token and its scope)",
            self.name,
            item.what,
            answer.status_code,
        )
        return None

    def _settle(self, item: Delivery, retry_after: float | None) -> None:
        if not self._queue or self._queue[0] is not item:
            return  # dropped while in flight (the outbox overflowed)
        if retry_after is None:
            self._queue.popleft()
        elif item.attempts >= self.settings.max_attempts:
            self._queue.popleft()
            self.given_up += 1
            log.error("%s: gave up on %s after %d attempts", self.name, item.what, item.attempts)
        else:
            s = self.settings
            backoff = min(s.max_backoff, s.backoff * 2 ** (item.attempts - 1))
            item.not_before = self.clock() + min(s.max_backoff, max(backoff, retry_after))


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header in seconds (an HTTP date counts as 0: use backoff)."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
