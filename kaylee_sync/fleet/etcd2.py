"""A thin client for etcd's v2 keys API, the only API fleet's registry speaks.

No maintained Python client for the v2 API exists, and fleet needs only a handful of
calls (get, set with compare, create, delete, long-poll watch, TTL refresh), so this is
a small adapter over httpx: several endpoints with failover, TLS, basic auth, timeouts.
Writes (PUT, DELETE) go through ``wire.py`` instead, a lean keep-alive client that
costs a tenth of httpx's CPU per request (submitting units is nothing but writes); it
is thread-safe, so a driver may keep several writes in flight.

Errors (every httpx error is wrapped here, ``raise … from exc``)::

    FleetError
    ├── Etcd2Error              etcd answered with an error code (``code``, ``index``)
    │   ├── KeyNotFound         100 (also raised by set(prev_exist=True) on a missing key)
    │   ├── CompareFailed       101 prevValue / prevIndex did not match
    │   ├── NotAFile            102 the key is a directory
    │   ├── AlreadyExists       105 create() of an existing key
    │   ├── NotEmpty            108 a plain (non-recursive) delete of a non-empty directory
    │   ├── Unauthorized        110 wrong or missing user/password (names the user only)
    │   └── EventIndexCleared   401 watch index too old: read again, then watch
    └── FleetUnavailable
        └── Etcd2Unavailable    no endpoint answered (or etcd reported it cannot serve)

Credentials never appear in ``repr``, log lines or error messages.
"""

from __future__ import annotations

import base64
import json
import logging
import posixpath
import re
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx

from kaylee_sync.errors import FleetError, FleetUnavailable
from kaylee_sync.fleet.guarded import guarded_transport
from kaylee_sync.fleet.wire import Interrupted, NotSent, Timeout, Wire

log = logging.getLogger(__name__)


