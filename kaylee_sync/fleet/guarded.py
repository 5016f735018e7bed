"""An httpx transport that asks the write guard at the last moment: on the socket write.

The lease check before a fleet write (throttle.py) can only be as late as the code that
runs it. Between that check and the bytes leaving the process lie the request building,
the connection pool and the HTTP serialisation — on a starved machine, many
milliseconds in which a SIGSTOP (a VM stall, a swap storm) can land, so that a resumed,
deposed leader still sends the one request it had checked. Checking again inside the
network stream, right before the request line and headers are handed to the socket,
shrinks that window to a few bytecodes. It cannot close it (nothing local can: etcd's
v2 API has no fence), which is why every write is also conditional on what was read
(registry.py) and passes clean up what a stale write could still leave (repair).

httpx does not expose httpcore's ``network_backend``; the one private attribute used to
install it is read in :func:`guarded_transport` only, and a test fails if it moves.
"""

from __future__ import annotations

import ssl
import typing
from collections.abc import Callable
from typing import Any

import httpcore
import httpx

#: request lines that change something (fleet's registry and API are written with these)
_WRITES = (b"PUT ", b"POST ", b"DELETE ", b"PATCH ")

Check = Callable[[str], None]


class _GuardedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, check: Check) -> None:
        self._inner, self._check = inner, check

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer.startswith(_WRITES):
            # The request line and headers go out in one write: refusing here sends nothing.
            self._check(buffer.split(b"\r\n", 1)[0].decode("latin-1"))
        self._inner.write(buffer, timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _GuardedStream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), self._check
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend, check: Check) -> None:
        self._inner, self._check = inner, check

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _GuardedStream(stream, self._check)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        return _GuardedStream(stream, self._check)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def guarded_transport(check: Check, **options: Any) -> httpx.HTTPTransport:
    """``httpx.HTTPTransport(**options)`` whose connections call ``check(request line)``
    right before sending a PUT, POST, DELETE or PATCH; an exception it raises
    propagates from the request and nothing is sent."""
    transport = httpx.HTTPTransport(**options)
    pool = transport._pool
    pool._network_backend = _GuardedBackend(pool._network_backend, check)
    return transport
