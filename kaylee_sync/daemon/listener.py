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
import contextlib
import logging
import resource
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from http.client import HTTPMessage
from typing import Any, TypeVar

import h11

log = logging.getLogger("kaylee_sync.daemon.http")

TEXT = "text/plain; charset=utf-8"
#: after refusing a body we do not read, discard what the client still sends for this
#: long (at most LINGER_BYTES), so that it sees our answer instead of a connection reset
LINGER_SECONDS = 0.5
LINGER_BYTES = 256 * 1024
#: at most one WARNING about dropped connections per this many seconds
REPORT_EVERY = 60.0
#: seconds to wait before accepting again when accept() fails (out of descriptors)
ACCEPT_RETRY = 0.5
#: the default bound on open connections, when the open-file limit allows it: enough to
#: hold thousands of slow clients without churn (each costs a descriptor and ~10 KiB)
MAX_CONNECTIONS = 4096


def default_max_connections() -> int:
    """Half the open-file limit (the other half is for etcd, git and the rest), capped at
    :data:`MAX_CONNECTIONS`: 512 under systemd's default soft limit of 1024, 4096 under
    the shipped units' ``LimitNOFILE=65536``."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // 2))


@dataclass(frozen=True)
class Limits:
    deadline: float = 10.0
    """Seconds a connection may live, from accept to the last byte of the answer. A
    webhook from a Git host arrives in well under a second."""
    max_connections: int = field(default_factory=default_max_connections)
    """Connections open at once. A handful is normal; the bound keeps a flood of idle
    connections from taking the file descriptors that etcd and git need. Default: half
    the process's open-file limit, at most :data:`MAX_CONNECTIONS`."""
    backlog: int = 4096
    """listen(2) backlog: connections the kernel completes before we accept them (it caps
    this at net.core.somaxconn, 4096 by default). Deep, so that a burst of connections —
    a thousand slow clients reconnecting at once — does not make the kernel drop the SYN
    of a webhook, which would then wait for its retransmission (1 s, 3 s, 7 s…)."""
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
T = TypeVar("T")
R = TypeVar("R")

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
        # every accepted connection (its writer once its task has one), and, in age
        # order, those still waiting for their request: the ones a newcomer may push out
        self._open: dict[socket.socket, asyncio.StreamWriter | None] = {}
        self._waiting: dict[socket.socket, None] = {}
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
        accepting = asyncio.create_task(self._accept())
        try:
            await self._stopping.wait()
        finally:
            accepting.cancel()
            self.sock.close()
            for conn in list(self._waiting):
                self._drop(conn)
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=self.limits.deadline)
            for conn in list(self._open):
                self._drop(conn)
            await asyncio.sleep(0)  # let the transports close before the loop does

    async def _accept(self) -> None:
        """Accept, and enforce the bound before a connection costs more than its socket.

        Our own accept loop rather than ``asyncio.start_server``: that one calls listen()
        again with its own backlog and accepts that many connections per turn before any
        bound could be checked, so descriptors overshoot the bound by hundreds in a flood.
        """
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        turn = 0
        while True:
            try:
                conn, address = await loop.sock_accept(self.sock)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: the system is short; wait
                self._trouble.note(f"accept() failed: {exc.strerror or exc}")
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            except Exception:  # a bug of ours must not end the accepting: log, go on
                log.exception("the HTTP listener's accept() failed")
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            if len(self._open) >= self.limits.max_connections and not self._evict():
                self._drops.note("refused at the connection bound")
                _refuse(conn)
            else:
                self._open[conn] = None
                self._waiting[conn] = None
                task = asyncio.create_task(self._connection(conn, str(address[0])))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            turn += 1
            if turn % 64 == 0:
                await asyncio.sleep(0)  # in a flood, let the connections run too

    async def _connection(self, conn: socket.socket, client: str) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.limits.deadline):
                reader, writer = await asyncio.open_connection(sock=conn)
                if conn not in self._open:
                    return  # pushed out (or stopped) before it began
                self._open[conn] = writer
                await self._exchange(reader, writer, conn, client)
        except TimeoutError:
            self._drops.note(f"past the {self.limits.deadline:g} s deadline")
            log.debug("%s: dropped after %g s", client, self.limits.deadline)
        except (OSError, h11.ProtocolError) as exc:  # the client reset or went away
            log.debug("%s: connection ended early (%s)", client, type(exc).__name__)
        except Exception:  # a bug of ours: one traceback, and the loop goes on
            log.exception("HTTP connection from %s failed", client)
        finally:
            self._open.pop(conn, None)
            self._waiting.pop(conn, None)
            if writer is not None:
                writer.transport.abort()
            else:
                conn.close()

    def _evict(self) -> bool:
        """Drop the connection that has waited longest for its request; False if none."""
        oldest = next(iter(self._waiting), None)
        if oldest is None:
            return False
        self._drop(oldest)
        self._drops.note("dropped for a newer one at the bound")
        return True

    def _drop(self, conn: socket.socket) -> None:
        writer = self._open.pop(conn, None)
        self._waiting.pop(conn, None)
        if writer is not None:
            writer.transport.abort()  # its task sees the end of the stream and returns

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: socket.socket,
        client: str,
    ) -> None:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        request: Request | None = None
        try:
            event = await _next_event(parser, reader)
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
            answer = self._answer(client, self.handler, request)
            if isinstance(answer, ReadBody):
                body = await _read_body(parser, reader, answer.length)
                answer = SHORT_BODY if body is None else self._answer(client, answer.then, body)
        assert isinstance(answer, Response)
        self._waiting.pop(conn, None)  # answering now: never evicted
        if request is not None:  # logged before the answer leaves: a test reads it after
            path = request.target.split("?", 1)[0]  # never the query: it may carry a token
            log.debug("%s %s %s -> %d", client, request.method, path, answer.status)
        head_only = request is not None and request.method == "HEAD"
        writer.write(_serialise(answer, head_only=head_only))
        await writer.drain()
        if answer.linger:
            await _linger(reader, writer)

    def _answer(self, client: str, handler: Callable[[T], R], argument: T) -> R | Response:
        try:
            return handler(argument)
        except Exception:  # a bug in a handler: one traceback, a 500, and we go on
            log.exception("HTTP request from %s failed", client)
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


def _refuse(conn: socket.socket) -> None:
    """A canned 503 if the socket takes it at once, and closed: no more than that."""
    conn.setblocking(False)
    with contextlib.suppress(OSError):  # gone, or not reading: refused all the same
        conn.send(_serialise(BUSY, head_only=False))
    conn.close()


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
