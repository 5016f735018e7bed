"""The etcd v2 client against a real etcd 3.5 (v2 API enabled)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kaylee_sync.embedded_etcd import EmbeddedEtcd, ServerTls, free_port
from kaylee_sync.errors import FleetError, FleetUnavailable
from kaylee_sync.fleet.etcd2 import (
    AlreadyExists,
    CompareFailed,
    Etcd2Client,
    Etcd2Error,
    Etcd2Unavailable,
    EventIndexCleared,
    KeyNotFound,
    NotAFile,
    Unauthorized,
    key_path,
)

from .test_store_tls_auth import PASSWORD, _make_pki


@pytest.fixture
def client(etcd_endpoint: str) -> Iterator[Etcd2Client]:
    with Etcd2Client([etcd_endpoint], timeout=5) as c:
        yield c


@pytest.fixture
def base(etcd_prefix: str) -> str:
    return etcd_prefix + "/v2"


def test_get_missing_key_returns_none(client: Etcd2Client, base: str) -> None:
    assert client.get(base + "/nope") is None


def test_set_then_get_returns_value_and_indexes(client: Etcd2Client, base: str) -> None:
    written = client.set(base + "/a", "hello")
    got = client.get(base + "/a")
    assert got is not None
    assert got.value == "hello"
    assert got.key == base + "/a"
    assert got.modified_index == written.modified_index == got.created_index
    assert got.etcd_index >= written.modified_index > 0
    assert not got.dir


def test_fleet_names_with_colon_at_and_star_round_trip(client: Etcd2Client, base: str) -> None:
    key = base + "/job/k2:web:abc123:d4e5f6:1@x*.service/object"
    client.set(key, '{"Name":"x"}')
    got = client.get(key)
    assert got is not None and got.key == key and got.value == '{"Name":"x"}'
    listing = client.get(base + "/job", recursive=True)
    assert listing is not None
    assert [n.name for n in listing.nodes] == ["k2:web:abc123:d4e5f6:1@x*.service"]


def test_key_path_escapes_reserved_characters() -> None:
    assert key_path("a//b?c#d %e") == "/v2/keys/a/b%3Fc%23d%20%25e"
    assert key_path("/p/job/../../etc/passwd:x/object") == "/v2/keys/etc/passwd%3Ax/object"
    assert key_path("/../../x/./y/") == "/v2/keys/x/y/"
    assert key_path("/") == key_path("") == key_path("..") == "/v2/keys/"


def test_recursive_sorted_get_lists_the_tree(client: Etcd2Client, base: str) -> None:
    for name in ("c", "a", "b"):
        client.set(f"{base}/dir/{name}/leaf", name)
    node = client.get(base + "/dir", recursive=True, sorted=True)
    assert node is not None and node.dir
    assert [n.name for n in node.nodes] == ["a", "b", "c"]
    assert [n.nodes[0].value for n in node.nodes] == ["a", "b", "c"]
    assert {n.key for n in node.walk() if not n.dir} == {f"{base}/dir/{x}/leaf" for x in "abc"}


def test_create_refuses_existing_key(client: Etcd2Client, base: str) -> None:
    client.create(base + "/once", "1")
    with pytest.raises(AlreadyExists) as info:
        client.create(base + "/once", "2")
    assert info.value.code == 105
    assert isinstance(info.value, FleetError)
    assert "\n" not in str(info.value)
    assert client.get(base + "/once").value == "1"  # type: ignore[union-attr]


def test_compare_and_swap_by_value_and_index(client: Etcd2Client, base: str) -> None:
    first = client.set(base + "/cas", "1")
    with pytest.raises(CompareFailed):
        client.set(base + "/cas", "2", prev_value="other")
    with pytest.raises(CompareFailed):
        client.set(base + "/cas", "2", prev_index=first.modified_index + 1000)
    second = client.set(base + "/cas", "2", prev_index=first.modified_index)
    client.set(base + "/cas", "3", prev_value="2")
    assert second.modified_index > first.modified_index
    with pytest.raises(KeyNotFound):
        client.set(base + "/absent", "x", prev_exist=True)


def test_delete_with_compare_and_recursive(client: Etcd2Client, base: str) -> None:
    client.set(base + "/d/x", "1")
    with pytest.raises(CompareFailed):
        client.delete(base + "/d/x", prev_value="2")
    assert client.delete(base + "/d/x", prev_value="1")
    assert not client.delete(base + "/d/x")
    client.set(base + "/d/y/z", "1")
    with pytest.raises(Etcd2Error):
        client.delete(base + "/d")  # a directory needs dir/recursive
    assert client.delete(base + "/d", recursive=True)
    assert client.get(base + "/d") is None


def test_reading_a_directory_as_a_file_is_not_a_file(client: Etcd2Client, base: str) -> None:
    client.set(base + "/p/q", "1")
    with pytest.raises(NotAFile):
        client.set(base + "/p", "x")


def test_ttl_expires_and_refresh_keeps_value(client: Etcd2Client, base: str) -> None:
    node = client.set(base + "/ttl", "v", ttl=1)
    assert node.ttl is not None and node.expiration is not None
    refreshed = client.refresh_ttl(base + "/ttl", 60)
    assert refreshed.value == "v" and refreshed.ttl is not None and refreshed.ttl > 1
    client.set(base + "/short", "v", ttl=1)
    deadline = time.monotonic() + 5
    while client.get(base + "/short") is not None:
        assert time.monotonic() < deadline, "TTL key did not expire"
        time.sleep(0.2)
    assert client.get(base + "/ttl") is not None
    with pytest.raises(KeyNotFound):
        client.refresh_ttl(base + "/gone", 10)


def test_watch_returns_the_next_change(client: Etcd2Client, base: str) -> None:
    start = client.set(base + "/w/seed", "0").etcd_index + 1
    timer = threading.Timer(0.3, lambda: client.set(base + "/w/k", "new"))
    timer.start()
    try:
        event = client.watch(base + "/w", start, recursive=True, timeout=5)
    finally:
        timer.join()
    assert event is not None
    assert event.action == "set"
    assert event.node.key == base + "/w/k" and event.node.value == "new"
    assert event.prev_node is None
    deleted = client.watch(base + "/w", event.node.modified_index + 1, timeout=0.1)
    assert deleted is None  # nothing else happened yet: long poll timed out


def test_watch_sees_history_and_prev_node(client: Etcd2Client, base: str) -> None:
    first = client.set(base + "/h", "a")
    client.set(base + "/h", "b")
    event = client.watch(base + "/h", first.modified_index + 1, recursive=False, timeout=2)
    assert event is not None and event.node.value == "b"
    assert event.prev_node is not None and event.prev_node.value == "a"


def test_watch_with_index_outside_history_is_cleared(client: Etcd2Client, base: str) -> None:
    for i in range(1010):
        client.set(base + "/churn", str(i))
    with pytest.raises(EventIndexCleared):
        client.watch(base + "/churn", 1, timeout=2)


def test_index_reports_cluster_index(client: Etcd2Client, base: str) -> None:
    written = client.set(base + "/i", "x")
    assert client.index() >= written.modified_index


def test_large_values_and_every_odd_character_round_trip(client: Etcd2Client, base: str) -> None:
    # an answer over 2 KiB comes chunked; every byte of the form is percent-encoded
    value = "x" * 100_000 + "é\n&=+%20\u2028\x00 ;\"'"
    assert client.set(base + "/big", value).value == value
    assert client.create(base + "/big2", value).value == value
    assert client.get(base + "/big").value == value  # type: ignore[union-attr]
    assert client.set(base + "/empty", "").value == ""


def test_a_write_that_may_have_been_applied_is_not_sent_elsewhere(
    etcd_endpoint: str, base: str
) -> None:
    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    with silent, Etcd2Client([f"http://127.0.0.1:{silent.getsockname()[1]}", etcd_endpoint],
                             timeout=0.5) as c:  # fmt: skip
        with pytest.raises(Etcd2Unavailable, match="timed out"):
            c.set(base + "/once", "1")
        assert c.get(base + "/once") is None  # the live endpoint never got it


def test_fails_over_to_a_live_endpoint(etcd_endpoint: str, base: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with Etcd2Client([dead, etcd_endpoint], timeout=2) as c:
        c.set(base + "/fo", "1")
        assert c.get(base + "/fo").value == "1"  # type: ignore[union-attr]
        assert c.endpoints[c._current] == etcd_endpoint  # the live one is now tried first


def test_unreachable_cluster_raises_unavailable_without_credentials() -> None:
    dead = [f"http://user:s3cret@127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with Etcd2Client(dead, timeout=1) as c:
        assert "s3cret" not in repr(c)
        with pytest.raises(Etcd2Unavailable) as info:
            c.get("/x")
    assert isinstance(info.value, FleetUnavailable)
    message = str(info.value)
    assert "s3cret" not in message and "user" not in message and "\n" not in message
    assert all(e.split("@")[-1] in message for e in dead)


def test_basic_auth_is_sent_but_never_shown(etcd_endpoint: str, base: str) -> None:
    # etcd without auth enabled accepts (ignores) the header; we check it is configured
    with Etcd2Client(etcd_endpoint, username="root", password="pw-xyz") as c:
        c.set(base + "/auth", "ok")
        assert "pw-xyz" not in repr(c)
        assert c._http.auth is not None


def test_comma_separated_endpoint_string(etcd_endpoint: str) -> None:
    with Etcd2Client(f"{etcd_endpoint}, http://127.0.0.1:1") as c:
        assert c.endpoints == (etcd_endpoint, "http://127.0.0.1:1")


@pytest.fixture(scope="module")
def v2_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """etcd with v2 auth on: only ``root`` (password PASSWORD) may read or write."""
    data = tmp_path_factory.mktemp("etcd-v2auth") / "data"
    with EmbeddedEtcd(data_dir=data, name="kaylee-v2auth") as server:
        e = server.endpoint
        httpx.put(e + "/v2/auth/users/root", json={"user": "root", "password": PASSWORD})
        httpx.put(e + "/v2/auth/enable").raise_for_status()
        revoke = {"role": "guest", "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}}
        httpx.put(e + "/v2/auth/roles/guest", json=revoke, auth=("root", PASSWORD))
        yield server


def test_basic_auth_opens_an_auth_cluster(v2_auth_server: EmbeddedEtcd) -> None:
    with Etcd2Client(v2_auth_server.endpoint, username="root", password=PASSWORD) as c:
        c.set("/auth/k", "ok")
        assert c.get("/auth/k").value == "ok"  # type: ignore[union-attr]
        assert PASSWORD not in repr(c)


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_refused_credentials_name_the_user_not_the_password(
    v2_auth_server: EmbeddedEtcd, password: str | None
) -> None:
    user = "root" if password else None
    client = Etcd2Client(v2_auth_server.endpoint, username=user, password=password)
    with client, pytest.raises(Unauthorized) as info:
        client.get("/auth/k")
    message = str(info.value)
    assert ("'root'" if password else "no credentials") in message
    assert "wrong-password" not in message and "\n" not in message


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedEtcd, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make certificates")
    pki = _make_pki(tmp_path_factory.mktemp("pki-v2"))
    tls = ServerTls(pki / "server.crt", pki / "server.key", pki / "ca.crt", client_cert_auth=True)
    data = tmp_path_factory.mktemp("etcd-v2tls") / "data"
    with EmbeddedEtcd(data_dir=data, name="kaylee-v2tls", tls=tls) as server:
        yield server, pki


def test_tls_with_ca_and_client_certificate(tls_server: tuple[EmbeddedEtcd, Path]) -> None:
    server, pki = tls_server
    assert server.endpoint.startswith("https://")
    with Etcd2Client(
        server.endpoint,
        ca_cert=str(pki / "ca.crt"),
        cert=str(pki / "client.crt"),
        key=str(pki / "client.key"),
    ) as c:
        c.set("/tls/k", "ok")
        assert c.get("/tls/k").value == "ok"  # type: ignore[union-attr]


def test_tls_without_client_certificate_is_unavailable_in_one_line(
    tls_server: tuple[EmbeddedEtcd, Path],
) -> None:
    server, pki = tls_server
    client = Etcd2Client(server.endpoint, ca_cert=str(pki / "ca.crt"), timeout=3)
    with client, pytest.raises(Etcd2Unavailable) as info:
        client.get("/tls/k")
    assert "\n" not in str(info.value) and server.endpoint in str(info.value)
