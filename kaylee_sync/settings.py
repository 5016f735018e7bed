"""Settings as frozen dataclasses: the one place where a value's unit, default and reason live.

Command-line options and environment variables only *fill these in* (see ``cli.common``);
the layers below receive a validated settings object and never look at flags or the
environment themselves. Validation happens in ``__post_init__`` so that a settings object
built directly (in tests, in ``--dev``) is checked exactly like one built from flags.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

from kaylee_sync.bounds import check_duration
from kaylee_sync.errors import UsageError
from kaylee_sync.secrets import register_secret


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach the etcd v3 cluster that holds the ``/kaylee2`` keyspace."""

    # The original Kaylee's default: etcd's legacy client port 4001 first, then 2379.
    DEFAULT_ENDPOINTS: ClassVar[str] = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    DEFAULT_PREFIX: ClassVar[str] = "/kaylee2"

    endpoints: tuple[str, ...] = tuple(DEFAULT_ENDPOINTS.split(","))
    """Client URLs (``http://`` or ``https://``, host and port, no path). With more than one
    the store fails over to the next when the current one cannot be reached."""

    prefix: str = DEFAULT_PREFIX
    """Key prefix of every kaylee key; normalised to a leading "/" and no trailing "/".
    Default ``/kaylee2`` is the original Kaylee's, so both can share one cluster's data."""

    ca_file: str | None = None
    """PEM bundle of CAs that sign the etcd server certificates. None: the system roots
    (only used with ``https://`` endpoints)."""

    cert_file: str | None = None
    """PEM client certificate, for servers started with ``--client-cert-auth``; needs
    ``key_file``."""

    key_file: str | None = None
    """PEM private key of ``cert_file``."""

    username: str | None = None
    """etcd user (etcd's own auth, ``etcdctl user add``); needs ``password``."""

    # repr=False: a settings object is logged and shown in tracebacks; the password never is.
    password: str | None = field(default=None, repr=False)
    """Password of ``username``. Never printed, logged or put in an error message."""

    timeout: float = 5.0
    """Seconds each etcd request (and connecting) may take before it fails. Default 5 s:
    long enough for a loaded cluster, short enough that a dead endpoint is noticed and a
    command line does not hang."""

    def __post_init__(self) -> None:
        # Frozen: normalised values are written once, here, through object.__setattr__.
        object.__setattr__(self, "endpoints", tuple(check_endpoint(e) for e in self.endpoints))
        object.__setattr__(self, "prefix", _normalise_prefix(self.prefix))
        register_secret(self.password)  # never in a log line, status or error from now on
        if not self.endpoints:
            raise UsageError("no etcd endpoint given (--etcd-endpoints)")
        if (self.cert_file is None) != (self.key_file is None):
            raise UsageError("--etcd-cert-file and --etcd-key-file must be given together")
        if (self.username is None) != (self.password is None):
            missing = "--etcd-password" if self.password is None else "--etcd-username"
            raise UsageError(
                f"etcd authentication needs both a user and a password: {missing} missing"
            )
        if self.username is not None and (not self.username or ":" in self.username):
            raise UsageError("--etcd-username must be non-empty and must not contain ':'")
        for option, path in (
            ("--etcd-ca-file", self.ca_file),
            ("--etcd-cert-file", self.cert_file),
            ("--etcd-key-file", self.key_file),
        ):
            _check_pem_file(option, path)
        if self.uses_tls_files:
            # A CA or client certificate only makes sense over TLS: refuse the mix rather than
            # silently upgrading (or ignoring the files), so the operator sees the mistake.
            plain = [e for e in self.endpoints if not e.startswith("https://")]
            if plain:
                raise UsageError(
                    f"TLS files given but etcd endpoint {plain[0]} is plain http; use https://"
                )
        if not self.timeout > 0:
            raise UsageError(f"--etcd-timeout must be positive, not {self.timeout}")
        try:
            check_duration(self.timeout)
        except ValueError as exc:
            raise UsageError(f"--etcd-timeout {exc}") from None

    @classmethod
    def from_endpoints_string(
        cls,
        endpoints: str = DEFAULT_ENDPOINTS,
        *,
        prefix: str = DEFAULT_PREFIX,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> EtcdSettings:
        """Settings from the original's comma-separated ``--etcd-endpoints`` value.

        Blank entries (a trailing comma, spaces around commas) are ignored; empty strings for
        the optional values mean "not given", as an empty environment variable does. A
        ``host:port`` without a scheme is taken as etcdctl takes it (:func:`with_scheme`).
        """
        tls = any((ca_file, cert_file, key_file))
        urls = tuple(with_scheme(p.strip(), tls) for p in endpoints.split(",") if p.strip())
        return cls(
            endpoints=urls,
            prefix=prefix,
            ca_file=ca_file or None,
            cert_file=cert_file or None,
            key_file=key_file or None,
            username=username or None,
            password=password or None,
            timeout=timeout,
        )

    @property
    def uses_tls_files(self) -> bool:
        return any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))

    @property
    def endpoints_label(self) -> str:
        """The endpoints as one would type them, for one-line error messages."""
        return ",".join(self.endpoints)


