"""Slow HTTP clients for the listener's benchmark and tests: a slowloris, on loopback only.

Each client connects, sends the start of a request head and then one more header line
every ``every`` seconds, never finishing its request — the cheapest way to hold a
server's connections. A client the server drops (deadline, connection bound) connects
again at once, as an attacker would. One thread drives them all with a selector.

It refuses any address but loopback: the workplace allows load only against servers on
this machine, and so does common sense.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import selectors
import signal
import socket
import sys
import threading
import time

HEAD = b"POST /hooks/git HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"


class Slowloris:
    """``count`` slow clients of ``address`` until :meth:`stop` (or the block) ends."""

    def __init__(self, address: tuple[str, int], count: int, every: float = 1.0) -> None:
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise ValueError(f"{address[0]} is not a loopback address")
        self.address = address
        self.count = count
        self.every = every
        self.connects = 0  # connections made, first ones and reconnections
        self.dropped = 0  # connections the server closed or reset
        self.failed = 0  # connection attempts that failed (refused, timed out)
        self._socks: dict[socket.socket, None] = {}
        self._selector = selectors.DefaultSelector()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    @property
    def held(self) -> int:
        """Connections open right now."""
        return len(self._socks)

    def start(self) -> Slowloris:
        self._top_up(self.count)  # the first ones before start() returns
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(30)
        for sock in list(self._socks):
            self._close(sock)
        self._selector.close()

    def __enter__(self) -> Slowloris:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        next_line = time.monotonic() + self.every
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                self._readable(key.fileobj)  # type: ignore[arg-type]
            if time.monotonic() >= next_line:
                next_line += self.every
                for sock in list(self._socks):
                    self._send(sock, b"X-Padding: slow\r\n")
            # reconnect what was dropped, a bounded number per turn (no busy loop)
            self._top_up(min(self.count - len(self._socks), 200))

    def _top_up(self, wanted: int) -> None:
        for _ in range(max(wanted, 0)):
            try:
                sock = socket.create_connection(self.address, timeout=1.0)
            except OSError:
                self.failed += 1
                return  # the server's backlog is full, or it is gone: try next turn
            self.connects += 1
            sock.setblocking(False)
            self._socks[sock] = None
            self._selector.register(sock, selectors.EVENT_READ)
            self._send(sock, HEAD)

    def _readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # closed or reset by the server (an answer, if any, is ignored)
            self.dropped += 1
            self._close(sock)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except BlockingIOError:
            pass  # the server does not read: that is fine, we are slow anyway
        except OSError:
            self.dropped += 1
            self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        if self._socks.pop(sock, 0) is None:
            self._selector.unregister(sock)
            sock.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.slowloris --port P [--clients N] [--seconds S]``: run in a process
    of its own (so that its work does not slow the measuring process), print ``ready``
    once the clients are connected, and a JSON line of counts when it stops (after
    ``--seconds``, at SIGTERM, or when its standard input closes)."""
    parser = argparse.ArgumentParser(prog="python -m bench.slowloris", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=120.0, help="stop after (bounded)")
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    with Slowloris((args.host, args.port), args.clients) as slow:
        print("ready", flush=True)
        done.wait(args.seconds)
        counts = {"held": slow.held, "connects": slow.connects, "dropped": slow.dropped,
                  "failed": slow.failed}  # fmt: skip
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
