"""The socket side of the HTTP listener: fit for a port that the internet can reach.

The daemon's HTTP endpoints answer a few probes a minute and a webhook per push, but the
port may face a Git host across the internet, and whoever finds it can open connections
and send nothing, or a byte a second. So this module — and nothing else — decides what a
connection may cost:

- **a total deadline** (:attr:`Limits.deadline`, 10 s): from accept to the last byte of
  the answer, whatever the client sends meanwhile; a byte now and then does not extend
  it, as it does a per-read socket timeout;
- **a bound on open connections** (:attr:`Limits.max_connections`): at the bound, the
  connection that has waited longest for its request is dropped to make room — so a
  flood of slow clients cannot lock a webhook out, it only churns itself — and when
  every connection is past its request (being answered), the newcomer gets a canned
  503 at once. Either way the excess goes within one turn of the loop, never queued;
- **a listen backlog** of :attr:`Limits.backlog` (the kernel caps it at somaxconn);
- **no thread per connection**: one asyncio loop on one thread holds them all, each a
  socket and a few KiB, so the file descriptors the daemon needs for etcd and git stay
  free (the systemd units raise ``LimitNOFILE`` far above the bound as well);
- **a client that goes away** (reset, half a request, a timeout) is a DEBUG line, and
  drops of any kind are summed up in one WARNING a minute at most: never a traceback.

HTTP itself is parsed by h11 (the sans-I/O HTTP/1.1 parser under httpx, already in the
dependency tree), which bounds the request head and refuses malformed framing; answers
are HTTP/1.0 and the connection closes after each one. Why not waitress, cheroot or
uvicorn is in docs/security.md ("The HTTP listener").

The request handler is a plain function called on the loop's thread: it must answer from
memory, quickly. When it wants the body it says how long it may be (:class:`ReadBody`),
so that nothing is read before the handler has checked the headers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from http.client import HTTPMessage
from typing import Any

import h11

log = logging.getLogger("kaylee_sync.daemon.http")

TEXT = "text/plain; charset=utf-8"
#: after refusing a body we do not read, discard what the client still sends for this
#: long (at most LINGER_BYTES), so that it sees our answer instead of a connection reset
LINGER_SECONDS = 0.5
LINGER_BYTES = 256 * 1024
#: at most one WARNING about dropped connections per this many seconds
REPORT_EVERY = 60.0


@dataclass(frozen=True)
class Limits:
    deadline: float = 10.0
    """Seconds a connection may live, from accept to the last byte of the answer. A
    webhook from a Git host arrives in well under a second."""
    max_connections: int = 512
    """Connections open at once. A handful is normal; the bound keeps a flood of idle
    connections from taking the file descriptors that etcd and git need."""
    backlog: int = 1024
    """listen(2) backlog: connections the kernel completes before we accept them."""
    max_head: int = 16 * 1024
    """Bytes of request line and headers (a GitHub webhook sends about 1 KiB)."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: HTTPMessage  # case-insensitive: .get(), .get_all(), .items()
    client: str


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: str | bytes = ""
    content_type: str = TEXT
    headers: dict[str, str] = field(default_factory=dict)
    #: the request body was not read: discard what the client still sends before closing
    linger: bool = False


@dataclass(frozen=True)
class ReadBody:
    """The handler's answer when it needs the body: read ``length`` bytes, call ``then``."""

    length: int
    then: Callable[[bytes], Response]


Handler = Callable[[Request], Response | ReadBody]

