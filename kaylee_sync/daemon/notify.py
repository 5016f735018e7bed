"""systemd's notify protocol, by hand: Type=notify readiness, status text and watchdog.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``). That is
a dozen lines, so it is written here rather than pulled in as a dependency; outside
systemd (no ``$NOTIFY_SOCKET``) every call does nothing.

A notification is a courtesy to the service manager, never a reason to fail: a send
error is logged once at WARNING (then at DEBUG) and the daemon carries on. If systemd
really stops hearing us, its watchdog restarts the service — the right outcome. A send
to a datagram socket whose reader has stopped reading blocks once its queue is full,
so every send has a timeout: a stalled service manager must not stall our monitor or
our shutdown.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: seconds one notification may wait for room in the service manager's socket queue
SEND_TIMEOUT = 1.0


class Notifier:
    """Talks to systemd when started by it with ``NOTIFY_SOCKET``; a no-op otherwise."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        self._pid = os.getpid() if pid is None else pid
        self._display = env.get("NOTIFY_SOCKET", "")
        self._address = self._parse_address(self._display)
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._warned = False

    @staticmethod
    def _parse_address(value: str) -> str | None:
        if value.startswith("@"):
            return "\0" + value[1:]  # Linux abstract namespace
        if value.startswith("/"):
            return value
        if value:
            # sd_notify ignores anything else too (e.g. vsock:, which we do not speak)
            log.warning("NOTIFY_SOCKET %r is not a unix socket path; not notifying", value)
        return None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` pings — half of ``WATCHDOG_USEC`` — or None.

        None when there is no watchdog for this process: not under systemd, no or a bad
        ``WATCHDOG_USEC``, or ``WATCHDOG_PID`` naming another process (our parent's
        watchdog settings leaked into our environment).
        """
        if not self.enabled or not self._watchdog_usec.isdigit():
            return None
        if self._watchdog_pid and self._watchdog_pid != str(self._pid):
            return None
        usec = int(self._watchdog_usec)
        return usec / 2 / 1_000_000 if usec > 0 else None

    def ready(self, status: str = "") -> bool:
        """Startup is complete (Type=notify units are "active" from here on)."""
        return self._send("READY=1", status)

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self._send(None, text)

    def watchdog(self) -> bool:
        """Still alive: call every :attr:`watchdog_interval` seconds."""
        return self._send("WATCHDOG=1", "")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self._send("STOPPING=1", "")

    def _send(self, state: str | None, status: str) -> bool:
        if self._address is None:
            return False
        lines = [state] if state else []
        if status:
            # A newline would start another assignment (STATUS=x\nREADY=1): one line only.
            lines.append("STATUS=" + " ".join(status.split()))
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(message, self._address)
        except OSError as exc:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "cannot notify systemd at %s: %s", self._display, exc)
            return False
        return True
