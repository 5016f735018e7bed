"""A lean HTTP/1.1 keep-alive client for etcd's v2 writes: one request, one answer.

Why not httpx, the client the rest of Etcd2Client uses: submitting fleet units is
nothing but small v2 writes (three per unit), and on this project's 2-core machine
httpx spends ~1.9 ms of CPU per keep-alive request, the standard library's
``http.client`` ~0.55 ms, and a request formatted by hand and answered through a
buffered socket ~0.16 ms (measured side by side against the same etcd). With several
units in flight at once the client's CPU, not etcd, is what a batch waits for. The
same reasoning made the health prober's client (``probe/http.py``).

It is deliberately small and speaks to one server only, etcd's Go ``net/http``: a
``Content-Length`` or chunked answer, keep-alive unless the server says ``close``.
Reads and watches stay on httpx (large, streamed, long-polled answers gain nothing).

Fencing: ``check(request line)`` runs right before the request's bytes are handed to
the socket (as ``guarded.py`` does for httpx); if it raises, nothing is sent and the
connection stays usable. Errors::

    WireError
    ├── NotSent      the request did not reach etcd (connect refused or timed out, or a
    │                reused connection found closed): it may be sent to another endpoint
    └── Interrupted  sent, but no complete answer (timeout, reset, garbled): it may
                     have been applied, so it is not repeated elsewhere
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

MAX_LINE = 64 * 1024  # a status, header or chunk-size line longer than this is garbage
MAX_IDLE = 16  # idle connections kept per endpoint: enough for a batch's workers


class WireError(Exception):
    """Base of the wire's own failures (Etcd2Client maps them to FleetErrors)."""


class NotSent(WireError):
    """The request never reached the server."""


class Interrupted(WireError):
    """The request was sent, but its answer did not arrive whole."""


class Timeout(Interrupted):
    """The answer did not arrive within the timeout."""


@dataclass(frozen=True)
class Answer:
    """A response: its status, its ``X-Etcd-Index`` (0 if absent) and its body."""

    status: int
    index: int
    body: bytes


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader: BinaryIO = sock.makefile("rb")

    def stale(self) -> bool:
        """An idle connection with something to read has been closed (or spoken out of
        turn) by the server: it must not carry a request."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Wire:
    """Keep-alive connections to one endpoint (``http://`` or ``https://``); thread-safe:
    each request takes an idle connection or opens one, and gives it back when done."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float,
        check: Callable[[str], None],
        tls: ssl.SSLContext | None = None,
        authorization: str | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.tls = tls if parts.scheme == "https" else None
        self.timeout = timeout
        self.check = check
        netloc = parts.netloc.rsplit("@", 1)[-1]
        extra = f"Authorization: {authorization}\r\n" if authorization else ""
        self._headers = f"Host: {netloc}\r\n{extra}"
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def request(self, method: str, target: str, form: bytes | None = None) -> Answer:
        """Send ``method target`` (path and query, already escaped) with ``form`` as an
        url-encoded body; the answer, whatever its status."""
        line = f"{method} {self.base}{target} HTTP/1.1"
        head = f"{line}\r\n{self._headers}"
        if form is not None:
            head += "Content-Type: application/x-www-form-urlencoded\r\n"
            head += f"Content-Length: {len(form)}\r\n"
        data = (head + "\r\n").encode("latin-1") + (form or b"")
        conn = self._take()
        try:
            self.check(line)  # the last moment: a refusal sends nothing
        except BaseException:
            self._give(conn)
            raise
        try:
            conn.sock.sendall(data)
            answer, keep = self._read(conn)
        except TimeoutError as exc:
            conn.close()
            raise Timeout(f"no answer within {self.timeout:g} s") from exc
        except (OSError, ValueError) as exc:
            conn.close()
            raise Interrupted(str(exc) or type(exc).__name__) from exc
        except BaseException:
            conn.close()
            raise
        if keep:
            self._give(conn)
        else:
            conn.close()
        return answer

    def _take(self) -> _Conn:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if not conn.stale():
                return conn
            conn.close()

    def _give(self, conn: _Conn) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> _Conn:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise NotSent(f"cannot connect: {exc.strerror or exc}") from exc
        try:
            # one request per write: without this, Nagle's algorithm would hold a small
            # request back until the previous answer's delayed ACK (up to 40 ms)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise NotSent(f"TLS handshake failed: {exc}") from exc
        return _Conn(sock)

    def _read(self, conn: _Conn) -> tuple[Answer, bool]:
        """The answer, and whether the connection may carry another request."""
        reader = conn.reader
        status_line = reader.readline(MAX_LINE)
        if not status_line:
            raise Interrupted("the server closed the connection without answering")
        version, _, rest = status_line.decode("latin-1").partition(" ")
        status = int(rest[:3])
        keep = version == "HTTP/1.1"
        length: int | None = None
        chunked = False
        index = 0
        while True:
            line = reader.readline(MAX_LINE)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise Interrupted("the answer ended inside its headers")
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = value.lower() == "chunked"
            elif name == "connection":
                keep = keep and value.lower() != "close"
            elif name == "x-etcd-index":
                index = int(value or 0)
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        elif chunked:
            body = _chunks(reader)
        elif length is not None:
            body = _exactly(reader, length)
        else:  # delimited by the end of the connection
            body, keep = reader.read(), False
        return Answer(status, index, body), keep


def _exactly(reader: BinaryIO, n: int) -> bytes:
    data = reader.read(n)
    if len(data) != n:
        raise Interrupted("the answer ended early")
    return data


def _chunks(reader: BinaryIO) -> bytes:
    parts = []
    while True:
        size_line = reader.readline(MAX_LINE)
        if not size_line:
            raise Interrupted("the answer ended inside a chunk")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        parts.append(_exactly(reader, size))
        _exactly(reader, 2)  # the chunk's CRLF
    while reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
        pass  # trailers: etcd sends none
    return b"".join(parts)