BUSY = Response(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
SHORT_BODY = Response(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length\n")


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket; host "" is every interface (IPv6 and IPv4 where possible)."""
    dualstack = False
    if not host:
        dualstack = socket.has_dualstack_ipv6()
        host = "::" if dualstack else "0.0.0.0"
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return socket.create_server(sockaddr, family=family, backlog=backlog, dualstack_ipv6=dualstack)


class Listener:
    """Serves ``handler`` on ``sock`` from an asyncio loop on a thread of its own."""

    def __init__(self, sock: socket.socket, handler: Handler, limits: Limits) -> None:
        self.sock = sock
        self.handler = handler
        self.limits = limits
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._stopping = asyncio.Event()
        self._thread: threading.Thread | None = None
        # every open connection, and (in age order) those still waiting for their request
        self._open: dict[asyncio.StreamWriter, None] = {}
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._drops = _Report("HTTP listener dropped connections")
        self._trouble = _Report("HTTP listener")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kaylee-http")
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, drop connections still waiting for a request, let answers in
        flight finish (bounded by the deadline), and join the thread."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join()
        else:
            self._loop.close()
            self.sock.close()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except Exception:  # a bug here must not pass silently, nor kill the daemon
            log.exception("the HTTP listener stopped")
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
            self.sock.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._connected, sock=self.sock)
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for writer in list(self._waiting):
                writer.transport.abort()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=self.limits.deadline)
            for writer in list(self._open):
                writer.transport.abort()
            await asyncio.sleep(0)  # let the transports close before the loop does

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else "?"
        if len(self._open) >= self.limits.max_connections and not self._evict():
            self._drops.note("refused at the connection bound")
            writer.write(_serialise(BUSY, head_only=False))  # fits in the socket buffer
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._open[writer] = None
        self._waiting[writer] = None
        try:
            async with asyncio.timeout(self.limits.deadline):
                await self._exchange(reader, writer, client)
        except TimeoutError:
            self._drops.note(f"past the {self.limits.deadline:g} s deadline")
            log.debug("%s: dropped after %g s", client, self.limits.deadline)
        except (OSError, h11.ProtocolError) as exc:  # the client reset or went away
            log.debug("%s: connection ended early (%s)", client, type(exc).__name__)
        except Exception:  # a bug of ours: one traceback, and the loop goes on
            log.exception("HTTP connection from %s failed", client)
        finally:
            self._tasks.discard(task)
            self._open.pop(writer, None)
            self._waiting.pop(writer, None)
            writer.transport.abort()

    def _evict(self) -> bool:
        """Drop the connection that has waited longest for its request; False if none."""
        oldest = next(iter(self._waiting), None)
        if oldest is None:
            return False
        del self._waiting[oldest]
        self._open.pop(oldest, None)
        oldest.transport.abort()
        self._drops.note("dropped for a newer one at the bound")
        return True

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        request: Request | None = None
        try:
            event = await _next_event(conn, reader)
        except h11.RemoteProtocolError as exc:  # malformed, or a head over max_head
            status = HTTPStatus(exc.error_status_hint)
            answer: Response | ReadBody = Response(status, f"{status.phrase.lower()}\n")
        else:
            if not isinstance(event, h11.Request):
                return  # connected and left without a word (a port scan, a TCP check)
            request = Request(
                method=event.method.decode("ascii", "replace"),
                target=event.target.decode("ascii", "replace"),
                headers=_headers(event.headers),
                client=client,
            )
            answer = self._answer(request)
            if isinstance(answer, ReadBody):
                body = await _read_body(conn, reader, answer.length)
                answer = SHORT_BODY if body is None else answer.then(body)
        assert isinstance(answer, Response)
        self._waiting.pop(writer, None)  # answering now: never evicted
        head_only = request is not None and request.method == "HEAD"
        writer.write(_serialise(answer, head_only=head_only))
        await writer.drain()
        if request is not None:
            path = request.target.split("?", 1)[0]  # never the query: it may carry a token
            log.debug("%s %s %s -> %d", client, request.method, path, answer.status)
        if answer.linger:
            await _linger(reader, writer)

    def _answer(self, request: Request) -> Response | ReadBody:
        try:
            return self.handler(request)
        except Exception:  # a bug in a handler: one traceback, a 500, and we go on
            log.exception("HTTP request from %s failed", request.client)
            return Response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the log)\n")

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's own reports (accept() out of file descriptors, …): one line, bounded."""
        exc = context.get("exception")
        detail = f"{context.get('message', 'error')}: {exc}" if exc else context.get("message")
        self._trouble.note(str(detail))


class _Report:
    """Counts events by kind; one WARNING per REPORT_EVERY seconds at most, summing up."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._counts: dict[str, int] = {}
        self._last: float | None = None

    def note(self, reason: str) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + 1
        now = time.monotonic()
        if self._last is None or now - self._last >= REPORT_EVERY:
            summary = ", ".join(f"{n} {why}" for why, n in self._counts.items())
            log.warning("%s: %s", self.title, summary)
            self._counts.clear()
            self._last = now


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await reader.read(65536))
    return event


async def _read_body(
    conn: h11.Connection, reader: asyncio.StreamReader, length: int
) -> bytes | None:
    """The request body (``length`` bytes, already checked by the handler); None if the
    client stopped sending before the end."""
    chunks: list[bytes] = []
    try:
        while not isinstance(event := await _next_event(conn, reader), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
    except h11.RemoteProtocolError:
        return None
    body = b"".join(chunks)
    return body if len(body) == length else None


def _headers(raw: Any) -> HTTPMessage:
    headers = HTTPMessage()
    for name, value in raw:
        headers[name.decode("ascii")] = value.decode("latin-1")
    return headers


def _serialise(response: Response, *, head_only: bool) -> bytes:
    body = response.body.encode() if isinstance(response.body, str) else response.body
    lines = [
        f"HTTP/1.0 {response.status.value} {response.status.phrase}",
        "Server: kaylee-sync",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drop what the client still sends, briefly (a lingering close)."""
    writer.write_eof()
    discarded = 0
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while discarded < LINGER_BYTES and (chunk := await reader.read(65536)):
                discarded += len(chunk)
    except TimeoutError:
        pass  # the client is slow: we are done with it
