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

Errors are :class:`ProbeFailed` with a one-line reason; no other exception escapes.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_HEAD = 16 * 1024  # a status line and headers longer than this are not a health answer
MAX_BODY = 64 * 1024  # bodies up to this are read to keep the connection; longer: closed
MAX_IDLE = 2  # idle connections kept per endpoint


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


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.reusable = True
        self.need = 0  # bytes of the current response still to read (head + body)
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail("connection closed before a response")

    def send(self, request: bytes, waiter: asyncio.Future[int]) -> None:
        assert self.transport is not None
        self.buffer.clear()
        self.need, self.status, self.waiter = 0, 0, waiter
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nobody asked: a server talking out of turn
            self.close()
            return
        self.buffer += data
        if self.status:
            self._maybe_done()
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._fail("response head too long")
                self.close()
            return
        self._head(bytes(self.buffer[:end]), end + 4)

    def _head(self, head: bytes, body_start: int) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
            self._fail("not an HTTP response")
            self.close()
            return
        try:
            self.status = int(status_line[1])
        except ValueError:
            self._fail("not an HTTP status")
            self.close()
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
        waiter = self.waiter
        if waiter is None:
            return
        if self.reusable and len(self.buffer) < self.need:
            return
        self.waiter = None
        if not waiter.done():
            waiter.set_result(self.status)
        if not self.reusable:
            self.close()

    def _fail(self, reason: str) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ProbeFailed(reason))

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class HttpProber:
    """GETs on one event loop, reusing connections per (scheme, host, port)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()  # every live connection, to close them all
        self._tls: ssl.SSLContext | None = None

    async def status(self, url: str, timeout: float) -> int:
        """The status code of ``GET url`` within ``timeout`` seconds; ProbeFailed if none."""
        target = _parse(url)
        loop = asyncio.get_running_loop()
        endpoint = (target.scheme, target.host, target.port)
        waiter: asyncio.Future[int] = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter, timeout)
        conn: _Connection | None = None
        try:
            conn = await self._connection(endpoint, waiter)
            conn.send(target.request, waiter)
            status = await waiter
        except (OSError, ssl.SSLError) as exc:
            raise ProbeFailed(_reason(exc)) from None
        except asyncio.CancelledError:
            if waiter.cancelled() and not _task_cancelling():
                raise ProbeFailed(f"no answer within {timeout:g}s") from None
            raise
        finally:
            timer.cancel()
            if conn is not None and (not waiter.done() or waiter.cancelled() or not conn.reusable):
                conn.close()  # a late answer must not be read as the next request's
                self._open.discard(conn)
        if conn.reusable:
            idle = self._idle.setdefault(endpoint, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return status
            conn.close()
        self._open.discard(conn)
        return status

    async def _connection(
        self, endpoint: tuple[str, str, int], waiter: asyncio.Future[int]
    ) -> _Connection:
        idle = self._idle.get(endpoint)
        while idle:
            conn = idle.pop()
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                return conn
        scheme, host, port = endpoint
        tls = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(_Connection, host, port, ssl=tls)
        task = asyncio.ensure_future(connect)
        racing: set[asyncio.Future[Any]] = {task, waiter}
        done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            raise asyncio.CancelledError  # the timer expired while connecting
        _, protocol = task.result()
        self._open.add(protocol)
        return protocol

    def close(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()


def _expire(waiter: asyncio.Future[int], timeout: float) -> None:
    if not waiter.done():
        waiter.cancel()


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:200]
