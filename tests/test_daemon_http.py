"""The HTTP listener, spoken to over real sockets: probes, metrics, the webhook, hardening."""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from kaylee_sync.daemon.http import HttpServer, parse_listen
from kaylee_sync.daemon.metrics import Metrics
from kaylee_sync.daemon.triggers import SyncQueue
from kaylee_sync.errors import UsageError
from tests.polling import wait_for

SECRET = "hook-secret-4f1c9a"
BODY = b'{"ref": "refs/heads/main"}'


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": "sha256=" + digest, "Content-Type": "application/json"}


class Probe:
    """A health or readiness callback the test can flip."""

    def __init__(self) -> None:
        self.ok, self.message = True, "ok"
        self.raises = False

    def __call__(self) -> tuple[bool, str]:
        if self.raises:
            raise RuntimeError("probe exploded")
        return self.ok, self.message


@pytest.fixture
def queue() -> SyncQueue:
    return SyncQueue()


@pytest.fixture
def health() -> Probe:
    return Probe()


@pytest.fixture
def ready() -> Probe:
    return Probe()


ServerFactory = Callable[..., HttpServer]


@pytest.fixture
def make_server(queue: SyncQueue, health: Probe, ready: Probe) -> Iterator[ServerFactory]:
    servers: list[HttpServer] = []

    def make(**kwargs: object) -> HttpServer:
        options: dict[str, object] = {
            "queue": queue,
            "metrics": Metrics(),
            "health": health,
            "ready": ready,
            "webhook_secret": SECRET,
            **kwargs,
        }
        listen = str(options.pop("listen", "127.0.0.1:0"))
        server = HttpServer(listen, **options)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> HttpServer:
    return make_server()


