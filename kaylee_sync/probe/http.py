"""The HTTP check's client: ``GET url`` → status code, on asyncio, keep-alive, bounded.

Why not httpx, the project's HTTP library: a health check wants one number, the status,
from thousands of endpoints every few seconds, and the budget is 5 % of a core for
2,500 instances at a 10 s interval (bench/health_check.py) — 200 µs per check,
everything included. Measured on the CI machine, httpx's client spends ~1.8 ms per
keep-alive request and the standard library's ``http.client`` ~0.5 ms; an asyncio
protocol that writes one request and reads one status line spends well under 0.15 ms.
So this is deliberately small: GET only, HTTP/1.1, the status line and the headers that
say whether the connection can be used again. A body of ``Content-Length`` up to 64 KiB
is read and dropped (the connection is kept); anything else (chunked, unknown length,
``Connection: close``, HTTP/1.0) closes the connection after the status is known.

Failures are reported as a one-line reason (``ProbeFailed`` from ``status``); no other
exception escapes.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD = 16 * 1024  # a status line and headers longer than this are not a health answer
MAX_BODY = 64 * 1024  # bodies up to this are read to keep the connection; longer: closed
MAX_IDLE = 8  # idle connections kept per endpoint (checks of one machine overlap little)


class ProbeFailed(Exception):
    """A check could not get a status (refused, timed out, not HTTP...)."""


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str
    port: int
    request: bytes


@functools.lru_cache(maxsize=16384)
def _parse(url: str) -> _Url:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ProbeFailed(f"bad URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProbeFailed("bad URL: expected http:// or https:// and a host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.netloc.rsplit("@", 1)[-1]
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n"
        "User-Agent: kaylee-sync-health\r\nAccept: */*\r\n\r\n"
    ).encode("latin-1", errors="replace")
    default = 443 if parts.scheme == "https" else 80
    return _Url(parts.scheme, parts.hostname, port or default, request)


#: what a check reports: the status (0 when there is none) and, if none, why
Done = Callable[[int, str], None]


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; answers one request at a time, by callback."""

    def __init__(self, owner: HttpProber, endpoint: tuple[str, str, int]) -> None:
        self.owner, self.endpoint = owner, endpoint
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.done: Done | None = None
        self.deadline = 0.0
        self.timeout = 0.0
        self.reusable = True
        self.need = 0  # bytes of the current response to read (head + body)
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.finish(0, "connection closed before a response")
        self.owner.forget(self)

    def send(self, request: bytes, done: Done, deadline: float, timeout: float) -> None:
        assert self.transport is not None
        self.buffer.clear()
        self.need, self.status = 0, 0
        self.done, self.deadline, self.timeout = done, deadline, timeout
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if self.done is None:  # nobody asked: a server talking out of turn
            self.close()
            return
        self.buffer += data
        if self.status:
            self._maybe_done()
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.reusable = False
                self.finish(0, "response head too long")
            return
        self._head(bytes(self.buffer[:end]), end + 4)

    def _head(self, head: bytes, body_start: int) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
            self.reusable = False
            self.finish(0, "not an HTTP response")
            return
        try:
            self.status = int(status_line[1])
        except ValueError:
            self.reusable = False
            self.finish(0, "not an HTTP status")
            return
        length = -1
        keep = status_line[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = -1
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
            elif name == b"transfer-encoding":
                length = -1
        if not keep or not 0 <= length <= MAX_BODY:
            self.reusable = False
        self.need = body_start + max(length, 0)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.reusable and len(self.buffer) < self.need:
            return
        self.finish(self.status, "")

    def finish(self, status: int, error: str) -> None:
        """Report to whoever asked (once), and hand the connection back to the pool."""
        done, self.done = self.done, None
        if done is None:
            return
        self.owner.release(self)
        done(status, error)

    def expire(self) -> None:
        self.reusable = False  # a late answer must not be read as the next request's
        self.finish(0, f"no answer within {self.timeout:g}s")

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class HttpProber:
    """GETs on one event loop, by callback, reusing connections per (scheme, host, port).

    ``check`` starts a request and returns at once; ``done(status, error)`` is called on
    the loop when it ends. Deadlines are enforced by ``sweep(now)``, which the caller
    runs on its tick (the prober every 50 ms): one pass over the requests in flight costs
    less than a timer per request, which is most of what a check costs otherwise.
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()  # a request in flight
        self._open: set[_Connection] = set()  # every live connection, to close them all
        self._connecting: set[asyncio.Task[None]] = set()
        self._tls: ssl.SSLContext | None = None

    def check(self, url: str, timeout: float, done: Done) -> None:
        """Start ``GET url``; ``done`` gets its status (2xx passes) or why there is none."""
        try:
            target = _parse(url)
        except ProbeFailed as exc:
            done(0, str(exc))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        endpoint = (target.scheme, target.host, target.port)
        idle = self._idle.get(endpoint)
        while idle:
            conn = idle.pop()
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                self._busy.add(conn)
                conn.send(target.request, done, deadline, timeout)
                return
        task = loop.create_task(self._connect(target, endpoint, done, deadline, timeout))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(
        self,
        target: _Url,
        endpoint: tuple[str, str, int],
        done: Done,
        deadline: float,
        timeout: float,
    ) -> None:
        tls = None
        if target.scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, endpoint), target.host, target.port, ssl=tls
                )
        except TimeoutError:
            done(0, f"no answer within {timeout:g}s")
            return
        except (OSError, ssl.SSLError) as exc:
            done(0, _reason(exc))
            return
        self._open.add(conn)
        self._busy.add(conn)
        conn.send(target.request, done, deadline, timeout)

    def sweep(self, now: float) -> None:
        """Fail every request whose deadline has passed (and close its connection)."""
        for conn in [c for c in self._busy if c.deadline <= now]:
            conn.expire()

    def release(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if conn.reusable:
            idle = self._idle.setdefault(conn.endpoint, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()
        self._open.discard(conn)

    def forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        self._open.discard(conn)

    async def status(self, url: str, timeout: float) -> int:
        """The status of one ``GET url`` (ProbeFailed if none): for tools and tests."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[int, str]] = loop.create_future()

        def done(status: int, error: str) -> None:
            if not answer.done():
                answer.set_result((status, error))

        sweeper = loop.call_later(timeout, lambda: self.sweep(loop.time() + 1e-3))
        self.check(url, timeout, done)
        try:
            status, error = await answer
        finally:
            sweeper.cancel()
        if not status:
            raise ProbeFailed(error)
        return status

    def close(self) -> None:
        for task in self._connecting:
            task.cancel()
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        self._busy.clear()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:200]
