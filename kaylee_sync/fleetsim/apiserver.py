"""fleetd's HTTP API v1, served over a unix socket or a loopback TCP port.

fleetctl and Kaylee's ``api`` driver talk to fleetd through this API rather than the
registry, so the simulator serves it too, straight from the registry keys the simulated
engine and agents use. It is built on the standard library's ``http.server`` (no extra
dependency); the resources themselves live in :mod:`apiresources`. Routing follows
fleet's ``api/mux.go``: ``/fleet/v1`` and ``/v1-alpha``, 405 on ``/``, 404 elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from kaylee_sync.fleet.etcd2 import Etcd2Client, Etcd2Unavailable
from kaylee_sync.fleetsim.apiresources import ApiError, FleetApi, Reply
from kaylee_sync.fleetsim.registry import FLEET_VERSION, SimRegistry

log = logging.getLogger(__name__)
_PREFIXES = ("/fleet/v1", "/v1-alpha")


def _route(
    api: FleetApi,
    method: str,
    path: str,
    query: dict[str, list[str]],
    body: bytes,
    content_types: list[str],
) -> Reply:
    for prefix in _PREFIXES:
        if path == prefix:
            raise ApiError(405)
        if path == prefix + "/machines":
            if method == "GET":
                return api.list_machines(query)
            if method == "PATCH":
                return api.patch_machines(body)
            raise ApiError(405, "only GET and PATCH supported against this resource")
        for resource in ("units", "state"):
            base = f"{prefix}/{resource}"
            if path == base:
                if method != "GET":
                    raise ApiError(405, "only GET supported against this resource")
                return api.list_units(query) if resource == "units" else api.list_states(query)
            if not path.startswith(base + "/"):
                continue
            item = path[len(base) + 1 :]
            if not item or "/" in item:
                raise ApiError(404)
            if resource == "state":
                if method != "GET":
                    raise ApiError(405, "only GET supported against this resource")
                return api.get_state(item)
            if method == "GET":
                return api.get_unit(item)
            if method == "DELETE":
                return api.delete_unit(item)
            if method == "PUT":
                problem = _content_type_problem(content_types)
                if problem:
                    raise ApiError(415, problem)
                return api.put_unit(item, body)
            raise ApiError(405, "only GET, PUT and DELETE supported against this resource")
    raise ApiError(405 if path == "/" else 404)


def _content_type_problem(values: list[str]) -> str | None:
    if len(values) != 1:
        return f"expected 1 Content-Type, got {len(values)}"
    if values[0].split(";", 1)[0].strip() != "application/json":
        return "only acceptable Content-Type is application/json"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _ApiHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, as Go's server offers
    # Buffered: the headers and the body leave in one write (the base class flushes after
    # each request). Unbuffered, they are two TCP segments, and Nagle's algorithm holds
    # the body until the client's delayed ACK: 40 ms per reply over TCP, which made the
    # api driver look 20 times slower than it is (bench/fleet_submit).
    wbufsize = 64 * 1024
    server_version = f"fleetd/{FLEET_VERSION}"
    sys_version = ""

    def _serve(self) -> None:
        url = urlsplit(self.path)
        body = self._body()
        try:
            status, payload = _route(
                self.server.api,
                self.command,
                unquote(url.path),
                parse_qs(url.query, keep_blank_values=True),
                body,
                self.headers.get_all("Content-Type") or [],
            )
        except ApiError as exc:
            status, payload = exc.status, {"error": {"code": exc.status, "message": exc.message}}
        except Etcd2Unavailable as exc:
            status, payload = 503, {"error": {"code": 503, "message": str(exc)}}
        except Exception:
            log.exception("fleet API: %s %s failed", self.command, self.path)
            status, payload = 500, {"error": {"code": 500, "message": ""}}
        self._reply(status, payload)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST = _serve

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, payload: Any) -> None:
        data = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        if status != 204:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and status != 204:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fleet API: " + format, *args)

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"


class _ApiHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Any, api: FleetApi, family: int) -> None:
        self.address_family = family
        self.api = api
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_UNIX:
            # HTTPServer.server_bind would resolve the socket path as a host name.
            self.socket.bind(self.server_address)
            self.server_address = self.socket.getsockname()
            self.server_name, self.server_port = "localhost", 0
        else:
            super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End idle keep-alive connections so their handler threads finish now."""
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class FleetApiServer:
    """fleet's API over the keys under ``prefix``. ``address``: ``unix:///path/fleet.sock``,
    a socket path, or ``tcp://127.0.0.1:0`` (port 0 = any free port; see ``url``)."""

    def __init__(self, etcd_endpoint: str, prefix: str, address: str = "tcp://127.0.0.1:0") -> None:
        self._client = Etcd2Client(etcd_endpoint)
        api = FleetApi(SimRegistry(self._client, prefix))
        self.socket_path: Path | None = None
        if address.startswith("tcp://"):
            host, _, port = address[len("tcp://") :].rpartition(":")
            self._server = _ApiHTTPServer((host, int(port)), api, socket.AF_INET)
            bound_host, bound_port = self._server.server_address[:2]
            self.url = f"http://{bound_host!s}:{bound_port}"
        else:
            path = Path(address.removeprefix("unix://"))
            if path.is_socket():
                path.unlink()  # a stale socket from an earlier run
            self.socket_path = path
            self._server = _ApiHTTPServer(str(path), api, socket.AF_UNIX)
            self.url = f"unix://{path}"
        self._thread: threading.Thread | None = None

    def start(self) -> FleetApiServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name="fleetsim-api",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.close_connections()
        self._server.server_close()
        self._client.close()
        if self.socket_path is not None and self.socket_path.is_socket():
            os.unlink(self.socket_path)

    def __enter__(self) -> FleetApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
