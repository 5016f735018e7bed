"""What the simulated containers serve: health endpoints and presence keys.

fleet knows only systemd states; a real service also answers HTTP and (with a sidekick,
as in the original's sample unit) writes a presence key while it serves. Health-gated
rollouts are about exactly the difference, so the simulator plays it too:

- every machine serves ``GET /<anything>/<KAYLEE_ID>`` on its public IP (a loopback
  address, 127.0.0.N, so that ``${MACHINE_IP}`` in a check URL reaches the right
  machine) and one port shared by all machines: 200 when that instance runs on this
  machine and is healthy, 503 when it runs but is not, 404 when it does not run here;
- an agent writes each healthy instance's presence key (etcd v2, with the state TTL)
  when a ``presence`` template matches the unit, and deletes it when the instance stops
  or turns unhealthy.

Which instances are unhealthy is the cluster's behaviour table (``unhealthy``,
``no_presence``, ``healthy_for=N``; systemd.Behaviour).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: kaylee id -> True (healthy) / False (running, unhealthy) / None (not on this machine)
Lookup = Callable[[str], bool | None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        instance = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        healthy = self.server.lookup(instance)
        code, body = (
            (404, b"not here\n")
            if healthy is None
            else (200, b"ok\n")
            if healthy
            else (503, b"unhealthy\n")
        )
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return  # thousands of checks: the simulator's log stays about fleet


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], lookup: Lookup) -> None:
        self.lookup = lookup
        super().__init__(address, _Handler)


class HealthEndpoints:
    """One HTTP server per machine address, all on the same port."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._servers: dict[str, tuple[_Server, threading.Thread]] = {}

    def serve(self, ip: str, lookup: Lookup) -> None:
        """Serve ``lookup`` on ``ip``:``port`` (the first call picks a free port; the
        others take the same port on their own address, free unless someone else
        serves there too — then OSError, as any server's)."""
        server = _Server((ip, self.port), lookup)
        self.port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever, args=(0.1,), daemon=True, name=f"fleetsim-health-{ip}"
        )
        thread.start()
        self._servers[ip] = (server, thread)

    def withdraw(self, ip: str) -> None:
        entry = self._servers.pop(ip, None)
        if entry is not None:
            entry[0].shutdown()
            entry[0].server_close()

    def stop(self) -> None:
        for ip in list(self._servers):
            self.withdraw(ip)