class Etcd2Error(FleetError):
    """etcd's v2 API answered with an error body ``{"errorCode", "message", "cause"}``."""

    def __init__(self, message: str, code: int = 0, index: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.index = index


class KeyNotFound(Etcd2Error):
    """errorCode 100: the key does not exist."""


class CompareFailed(Etcd2Error):
    """errorCode 101: prevValue or prevIndex did not match (someone else wrote first)."""


class NotAFile(Etcd2Error):
    """errorCode 102: the operation needs a value key and found a directory."""


class AlreadyExists(Etcd2Error):
    """errorCode 105: create() (prevExist=false) found the key already there."""


class NotEmpty(Etcd2Error):
    """errorCode 108: delete(dir=True) found the directory not empty."""


class Unauthorized(Etcd2Error):
    """errorCode 110: the cluster has auth on and refused our credentials (or none)."""


class EventIndexCleared(Etcd2Error):
    """errorCode 401: the watch index fell out of etcd's 1000-event history."""


class Etcd2Unavailable(FleetUnavailable):
    """No endpoint could be reached, or etcd said it cannot serve right now."""


_ERRORS: dict[int, type[Etcd2Error]] = {
    100: KeyNotFound,
    101: CompareFailed,
    102: NotAFile,
    105: AlreadyExists,
    108: NotEmpty,
    110: Unauthorized,
    401: EventIndexCleared,
}
# 300 raft internal, 301 leader election in progress, 402 watcher cleared by recovery
_UNAVAILABLE_CODES = frozenset({300, 301, 402})


@dataclass(frozen=True)
class Node:
    """One v2 node. ``etcd_index`` is the response's X-Etcd-Index (0 on child nodes)."""

    key: str
    value: str | None = None
    dir: bool = False
    nodes: tuple[Node, ...] = ()
    modified_index: int = 0
    created_index: int = 0
    ttl: int | None = None
    expiration: str | None = None
    etcd_index: int = field(default=0, compare=False)  # when it was read, not what it is

    @property
    def name(self) -> str:
        """The last path segment of the key."""
        return self.key.rstrip("/").rsplit("/", 1)[-1]

    def walk(self) -> list[Node]:
        """This node and all its descendants, depth first."""
        out = [self]
        for child in self.nodes:
            out.extend(child.walk())
        return out


@dataclass(frozen=True)
class Event:
    """What a watch saw: ``action`` is set, create, update, delete, expire, compareAndSwap…"""

    action: str
    node: Node
    prev_node: Node | None
    etcd_index: int


def _node(raw: Mapping[str, Any], etcd_index: int = 0) -> Node:
    return Node(
        key=str(raw.get("key", "/")),
        value=raw.get("value"),
        dir=bool(raw.get("dir", False)),
        nodes=tuple(_node(n) for n in raw.get("nodes", ()) or ()),
        modified_index=int(raw.get("modifiedIndex", 0)),
        created_index=int(raw.get("createdIndex", 0)),
        ttl=raw.get("ttl"),
        expiration=raw.get("expiration"),
        etcd_index=etcd_index,
    )


def key_path(key: str) -> str:
    """The URL path for ``key``: absolute, no doubled slashes, every odd byte escaped,
    and ``.``/``..`` segments resolved as etcd resolves them (it cleans every key), so
    that a hostile name can neither climb out of ``/v2/keys`` nor meet a redirect."""
    trailing = "/" if key.endswith("/") and key.strip("/") else ""
    key = posixpath.normpath("/" + re.sub("/+", "/", key).lstrip("/"))
    key = "/" + key.lstrip("/")  # normpath keeps a leading "//"
    return "/v2/keys" + quote(key.rstrip("/") + trailing if key != "/" else "/", safe="/")


def _flag(value: bool) -> str:
    return "true" if value else "false"


class Etcd2Client:
    """etcd v2 keys API over several endpoints; the one that last answered is tried first."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        self.endpoints: tuple[str, ...] = ()
        for endpoint in endpoints:
            parts = urlsplit(endpoint.strip().rstrip("/"))
            if parts.username is not None and username is None:
                # credentials in the URL move to the auth header and out of every message
                username, password = parts.username, parts.password or ""
            netloc = parts.netloc.rsplit("@", 1)[-1]
            self.endpoints += (urlunsplit((parts.scheme, netloc, parts.path, "", "")),)
        if not self.endpoints:
            raise ValueError("etcd v2 client needs at least one endpoint")
        self.timeout = timeout
        verify: ssl.SSLContext | bool = True
        if ca_cert or cert:
            verify = ssl.create_default_context(cafile=ca_cert)
            if cert:
                verify.load_cert_chain(cert, key)
        self.username = username  # shown in errors; the password never is
        auth = httpx.BasicAuth(username, password or "") if username is not None else None
        #: called with a description of each write right before it is sent — before each
        #: endpoint is tried, and again on the socket (guarded.py); raising refuses it.
        #: The fleet drivers' lease guard (see throttle.py).
        self.before_write: Callable[[str], None] | None = None
        transport = guarded_transport(self._check_write, verify=verify)
        self._http = httpx.Client(auth=auth, timeout=timeout, transport=transport)
        self._current = 0
        self._tls: ssl.SSLContext | None = None  # the wire's; httpx's default CAs unless given
        if isinstance(verify, ssl.SSLContext):
            self._tls = verify
        elif any(e.startswith("https:") for e in self.endpoints):
            self._tls = httpx.create_ssl_context()
        self._authorization: str | None = None
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self._authorization = f"Basic {token}"
        self._wires: dict[str, Wire] = {}
        self._wires_lock = threading.Lock()

    def _check_write(self, what: str) -> None:
        if self.before_write is not None:
            self.before_write(what)

    def __repr__(self) -> str:
        return f"Etcd2Client({list(self.endpoints)!r})"

    def close(self) -> None:
        self._http.close()
        with self._wires_lock:
            wires, self._wires = list(self._wires.values()), {}
        for wire in wires:
            wire.close()

    def _wire(self, endpoint: str) -> Wire:
        with self._wires_lock:
            wire = self._wires.get(endpoint)
            if wire is None:
                wire = self._wires[endpoint] = Wire(
                    endpoint,
                    timeout=self.timeout,
                    check=self._check_write,
                    tls=self._tls,
                    authorization=self._authorization,
                )
            return wire

    def __enter__(self) -> Etcd2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the keys API -------------------------------------------------------------

    def get(self, key: str, recursive: bool = False, sorted: bool = False) -> Node | None:
        """The node at ``key`` (with children if a directory), or None if it does not exist."""
        params = {"recursive": _flag(recursive), "sorted": _flag(sorted)}
        try:
            body, index = self._request("GET", key, params=params)
        except KeyNotFound:
            return None
        return _node(body["node"], index)

    def set(
        self,
        key: str,
        value: str,
        ttl: int | None = None,
        prev_exist: bool | None = None,
        prev_value: str | None = None,
        prev_index: int | None = None,
    ) -> Node:
        """Write ``value``; the ``prev_*`` arguments make it a compare-and-swap."""
        form: dict[str, str] = {"value": value}
        if ttl is not None:
            form["ttl"] = str(ttl)
        if prev_exist is not None:
            form["prevExist"] = _flag(prev_exist)
        if prev_value is not None:
            form["prevValue"] = prev_value
        if prev_index is not None:
            form["prevIndex"] = str(prev_index)
        body, index = self._request("PUT", key, data=form)
        return _node(body["node"], index)

    def create(self, key: str, value: str, ttl: int | None = None) -> Node:
        """Write ``value`` only if ``key`` does not exist yet; else raise AlreadyExists."""
        return self.set(key, value, ttl=ttl, prev_exist=False)

    def refresh_ttl(self, key: str, ttl: int) -> Node:
        """Extend an existing key's TTL without changing its value (and without waking
        watchers: etcd does not report refreshes as events)."""
        form = {"ttl": str(ttl), "refresh": "true", "prevExist": "true"}
        body, index = self._request("PUT", key, data=form)
        return _node(body["node"], index)

    def delete(
        self,
        key: str,
        recursive: bool = False,
        dir: bool = False,
        prev_value: str | None = None,
        prev_index: int | None = None,
    ) -> bool:
        """Delete ``key``; False if it did not exist. ``prev_*`` make it compare-and-delete."""
        params: dict[str, str] = {}
        if recursive:
            params["recursive"] = "true"
        if dir:
            params["dir"] = "true"
        if prev_value is not None:
            params["prevValue"] = prev_value
        if prev_index is not None:
            params["prevIndex"] = str(prev_index)
        try:
            self._request("DELETE", key, params=params)
        except KeyNotFound:
            return False
        return True

    def watch(
        self, key: str, wait_index: int, recursive: bool = True, timeout: float = 30.0
    ) -> Event | None:
        """Long-poll for the first change at or after ``wait_index``; None on timeout."""
        params = {"wait": "true", "waitIndex": str(wait_index), "recursive": _flag(recursive)}
        try:
            body, index = self._request("GET", key, params=params, read_timeout=timeout)
        except _WatchTimeout:
            return None
        if not body:
            return None
        prev = body.get("prevNode")
        return Event(
            action=str(body.get("action", "")),
            node=_node(body["node"]),
            prev_node=_node(prev) if prev else None,
            etcd_index=index,
        )

    def index(self) -> int:
        """The cluster's current X-Etcd-Index (a starting point for watch)."""
        _, index = self._request("GET", "/", params={})
        return index

    # -- transport ----------------------------------------------------------------

    def _request(
        self,
        method: str,
        key: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> tuple[dict[str, Any], int]:
        path = key_path(key)
        if method != "GET":
            return self._write(method, key, path, params=params, data=data)
        timeout: httpx.Timeout | Any = httpx.USE_CLIENT_DEFAULT
        if read_timeout:
            timeout = httpx.Timeout(self.timeout, read=read_timeout)
        failures: list[str] = []
        count = len(self.endpoints)
        for attempt in range(count):
            i = (self._current + attempt) % count
            endpoint = self.endpoints[i]
            try:
                resp = self._http.request(
                    method, endpoint + path, params=params, data=data, timeout=timeout
                )
            except httpx.ReadTimeout as exc:
                if read_timeout:
                    raise _WatchTimeout from exc
                failures.append(f"{endpoint}: timed out")
                continue
            except httpx.HTTPError as exc:
                failures.append(f"{endpoint}: {_reason(exc)}")
                continue
            self._current = i
            status, index = resp.status_code, _index(resp.headers.get("X-Etcd-Index"))
            return self._decode(method, key, endpoint, status, index, resp.content)
        raise Etcd2Unavailable(f"etcd v2 unreachable ({method} {key}): " + "; ".join(failures))

    def _write(
        self,
        method: str,
        key: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
    ) -> tuple[dict[str, Any], int]:
        """A write through the wire: the next endpoint is tried only if this one surely
        did not get it (a write that may have been applied is never repeated here)."""
        target = path + ("?" + urlencode(params) if params else "")
        form = _form(data) if data is not None else None
        failures: list[str] = []
        count = len(self.endpoints)
        for attempt in range(count):
            i = (self._current + attempt) % count
            endpoint = self.endpoints[i]
            self._check_write(f"{method} {key}")
            try:
                answer = self._wire(endpoint).request(method, target, form)
            except NotSent as exc:
                failures.append(f"{endpoint}: {exc}")
                continue
            except Timeout:
                failures.append(f"{endpoint}: timed out")
                break
            except Interrupted as exc:
                failures.append(f"{endpoint}: {exc}")
                break
            self._current = i
            return self._decode(method, key, endpoint, answer.status, answer.index, answer.body)
        raise Etcd2Unavailable(f"etcd v2 unreachable ({method} {key}): " + "; ".join(failures))

    def _decode(
        self, method: str, key: str, endpoint: str, status: int, index: int, content: bytes
    ) -> tuple[dict[str, Any], int]:
        try:
            body = json.loads(content) if content else {}
        except ValueError:
            body = None
        if 300 <= status < 400:  # etcd's v2 API does not redirect: a proxy, or a bad path
            raise Etcd2Error(f"etcd v2 at {endpoint}: redirected, HTTP {status} ({method} {key})")
        if status in (401, 403) and not (isinstance(body, dict) and "errorCode" in body):
            # v2 auth answers 401 {"message": "Insufficient credentials"}: no errorCode
            raise Etcd2Error(f"etcd v2 at {endpoint}: permission denied ({method} {key})")
        if not isinstance(body, dict):
            raise Etcd2Unavailable(
                f"etcd v2 at {endpoint}: unexpected HTTP {status} ({method} {key})"
            )
        if "errorCode" in body:
            code = int(body["errorCode"])
            message = str(body.get("message", "")).replace("\n", " ")
            text = f"etcd v2: {message} ({method} {key}, code {code})"
            if code == 110:
                who = f"user {self.username!r}" if self.username else "no credentials"
                text = f"etcd v2: authentication failed with {who} ({method} {key})"
            if code in _UNAVAILABLE_CODES:
                raise Etcd2Unavailable(text)
            raise _ERRORS.get(code, Etcd2Error)(text, code, int(body.get("index", index) or 0))
        if status >= 500:
            raise Etcd2Unavailable(f"etcd v2 at {endpoint}: HTTP {status} ({key})")
        return body, index


class _WatchTimeout(Exception):
    """Internal: a long poll ended without an event."""


def _percent(text: str) -> str:
    # Every byte percent-encoded: valid form encoding (any octet may be escaped), and one
    # C call, where urlencode's per-character quoting cost ~0.2 ms for a unit body.
    return "%" + text.encode().hex("%") if text else ""


def _form(data: Mapping[str, str]) -> bytes:
    """``data`` as an application/x-www-form-urlencoded body."""
    return "&".join(f"{k}={_percent(v)}" for k, v in data.items()).encode("ascii")  # our names


def _index(header: str | None) -> int:
    return int(header or 0)


def _reason(exc: httpx.HTTPError) -> str:
    # httpx messages carry the URL at most (auth travels in a header), never credentials
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text
