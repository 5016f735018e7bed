"""The one registry of secrets, and :func:`redact`, which keeps them out of every output.

Error messages are written not to contain credentials, but a message can still quote
something that does: a remote URL with a token in its userinfo, git's stderr, an
exception from a library that echoes its arguments. Every layer that turns such text
into output — the source's error messages, ``sync/status``, the log filter — passes it
through :func:`redact`; every secret the process learns (a Git token, a URL password,
the webhook secret, the etcd password) is registered here the moment it is read. One
registry, at the bottom of the layers, so that no path can consult the wrong list.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote

MASK = "***"

# scheme://userinfo@ — greedy up to the authority's last "@" (a password may hold one)
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#]*@")


class _Registry:
    """The secrets registered so far, compiled into one alternation (longest first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, secret: str) -> None:
        with self._lock:
            # the percent-encoded form is what appears inside a URL
            self._values.update({secret, quote(secret, safe="")})
            ordered = sorted(self._values, key=len, reverse=True)  # a longer one may hold another
            self.pattern = re.compile("|".join(map(re.escape, ordered)))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self.pattern = None


_REGISTRY = _Registry()


def register_secret(secret: str | None) -> None:
    """Never show ``secret`` (or its URL-encoded form) again. Empty values are ignored."""
    if secret:
        _REGISTRY.add(secret)


def forget_secrets() -> None:
    """Drop every registered secret (for tests)."""
    _REGISTRY.clear()


def redact(text: str) -> str:
    """``text`` with URL userinfo and every registered secret replaced by ``***``."""
    pattern = _REGISTRY.pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _USERINFO.sub(r"\1" + MASK + "@", text)
