"""The daemon's HTTP endpoints: probes, metrics and the webhook that asks for a sync.

=========================  ==================================================================
``GET /healthz``           200 ``ok`` while the process works, else 503 and why (liveness)
``GET /readyz``            200 ``ok`` when ready, else 503 and why (readiness)
``GET /metrics``           Prometheus text exposition (OpenMetrics if the scraper asks for it)
``POST /hooks/git``        a push happened: verify the shared secret, then request a sync (202)
=========================  ==================================================================

This module is the routing: what each endpoint answers. The sockets — a total deadline
per connection, a bound on open connections, the backlog, clients that go away — are
:mod:`kaylee_sync.daemon.listener`'s. The webhook body is read only when its declared
length is within ``max_body`` (no chunked bodies, whose length is unknown until read),
and a webhook is checked before anything is triggered.

Requests are logged at DEBUG — method, path without its query, status — never with
their headers, which carry the webhook secret or signature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from http.client import HTTPMessage
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder

from kaylee_sync.daemon.listener import (
    Limits,
    Listener,
    ReadBody,
    Request,
    Response,
    bind,
    default_max_connections,
)
from kaylee_sync.daemon.metrics import Metrics
from kaylee_sync.daemon.triggers import SyncQueue
from kaylee_sync.daemon.webhook import verify
from kaylee_sync.errors import UsageError

__all__ = ["HOOK_PATH", "HttpServer", "Limits", "Response", "parse_listen"]

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]
HOOK_PATH = "/hooks/git"


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
        max_connections: int | None = None,
        backlog: int = Limits.backlog,
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.health = health
        self.ready = ready
        self.webhook_secret = webhook_secret
        self.max_body = max_body
        #: seconds a connection may take in all, from accept to the end of the answer
        self.timeout = timeout
        limits = Limits(
            deadline=timeout,
            max_connections=max_connections or default_max_connections(),
            backlog=backlog,
        )
        host, port = parse_listen(listen)
        try:
            sock = bind(host, port, limits.backlog)
        except OSError as exc:
            raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
        bound_host, bound_port = sock.getsockname()[:2]
        #: the bound address: with port 0, the port the kernel chose
        self.address: tuple[str, int] = (str(bound_host), int(bound_port))
        self._listener = Listener(sock, self._handle, limits)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def open_connections(self) -> int:
        """Connections open right now (for tests and the benchmark)."""
        return self._listener.open_connections

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        """Stop accepting, drop clients still sending, let answers in flight end; join."""
        self._listener.stop()

    def _handle(self, request: Request) -> Response | ReadBody:
        path = urlsplit(request.target).path
        return self.respond(request.method, path, request.headers)

    # -- routing ---------------------------------------------------------------------------

    def respond(self, method: str, path: str, headers: HTTPMessage) -> Response | ReadBody:
        """Answer one request, or say how much body to read first (the webhook)."""
        routes: dict[str, tuple[tuple[str, ...], Callable[[], Response | ReadBody]]] = {
            "/healthz": (("GET", "HEAD"), lambda: self._probe(self.health, "health")),
            "/readyz": (("GET", "HEAD"), lambda: self._probe(self.ready, "readiness")),
            "/metrics": (("GET", "HEAD"), lambda: self._metrics(headers.get("Accept", ""))),
        }
        if self.webhook_secret is not None:  # no secret: the endpoint does not exist
            routes[HOOK_PATH] = (("POST",), lambda: self._hook(headers))
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

    def _hook(self, headers: HTTPMessage) -> Response | ReadBody:
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
        return ReadBody(length, lambda body: self._verified(headers, body))

    def _verified(self, headers: HTTPMessage, body: bytes) -> Response:
        assert self.webhook_secret is not None
        reason = verify(dict(headers.items()), body, self.webhook_secret)
        if reason is not None:
            log.warning("webhook refused: %s", reason)
            return Response(HTTPStatus.UNAUTHORIZED, f"{reason}\n")
        log.info("webhook accepted: sync requested")
        self.queue.request("webhook")
        return Response(HTTPStatus.ACCEPTED, "sync requested\n")
