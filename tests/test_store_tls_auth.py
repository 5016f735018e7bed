"""The store against etcd servers that require TLS client certificates or a password.

Certificates come from the ``openssl`` command line (a throwaway CA, a server certificate
for the IP 127.0.0.1 and a client certificate); the TLS tests are skipped only when the
machine has no ``openssl`` at all. Auth is enabled through etcd's own Auth RPCs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import etcd3
import pytest
from etcd3 import etcdrpc
from etcd3.etcdrpc import auth_pb2

from kaylee_sync.embedded_etcd import EmbeddedEtcd, ServerTls
from kaylee_sync.errors import StoreError, StoreUnavailable
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.store import Store

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command is needed to make certificates"
)
PASSWORD = "correct-horse-battery"


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(where: Path) -> Path:
    """ca.crt; server.crt/key (IP SAN 127.0.0.1); client.crt/key, all P-256, valid 2 days."""
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(where, "req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=kaylee-sync test CA")  # fmt: skip
    extensions = {
        "server": "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in extensions.items():
        (where / f"{name}.ext").write_text(ext)
        _openssl(where, "req", *new_key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=kaylee-{name}")  # fmt: skip
        _openssl(where, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt",
                 "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt",
                 "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return where


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make certificates")
    return _make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """etcd on https that refuses clients without a certificate signed by the test CA."""
    tls = ServerTls(pki / "server.crt", pki / "server.key", pki / "ca.crt", client_cert_auth=True)
    data = tmp_path_factory.mktemp("etcd-tls") / "data"
    with EmbeddedEtcd(data_dir=data, name="kaylee-tls", tls=tls) as server:
        yield server


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """etcd with auth on: ``root`` may do anything, ``kaylee`` only under /allowed/.

    Tokens expire after 1 s idle, so the tests also exercise the store's token renewal.
    """
    data = tmp_path_factory.mktemp("etcd-auth") / "data"
    with EmbeddedEtcd(
        data_dir=data, name="kaylee-auth", extra_args=("--auth-token-ttl", "1")
    ) as server:
        admin = etcd3.client("127.0.0.1", server.client_port, timeout=5)
        auth = admin.authstub
        for user, role in [("root", "root"), ("kaylee", "kaylee")]:
            auth.UserAdd(etcdrpc.AuthUserAddRequest(name=user, password=PASSWORD), 5)
            auth.RoleAdd(etcdrpc.AuthRoleAddRequest(name=role), 5)
            auth.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user=user, role=role), 5)
        allowed = auth_pb2.Permission(
            permType=auth_pb2.Permission.READWRITE, key=b"/allowed/", range_end=b"/allowed0"
        )
        auth.RoleGrantPermission(
            etcdrpc.AuthRoleGrantPermissionRequest(name="kaylee", perm=allowed), 5
        )
        auth.AuthEnable(etcdrpc.AuthEnableRequest(), 5)
        admin.close()
        yield server


def _settings(server: EmbeddedEtcd, prefix: str = "/kaylee2", **kwargs: object) -> EtcdSettings:
    return EtcdSettings(endpoints=(server.endpoint,), prefix=prefix, timeout=3.0, **kwargs)  # type: ignore[arg-type]


@needs_openssl
def test_tls_with_ca_and_client_certificate_round_trips(
    tls_server: EmbeddedEtcd, pki: Path
) -> None:
    settings = _settings(
        tls_server,
        ca_file=str(pki / "ca.crt"),
        cert_file=str(pki / "client.crt"),
        key_file=str(pki / "client.key"),
    )
    with Store(settings) as store:
        store.put_unit("web", "{}")
        events, cancel = store.watch_prefix("units/")
        store.delete_unit("web")
        assert next(events).type == "delete"
        cancel()
        assert store.get_unit("web") is None


@needs_openssl
@pytest.mark.parametrize("with_ca", [True, False], ids=["no-client-cert", "untrusted-server"])
def test_tls_failure_is_one_clean_line(tls_server: EmbeddedEtcd, pki: Path, with_ca: bool) -> None:
    settings = (
        _settings(tls_server, ca_file=str(pki / "ca.crt")) if with_ca else _settings(tls_server)
    )

    with Store(settings) as store, pytest.raises(StoreError) as caught:
        store.list_units()

    assert isinstance(caught.value, StoreUnavailable)
    assert str(caught.value) == (
        f"cannot reach etcd at {tls_server.endpoint}: "
        "TLS handshake failed (check the CA, client certificate and key)"
    )


def test_right_password_reads_writes_and_watches(auth_server: EmbeddedEtcd) -> None:
    with Store(_settings(auth_server, username="root", password=PASSWORD)) as store:
        store.put_unit("web", "{}")
        events, cancel = store.watch_prefix("units/")
        store.delete_unit("web")
        assert next(events).key == "units/web"
        cancel()


def test_expired_token_is_renewed_transparently(auth_server: EmbeddedEtcd) -> None:
    with Store(_settings(auth_server, username="root", password=PASSWORD)) as store:
        store.put("sync/status", "{}")
        time.sleep(2.5)  # > --auth-token-ttl 1: etcd forgets the token
        assert store.get("sync/status") is not None


def test_wrong_password_names_the_user_not_the_password(auth_server: EmbeddedEtcd) -> None:
    settings = _settings(auth_server, username="root", password="wrong-pass")
    with Store(settings) as store, pytest.raises(StoreError) as caught:
        store.list_units()

    message = str(caught.value)
    assert message == f"etcd authentication failed for user 'root' at {auth_server.endpoint}"
    assert "wrong-pass" not in message and PASSWORD not in message


def test_no_credentials_on_an_auth_cluster_says_so(auth_server: EmbeddedEtcd) -> None:
    with (
        Store(_settings(auth_server)) as store,
        pytest.raises(StoreError, match="requires authentication"),
    ):
        store.list_units()


def test_permission_denied_names_the_user_and_action(auth_server: EmbeddedEtcd) -> None:
    kaylee = {"username": "kaylee", "password": PASSWORD}
    with Store(_settings(auth_server, prefix="/allowed", **kaylee)) as store:
        assert store.put_unit("web", "{}") > 0
    denied = r"user 'kaylee' may not write units/web .*permission denied"
    forbidden = _settings(auth_server, prefix="/forbidden", **kaylee)
    with Store(forbidden) as store, pytest.raises(StoreError, match=denied):
        store.put_unit("web", "{}")
