"""The edge between kaylee-sync and etcd3/grpc: connecting, failing over, translating errors.

Everything etcd3 or grpc can raise is caught in :meth:`Connection.call` and re-raised as
one of the project's errors, with one line that names the endpoint(s) and what failed and
never a credential::

    endpoint refused / unreachable / TLS handshake failed  -> StoreUnavailable
    no answer within the timeout                            -> StoreUnavailable
    wrong user or password, permission denied, other errors -> StoreError

Failover: etcd3's ``MultiEndpointEtcd3Client`` marks an endpoint failed when a request
to it is refused but leaves the retry to its caller; :meth:`Connection.call` retries on
the next endpoint. Only "unavailable" is retried (the request never reached a server);
a timeout is not, because a write may have been applied, and because retrying would
stretch a dead cluster's failure past the configured timeout.

Auth: etcd3 authenticates in its constructor, on one randomly chosen endpoint, with raw
grpc errors. We construct it without credentials and authenticate ourselves, lazily on
the first request, so that auth benefits from failover and from the same translation —
and so that an expired token (etcd drops idle simple tokens) is renewed transparently.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

# grpc's C core prints TLS handshake failures and reconnect attempts to stderr, next to
# our one-line message; it reads this variable once, when grpc is first imported, so it
# must be set before the imports below. setdefault: an operator's own choice wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import etcd3
import etcd3.exceptions as etcd3_exc
import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints
from etcd3 import etcdrpc

from kaylee_sync.errors import StoreError, StoreUnavailable, UsageError
from kaylee_sync.settings import EtcdSettings

T = TypeVar("T")

# With several endpoints, one that failed is skipped this long (seconds) while another one
# works; when all have failed they are all tried again at the next request.
_SKIP_FAILED_ENDPOINT = 30.0

# grpc refuses responses over 4 MiB by default; listing a few thousand units can exceed it.
# (etcd3 types `opts` as a dict but hands it to grpc, which wants key/value pairs.)
# grpc also waits before reconnecting a failed channel, doubling up to 120 s by default:
# after an etcd restart every request would fail fast for that long without trying.
# Capped at 1 s, an etcd that is back is reached (and a leader elected) within a second.
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Connection:
    """One etcd3 client for the configured endpoints, with failover, auth and error mapping."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        single = len(settings.endpoints) == 1
        skip = 0.0 if single else _SKIP_FAILED_ENDPOINT
        endpoints = [_endpoint(url, settings, skip) for url in settings.endpoints]
        # failover=True even for one endpoint: with it off, etcd3 refuses to use a failed
        # endpoint again for `time_retry` seconds instead of letting grpc reconnect.
        self.client: Any = etcd3.MultiEndpointEtcd3Client(
            endpoints=endpoints, timeout=settings.timeout, failover=True
        )
        self._auth_lock = threading.Lock()
        self._token: str | None = None

    def close(self) -> None:
        self.client.close()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """grpc call metadata carrying the auth token (None without auth)."""
        return self.client.metadata  # type: ignore[no-any-return]

    def current_endpoint(self) -> str:
        ep = self.client.endpoint_in_use
        return f"{ep.protocol}://{ep.netloc}" if ep is not None else self.settings.endpoints_label

    def mark_current_failed(self) -> None:
        """For raw grpc calls (watch): let the next request fail over, as etcd3 would."""
        self.client.endpoint_in_use.fail()

    def call(self, action: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)``, failing over on refused endpoints; every error translated.

        ``action`` completes "etcd ... failed" in messages, e.g. "read units/web".
        """
        last: BaseException | None = None
        renewed = False
        attempts = len(self.settings.endpoints)
        while attempts > 0:
            attempts -= 1
            try:
                self._authenticate_once()
                return fn(self.client)
            except etcd3_exc.NoServerAvailableError as exc:
                last = last or exc
                break
            except etcd3_exc.ConnectionFailedError as exc:
                last = exc  # etcd3 marked the endpoint failed: the next loop uses another
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    self.mark_current_failed()  # raw call: etcd3 did not mark it
                    last = exc
                elif code == grpc.StatusCode.UNAUTHENTICATED and self._token and not renewed:
                    # The token expired (etcd forgets idle simple tokens): log in again.
                    self._forget_token()
                    renewed, attempts = True, attempts + 1
                else:
                    raise self.translate(action, exc) from exc
            except etcd3_exc.Etcd3Exception as exc:
                raise self.translate(action, exc) from exc
        # Every endpoint refused: clear the marks so the next request tries them all again.
        for ep in self.client.endpoints.values():
            ep.last_failed = 0
        where = self.settings.endpoints_label
        raise StoreUnavailable(f"cannot reach etcd at {where}: {_reason(last)}") from last

    def _authenticate_once(self) -> None:
        user, password = self.settings.username, self.settings.password
        if user is None or password is None or self._token is not None:
            return
        with self._auth_lock:
            if self._token is not None:
                return
            request = etcdrpc.AuthenticateRequest(name=user, password=password)
            response = self.client.authstub.Authenticate(request, self.settings.timeout)
            self._token = str(response.token)
            # Sent as plain metadata: etcd3's call credentials would be refused by grpc on
            # an http:// channel, and metadata works on both.
            self.client.metadata = (("token", self._token),)

    def _forget_token(self) -> None:
        with self._auth_lock:
            self._token = None
            self.client.metadata = None

    def translate(self, action: str, exc: BaseException) -> StoreError:
        """The project error for a non-retryable failure of ``action``."""
        where = self.current_endpoint()
        rpc = _rpc_error(exc)
        code = rpc.code() if rpc is not None else None
        details = _details(rpc)
        user = self.settings.username
        if code == grpc.StatusCode.UNAVAILABLE:
            return StoreUnavailable(f"cannot reach etcd at {where}: {_reason(exc)}")
        if isinstance(exc, etcd3_exc.ConnectionTimeoutError | etcd3_exc.WatchTimedOut) or (
            code == grpc.StatusCode.DEADLINE_EXCEEDED
        ):
            return StoreUnavailable(
                f"etcd at {where} did not answer ({action}) within {self.settings.timeout:g}s"
            )
        if "authentication failed" in details or (
            code == grpc.StatusCode.UNAUTHENTICATED and user is not None
        ):
            return StoreError(f"etcd authentication failed for user '{user}' at {where}")
        if "authentication is not enabled" in details:
            return StoreError(f"etcd at {where} has authentication disabled; omit the user name")
        if "user name is empty" in details or code == grpc.StatusCode.UNAUTHENTICATED:
            return StoreError(f"etcd at {where} requires authentication (--etcd-username)")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return StoreError(f"etcd user '{user}' may not {action} at {where}: permission denied")
        if isinstance(exc, etcd3_exc.RevisionCompactedError):
            return StoreError(f"etcd {action} failed at {where}: revision compacted")
        return StoreError(f"etcd {action} failed at {where}: {details or type(exc).__name__}")


def _endpoint(url: str, settings: EtcdSettings, time_retry: float) -> Any:
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6 literal: grpc wants brackets
    secure = parts.scheme == "https"
    creds = None
    if secure:
        creds = grpc.ssl_channel_credentials(
            _read(settings.ca_file, "--etcd-ca-file"),
            _read(settings.key_file, "--etcd-key-file"),
            _read(settings.cert_file, "--etcd-cert-file"),
        )
    return etcd3.Endpoint(
        host,
        parts.port or 2379,
        secure=secure,
        creds=creds,
        time_retry=time_retry,
        opts=_GRPC_OPTIONS,
    )


def _read(path: str | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror}") from None


def _rpc_error(exc: BaseException | None) -> Any:
    """The grpc error behind ``exc``: itself, or the one etcd3 was handling when it raised."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _details(rpc: Any) -> str:
    if rpc is None:
        return ""
    text = str(rpc.details() or "")
    return text.splitlines()[0][:200] if text else ""


def _reason(exc: BaseException | None) -> str:
    """Why an endpoint could not be reached, in a few words."""
    details = _details(_rpc_error(exc)).lower()
    if "refused" in details:
        return "connection refused"
    if any(word in details for word in ("ssl", "tls", "handshake", "certificate")):
        return "TLS handshake failed (check the CA, client certificate and key)"
    if "deadline" in details or "timeout" in details or "timed out" in details:
        return "timed out"
    if "resolve" in details or "dns" in details:
        return "host name not resolved"
    return details or "unavailable"