@pytest.fixture
def client(server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as c:
        yield c


def raw_request(server: HttpServer, request: bytes, *, timeout: float = 3.0) -> bytes:
    """Send bytes as they are; return everything the server answers until it closes."""
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --- probes and metrics -------------------------------------------------------------------


def test_healthz_is_ok_while_the_health_check_passes(client: httpx.Client, health: Probe) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok\n")
    assert response.headers["content-type"].startswith("text/plain")
    health.ok, health.message = False, "the sync loop has not run for 95 s"
    response = client.get("/healthz")
    assert (response.status_code, response.text) == (503, "the sync loop has not run for 95 s\n")


def test_readyz_follows_the_ready_check_and_shows_its_message(
    client: httpx.Client, ready: Probe
) -> None:
    ready.ok, ready.message = False, "leader; first sync\nnot done yet"
    response = client.get("/readyz")
    assert (response.status_code, response.text) == (503, "leader; first sync not done yet\n")
    ready.ok, ready.message = True, "leader; synced"
    response = client.get("/readyz")
    assert (response.status_code, response.text) == (200, "ok: leader; synced\n")


def test_a_probe_that_raises_is_a_503_and_is_logged(
    client: httpx.Client, ready: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    ready.raises = True
    with caplog.at_level(logging.ERROR, logger="kaylee_sync.daemon.http"):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "readiness check failed" in response.text
    assert any("probe exploded" in (r.exc_text or "") for r in caplog.records) or any(
        r.exc_info and "probe exploded" in str(r.exc_info[1]) for r in caplog.records
    )


def test_head_answers_like_get_without_a_body(client: httpx.Client) -> None:
    response = client.head("/healthz")
    assert response.status_code == 200
    assert response.headers["content-length"] == "3"
    assert response.content == b""


def test_metrics_are_served_in_the_prometheus_text_format(
    make_server: ServerFactory,
) -> None:
    metrics = Metrics()
    metrics.set_leader(True)
    server = make_server(metrics=metrics)
    with httpx.Client(base_url=server.url, timeout=5) as c:
        response = c.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        assert "\nkaylee_sync_leader 1.0\n" in response.text
        openmetrics = c.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")


# --- the webhook --------------------------------------------------------------------------


def test_a_signed_github_webhook_requests_a_sync(client: httpx.Client, queue: SyncQueue) -> None:
    response = client.post("/hooks/git", content=BODY, headers=signed(BODY))
    assert response.status_code == 202
    assert queue.wait(0) == "webhook"


def test_a_gitlab_webhook_with_the_token_requests_a_sync(
    client: httpx.Client, queue: SyncQueue
) -> None:
    response = client.post("/hooks/git", content=BODY, headers={"X-Gitlab-Token": SECRET})
    assert response.status_code == 202
    assert queue.wait(0) == "webhook"


@pytest.mark.parametrize(
    "headers",
    [
        signed(BODY, "not-the-secret"),
        {"X-Gitlab-Token": "not-the-secret"},
        {},
    ],
)
def test_a_webhook_that_fails_verification_is_401_and_triggers_nothing(
    client: httpx.Client, queue: SyncQueue, headers: dict[str, str]
) -> None:
    response = client.post("/hooks/git", content=BODY, headers=headers)
    assert response.status_code == 401
    assert SECRET not in response.text
    assert queue.wait(0) is None


def test_a_tampered_body_is_refused(client: httpx.Client, queue: SyncQueue) -> None:
    response = client.post("/hooks/git", content=BODY + b"x", headers=signed(BODY))
    assert response.status_code == 401
    assert queue.wait(0) is None


def test_without_a_secret_the_webhook_endpoint_does_not_exist(
    make_server: ServerFactory, queue: SyncQueue
) -> None:
    server = make_server(webhook_secret=None)
    with httpx.Client(base_url=server.url, timeout=5) as c:
        assert c.post("/hooks/git", content=BODY, headers=signed(BODY)).status_code == 404
        assert c.get("/hooks/git").status_code == 404
    assert queue.wait(0) is None


def test_a_body_over_the_limit_is_413_before_it_is_sent(
    make_server: ServerFactory, queue: SyncQueue
) -> None:
    server = make_server(max_body=1000)
    # Only the headers are sent, announcing 10 MiB: if the server tried to read the body
    # it would wait (for its 10 s timeout) instead of answering at once.
    started = time.monotonic()
    answer = raw_request(
        server,
        b"POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n"
        + b"X-Gitlab-Token: "
        + SECRET.encode()
        + b"\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.0 413 ")
    assert time.monotonic() - started < 5.0  # not after the 10 s read timeout
    assert queue.wait(0) is None


def test_a_client_sending_an_oversized_body_still_reads_the_413(
    make_server: ServerFactory, queue: SyncQueue
) -> None:
    server = make_server(max_body=1000)
    with httpx.Client(base_url=server.url, timeout=5) as c:
        body = b"x" * 200_000
        response = c.post("/hooks/git", content=body, headers={"X-Gitlab-Token": SECRET})
    assert response.status_code == 413
    assert queue.wait(0) is None


def test_a_body_at_the_limit_is_accepted(make_server: ServerFactory, queue: SyncQueue) -> None:
    server = make_server(max_body=len(BODY))
    with httpx.Client(base_url=server.url, timeout=5) as c:
        assert c.post("/hooks/git", content=BODY, headers=signed(BODY)).status_code == 202
    assert queue.wait(0) == "webhook"


def test_a_chunked_body_is_411(client: httpx.Client, queue: SyncQueue) -> None:
    def chunks() -> Iterator[bytes]:
        yield BODY

    response = client.post("/hooks/git", content=chunks(), headers=signed(BODY))
    assert response.status_code == 411
    assert queue.wait(0) is None


def test_a_missing_or_bad_content_length_is_refused(server: HttpServer, queue: SyncQueue) -> None:
    token = b"X-Gitlab-Token: " + SECRET.encode() + b"\r\n"
    missing = raw_request(server, b"POST /hooks/git HTTP/1.1\r\nHost: x\r\n" + token + b"\r\n")
    assert missing.startswith(b"HTTP/1.0 411 ")
    bad = raw_request(
        server, b"POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n" + token + b"\r\n"
    )
    assert bad.startswith(b"HTTP/1.0 400 ")
    assert queue.wait(0) is None


def test_a_body_shorter_than_announced_is_400(server: HttpServer, queue: SyncQueue) -> None:
    with socket.create_connection(server.address, timeout=3) as sock:
        sock.sendall(
            b"POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-Gitlab-Token: "
            + SECRET.encode()
            + b"\r\n\r\nshort"
        )
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert queue.wait(0) is None


# --- routing ------------------------------------------------------------------------------


def test_unknown_paths_are_404_and_wrong_methods_405(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert client.get("/healthz/extra").status_code == 404
    wrong = client.post("/healthz", content=b"")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, HEAD"
    get_hook = client.get("/hooks/git")
    assert get_hook.status_code == 405
    assert get_hook.headers["allow"] == "POST"
    assert client.delete("/metrics").status_code == 405
    assert client.put("/readyz", content=b"").status_code == 405


def test_a_query_string_does_not_change_the_route(client: httpx.Client) -> None:
    assert client.get("/healthz?verbose=1").status_code == 200


# --- hardening and lifecycle --------------------------------------------------------------


def test_a_silent_client_is_dropped_after_the_timeout(make_server: ServerFactory) -> None:
    server = make_server(timeout=0.3)
    with socket.create_connection(server.address, timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /hooks/git HTTP/1.1\r\n")  # …and then nothing
        assert sock.recv(65536) == b""  # the server hung up
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 4.0  # at the 0.3 s timeout, not at the client's 5 s


def test_requests_are_logged_at_debug_without_headers_or_query(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="kaylee_sync.daemon.http"):
        client.post("/hooks/git?token=query-secret", content=BODY, headers=signed(BODY))
        client.post("/hooks/git", content=BODY, headers={"X-Gitlab-Token": "guessed-token"})
    lines = [r.getMessage() for r in caplog.records]
    assert any("POST /hooks/git -> 202" in line for line in lines)
    assert any("POST /hooks/git -> 401" in line for line in lines)
    text = "\n".join(lines)
    for leaked in (SECRET, "query-secret", "guessed-token", signed(BODY)["X-Hub-Signature-256"]):
        assert leaked not in text
    request_lines = [r for r in caplog.records if "->" in r.getMessage()]
    assert all(r.levelno == logging.DEBUG for r in request_lines)


def test_the_server_header_does_not_advertise_python(client: httpx.Client) -> None:
    assert client.get("/healthz").headers["server"] == "kaylee-sync"


def test_port_zero_binds_a_real_port_and_stop_releases_it(make_server: ServerFactory) -> None:
    server = make_server()
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0
    server.stop()
    server.stop()  # twice is fine
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=2) as c:
        c.get(f"http://127.0.0.1:{port}/healthz")


def test_stop_joins_the_server_and_request_threads(make_server: ServerFactory) -> None:
    before = set(threading.enumerate())
    server = make_server()
    with httpx.Client(base_url=server.url, timeout=5) as c:
        for _ in range(5):
            assert c.get("/healthz").status_code == 200
    server.stop()
    assert set(threading.enumerate()) - before == set()


def test_listening_on_every_interface_accepts_loopback(make_server: ServerFactory) -> None:
    server = make_server(listen=":0")
    with httpx.Client(timeout=5) as c:
        response = c.get(f"http://127.0.0.1:{server.address[1]}/healthz")
    assert response.status_code == 200


def test_listening_on_ipv6_loopback(make_server: ServerFactory) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = make_server(listen="[::1]:0")
    except UsageError:
        pytest.skip("IPv6 loopback is not configured here")
    assert server.address[0] == "::1"
    assert server.url.startswith("http://[::1]:")
    with httpx.Client(base_url=server.url, timeout=5) as c:
        assert c.get("/healthz").status_code == 200


def test_an_address_in_use_is_a_one_line_usage_error(
    server: HttpServer, queue: SyncQueue, health: Probe
) -> None:
    with pytest.raises(UsageError, match=r"cannot listen on 127\.0\.0\.1:\d+: "):
        HttpServer(
            f"127.0.0.1:{server.address[1]}",
            queue=queue,
            metrics=Metrics(),
            health=health,
            ready=health,
            webhook_secret=None,
        )


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9420", ("127.0.0.1", 9420)),
        ("[::1]:9420", ("::1", 9420)),
        (":9420", ("", 9420)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses_are_parsed(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9420", "::1:9420", "127.0.0.1:", "127.0.0.1:http", ":70000"])
def test_bad_listen_addresses_are_usage_errors(listen: str) -> None:
    with pytest.raises(UsageError, match="listen address"):
        parse_listen(listen)


# --- an open port: deadlines, the connection bound, clients that go away -------------------


def hold(server: HttpServer, count: int) -> list[socket.socket]:
    """``count`` clients that send half a request head and then nothing: slowloris."""
    clients = []
    for _ in range(count):
        sock = socket.create_connection(server.address, timeout=5)
        sock.sendall(b"POST /hooks/git HTTP/1.1\r\nHost: x\r\n")
        clients.append(sock)
    return clients


def hung_up(sock: socket.socket) -> bool:
    """True once the server closed (or reset) this client's connection."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def test_a_client_trickling_bytes_is_dropped_at_the_deadline_all_the_same(
    make_server: ServerFactory,
) -> None:
    """A byte every 50 ms would keep a per-read timeout of 0.5 s happy for ever."""
    server = make_server(timeout=0.5)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"POST /hooks/git HTTP/1.1\r\n")
        sent = 0
        for _ in range(2000):  # 100 s of trickle at most; the deadline ends it long before
            if hung_up(sock):
                break
            try:
                sock.sendall(b"X")
            except OSError:
                break
            sent += 1
            time.sleep(0.05)
        else:
            pytest.fail("the server kept a trickling client for 2000 bytes")
    assert sent < 2000


def test_at_the_bound_the_oldest_waiting_client_makes_room(
    make_server: ServerFactory, queue: SyncQueue
) -> None:
    server = make_server(max_connections=8, timeout=60)
    clients = hold(server, 8)
    try:
        wait_for(lambda: server.open_connections == 8, what="8 open connections")
        with httpx.Client(base_url=server.url, timeout=5) as c:
            response = c.post("/hooks/git", content=BODY, headers=signed(BODY))
            assert response.status_code == 202
            assert queue.wait(0) == "webhook"
            wait_for(lambda: hung_up(clients[0]), what="the oldest client dropped")
            assert not any(hung_up(sock) for sock in clients[1:])
            # the room is taken again by one more slow client, and so on
            clients += hold(server, 1)
            assert c.get("/healthz").status_code == 200
            wait_for(lambda: hung_up(clients[1]), what="the next oldest client dropped")
            assert not any(hung_up(sock) for sock in clients[2:])
        assert server.open_connections <= 8
    finally:
        for sock in clients:
            sock.close()


def test_when_every_connection_is_being_answered_a_newcomer_gets_503_at_once(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 413 is followed by a lingering close: the one state in which a connection is
    # neither waiting for its request (evictable) nor gone. Make it last.
    monkeypatch.setattr("kaylee_sync.daemon.listener.LINGER_SECONDS", 60.0)
    server = make_server(max_connections=1, max_body=10, timeout=60)
    with socket.create_connection(server.address, timeout=5) as lingering:
        lingering.sendall(
            b"POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nxx"
        )
        assert lingering.recv(65536).startswith(b"HTTP/1.0 413 ")
        try:
            answer = raw_request(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        except ConnectionResetError:  # closed at once, before the client's request was read
            answer = b"reset"
        assert answer == b"reset" or answer.startswith(b"HTTP/1.0 503 "), answer


def test_a_client_that_resets_or_leaves_logs_no_traceback(
    server: HttpServer, queue: SyncQueue, caplog: pytest.LogCaptureFixture
) -> None:
    token = b"X-Gitlab-Token: " + SECRET.encode() + b"\r\n"
    requests = [
        b"",  # connects and leaves
        b"GET /heal",  # half a request line
        b"POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n" + token + b"\r\nab",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",  # resets before reading the answer
    ]
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            for request in requests:
                sock = socket.create_connection(server.address, timeout=5)
                sock.sendall(request)
                # SO_LINGER 0: close() sends a reset instead of a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        with httpx.Client(base_url=server.url, timeout=5) as c:  # still serving
            assert c.get("/healthz").status_code == 200
        wait_for(lambda: server.open_connections == 0, what="every connection closed")
    assert queue.wait(0) is None
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


def test_a_request_head_over_the_limit_is_refused(server: HttpServer) -> None:
    answer = raw_request(
        server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.0 431 ")


def test_many_slow_clients_do_not_keep_probes_or_the_webhook_out(
    make_server: ServerFactory, queue: SyncQueue
) -> None:
    server = make_server(max_connections=100, timeout=60)
    clients = hold(server, 300)  # three times the bound
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for _ in range(5):
                assert c.get("/healthz").status_code == 200
                assert c.post("/hooks/git", content=BODY, headers=signed(BODY)).status_code == 202
        assert queue.wait(0) == "webhook"
        assert server.open_connections <= 100
    finally:
        for sock in clients:
            sock.close()