def with_scheme(endpoint: str, tls: bool) -> str:
    """``host:port`` → ``http://host:port``, or ``https://`` when TLS files are given.

    etcdctl v3 accepts scheme-less endpoints (``ETCDCTL_ENDPOINTS=10.0.0.1:2379``) and
    speaks TLS to them when it has certificates; an operator's etcdctl settings mean the
    same here. An endpoint with a scheme is left for :func:`check_endpoint` to judge.
    """
    if "://" in endpoint:
        return endpoint
    return f"{'https' if tls else 'http'}://{endpoint}"


def check_endpoint(url: str, what: str = "etcd endpoint") -> str:
    """Validate one endpoint URL; return it without a trailing "/" (UsageError naming
    ``what`` otherwise)."""
    if not url.isprintable() or not url.isascii():
        raise UsageError(f"{what} {url!r} has a control or non-ASCII character")
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed [
        raise UsageError(f"{what} {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(
            f"{what} {url!r} must start with http:// or https:// (e.g. http://127.0.0.1:2379)"
        )
    if parts.username is not None or parts.password is not None:
        # Do not echo the URL: it holds a password.
        raise UsageError(
            f"{what} URLs must not contain credentials; use --etcd-username and "
            "KAYLEE_ETCD_PASSWORD"
        )
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{what} {url!r} has an invalid port") from None
    if not parts.hostname or port is None:
        raise UsageError(f"{what} {url!r} must name a host and a port, e.g. :2379")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"{what} {url!r} must not have a path, query or fragment")
    return f"{parts.scheme}://{parts.netloc}"


# A PEM bundle of every public CA is about 200 KiB; anything far larger is not one.
_MAX_PEM_BYTES = 4 * 1024 * 1024


def _check_pem_file(option: str, path: str | None) -> None:
    """Refuse a TLS file that is a device, a FIFO or huge: it is read whole when connecting
    (``--etcd-ca-file /dev/zero`` would be read until memory runs out). A missing file is
    reported by the read itself."""
    if path is None:
        return
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{option} {path!r} is not a regular file")
    if st.st_size > _MAX_PEM_BYTES:
        raise UsageError(f"{option} {path!r} is larger than 4 MiB: not a PEM file")


def _normalise_prefix(prefix: str) -> str:
    if not prefix.isprintable() or len(prefix.encode("utf-8", "surrogateescape")) > 1024:
        # A key is bytes in etcd, printed in every error: no control characters, no
        # undecodable bytes from a mangled environment, and short enough to read.
        raise UsageError(f"--etcd-prefix {prefix[:80]!r} must be printable and at most 1 KiB")
    normal = "/" + prefix.strip().strip("/")
    if normal == "/":
        # An empty prefix would mix kaylee's keys with everything else in the cluster
        # (fleet's included) and make prefix scans return foreign keys.
        raise UsageError("--etcd-prefix must name a key prefix such as /kaylee2, not the root")
    if any(seg in ("", ".", "..") for seg in normal[1:].split("/")):
        raise UsageError(f"--etcd-prefix {prefix!r} has an empty, '.' or '..' segment")
    return normal
