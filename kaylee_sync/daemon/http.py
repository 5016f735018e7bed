"""The daemon's HTTP listener: probes, metrics and the webhook that asks for a sync.

=========================  ==================================================================
``GET /healthz``           200 ``ok`` while the process works, else 503 and why (liveness)
``GET /readyz``            200 ``ok`` when ready, else 503 and why (readiness)
``GET /metrics``           Prometheus text exposition (OpenMetrics if the scraper asks for it)
``POST /hooks/git``        a push happened: verify the shared secret, then request a sync (202)
=========================  ==================================================================

The standard library's threading server is enough for a handful of probes a minute and
a webhook per push, and keeps a web framework out of a daemon whose job is elsewhere.
It is hardened where it matters for an endpoint that may face a Git host across the
internet: every socket has a timeout (a slow client cannot hold a thread forever), the
webhook body is read only when its declared length is within ``max_body`` (no chunked
bodies, whose length is unknown until read), and a webhook is checked before anything
is triggered. Connections are HTTP/1.0, closed after each response, so a request thread
lives for one request and :meth:`HttpServer.stop` can join them all.

Requests are logged at DEBUG through :mod:`logging` — method, path without its query,
status — never with their headers, which carry the webhook secret or signature.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from socketserver import TCPServer
from typing import Any, cast
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder

from kaylee_sync.daemon.metrics import Metrics
from kaylee_sync.daemon.triggers import SyncQueue
from kaylee_sync.daemon.webhook import verify
from kaylee_sync.errors import UsageError

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]
TEXT = "text/plain; charset=utf-8"
HOOK_PATH = "/hooks/git"
#: after refusing a body we do not read, discard what the client still sends for this
#: long (at most LINGER_BYTES), so that it sees our answer instead of a connection reset
LINGER_SECONDS = 0.5
LINGER_BYTES = 256 * 1024


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9420"``, ``"[::1]:9420"``, ``":9420"`` (every interface) → (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep:
        raise UsageError(f"listen address {listen!r}: expected HOST:PORT, [IPv6]:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"listen address {listen!r}: put an IPv6 address in brackets")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"listen address {listen!r}: the port must be 0..65535")
    return host, int(port_text)


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: str | bytes = ""
    content_type: str = TEXT
    headers: dict[str, str] = field(default_factory=dict)
    #: the request body was not read: discard what the client still sends before closing
    linger: bool = False


class HttpServer:
    """Binds on construction (so ``address`` is known at once); serves on a thread."""

    def __init__(
        self,
        listen: str,
        *,
        queue: SyncQueue,
        metrics: Metrics,
        health: Probe,
        ready: Probe,
        webhook_secret: str | None,
        max_body: int = 1 << 20,
        timeout: float = 10.0,
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.health = health
        self.ready = ready
        self.webhook_secret = webhook_secret
        self.max_body = max_body
        #: seconds any one socket operation may take before the connection is dropped
        self.timeout = timeout
        self._server = _Server(listen, self)
        host, port = self._server.server_address[:2]
        #: the bound address: with port 0, the port the kernel chose
        self.address: tuple[str, int] = (str(host), int(port))
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._wake_r, self._wake_w = socket.socketpair()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="kaylee-http")
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, wait for requests in progress (bounded by ``timeout``), close."""
        if self._stopped:
            return
        self._stopped = True
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join()
        self._server.server_close()  # joins the request threads (block_on_close)
        self._wake_r.close()
        self._wake_w.close()

    def _serve(self) -> None:
        # serve_forever() would notice stop() only at its next poll tick; a wake-up
        # socket makes stop() immediate without polling.
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopped:
                for key, _ in selector.select():
                    if key.fileobj is self._server and not self._stopped:
                        self._server.handle_request()  # never blocks: _Server.timeout = 0

    # -- routing ---------------------------------------------------------------------------

    def respond(self, method: str, path: str, headers: Any, body: BufferedIOBase) -> Response:
        """Answer one request; ``headers`` is case-insensitive (an http.client.HTTPMessage)."""
        routes: dict[str, tuple[tuple[str, ...], Callable[[], Response]]] = {
            "/healthz": (("GET", "HEAD"), lambda: self._probe(self.health, "health")),
            "/readyz": (("GET", "HEAD"), lambda: self._probe(self.ready, "readiness")),
            "/metrics": (("GET", "HEAD"), lambda: self._metrics(headers.get("Accept", ""))),
        }
        if self.webhook_secret is not None:  # no secret: the endpoint does not exist
            routes[HOOK_PATH] = (("POST",), lambda: self._hook(headers, body))
        if path not in routes:
            return Response(HTTPStatus.NOT_FOUND, "not found\n")
        methods, handler = routes[path]
        if method not in methods:
            return Response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{path} accepts {', '.join(methods)}\n",
                headers={"Allow": ", ".join(methods)},
            )
        return handler()

    def _probe(self, probe: Probe, what: str) -> Response:
        try:
            ok, message = probe()
        except Exception:
            log.exception("the %s check raised", what)
            ok, message = False, f"the {what} check failed (see the log)"
        message = " ".join(message.split())  # one line, whatever the callback returned
        if ok:
            return Response(
                HTTPStatus.OK, f"ok: {message}\n" if message not in ("", "ok") else "ok\n"
            )
        return Response(HTTPStatus.SERVICE_UNAVAILABLE, f"{message or 'not ok'}\n")

    def _metrics(self, accept: str) -> Response:
        encoder, content_type = choose_encoder(accept)
        return Response(HTTPStatus.OK, encoder(self.metrics.registry), content_type)

    def _hook(self, headers: Any, stream: BufferedIOBase) -> Response:
        assert self.webhook_secret is not None
        if headers.get("Transfer-Encoding") is not None:
            return Response(
                HTTPStatus.LENGTH_REQUIRED, "send Content-Length, not chunks\n", linger=True
            )
        lengths = headers.get_all("Content-Length") or []
        if not lengths:
            return Response(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required\n", linger=True)
        if len(lengths) > 1 or not lengths[0].strip().isdigit():
            return Response(HTTPStatus.BAD_REQUEST, "bad Content-Length\n", linger=True)
        length = int(lengths[0])
        if length > self.max_body:
            return Response(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body over {self.max_body} bytes\n",
                linger=True,
            )
        body = stream.read(length)
        if len(body) != length:
            return Response(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length\n")
        reason = verify(dict(headers.items()), body, self.webhook_secret)
        if reason is not None:
            log.warning("webhook refused: %s", reason)
            return Response(HTTPStatus.UNAUTHORIZED, f"{reason}\n")
        log.info("webhook accepted: sync requested")
        self.queue.request("webhook")
        return Response(HTTPStatus.ACCEPTED, "sync requested\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck request never blocks interpreter exit…
    block_on_close = True  # …but stop() still joins them (each bounded by the timeout)
    timeout = 0  # handle_request() after select(): accept what is there, never wait

    def __init__(self, listen: str, app: HttpServer) -> None:
        self.app = app
        host, port = parse_listen(listen)
        self._dualstack = False
        if not host:
            # ":9420" means every interface, IPv6 and IPv4 alike where the host allows it
            self._dualstack = socket.has_dualstack_ipv6()
            host = "::" if self._dualstack else "0.0.0.0"
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            self.address_family = family
            super().__init__(cast(tuple[str, int], sockaddr), _Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc

    def server_bind(self) -> None:
        if self._dualstack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would also look up our FQDN, a DNS query we do not need
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("HTTP request from %s failed", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "kaylee-sync"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.app.timeout)

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        response = self.server.app.respond(self.command, path, self.headers, self.rfile)
        body = response.body.encode() if isinstance(response.body, str) else response.body
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if response.linger:
            self.wfile.flush()
            self._linger()

    def _linger(self) -> None:
        """Half-close, then drop what the client still sends, briefly (lingering close)."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            discarded = 0
            while discarded < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                discarded += len(chunk)
        except OSError:
            pass  # the client is gone or slow: either way we are done with it

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path  # never the query: it may carry a token
        log.debug("%s %s %s -> %s", self.client_address[0], self.command, path, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)
