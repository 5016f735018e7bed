"""The prober against real endpoints: the simulator's health servers, its presence keys
in etcd v2, keys in etcd v3, and HTTP servers that misbehave."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.health.checks import Target
from kaylee_sync.probe import HttpProber, ProbeFailed, Prober
from kaylee_sync.probe.presence import EtcdPresence
from kaylee_sync.render import kaylee_id
from kaylee_sync.store import Store
from kaylee_sync.unitfile import UnitOption
from tests.polling import wait_for

OPTIONS = (UnitOption("Service", "ExecStart", "/usr/bin/rkt run docker://web:1"),)


@pytest.fixture
def cluster(etcd_endpoint: str, prefix: str) -> Iterator[SimulatedCluster]:
    with SimulatedCluster(
        etcd_endpoint,
        prefix,
        machines=[{}, {}],
        engine_interval=0.1,
        agent_interval=0.1,
        behaviours={"*bad*": "unhealthy", "*quiet*": "no_presence", "*tired*": "healthy_for=1"},
        serve_health=True,
        presence={"k2:*": prefix.rstrip("/") + "-services/${KAYLEE_ID}"},
    ) as c:
        yield c


def launch(cluster: SimulatedCluster, etcd_endpoint: str, prefix: str, names: list[str]) -> None:
    fleet = RegistryDriver(Etcd2Client(etcd_endpoint), prefix)
    for name in names:
        fleet.create_unit(name, OPTIONS, "launched")
    cluster.wait_until(lambda: all(n in cluster.running_units() for n in names), timeout=20)
    fleet.close()


def url_of(cluster: SimulatedCluster, name: str) -> str:
    machine = cluster.running_units()[name][0]
    ip = cluster.agents[machine].public_ip
    assert cluster.health is not None
    return f"http://{ip}:{cluster.health.port}/health/{kaylee_id(name)}"


def test_http_checks_tell_healthy_unhealthy_and_tiring_instances_apart(
    cluster: SimulatedCluster, etcd_endpoint: str, prefix: str
) -> None:
    names = ["k2:ok:aaaaaa:s:1.service", "k2:bad:aaaaaa:s:1.service", "k2:tired:aaaaaa:s:1.service"]
    launch(cluster, etcd_endpoint, prefix, names)
    with Prober() as prober:
        for name in names:
            target = Target(name, name.split(":")[1], url=url_of(cluster, name), interval=0.2)
            prober.set_targets(target.unit, [target])
        wait_for(lambda: prober.health(names[0]) and prober.health(names[0]).healthy, 10, "ok")  # type: ignore[union-attr]
        bad = wait_for(
            lambda: (h := prober.health(names[1])) and h.reason.endswith("HTTP 503") and h, 10
        )
        assert not bad.healthy
        # healthy for a second, then failing three checks in a row: no longer healthy
        wait_for(lambda: (h := prober.health(names[2])) and h.healthy, 10, "tired healthy")
        wait_for(lambda: (h := prober.health(names[2])) is not None and not h.healthy, 10, "tired")
        assert prober.health(names[0]).healthy  # type: ignore[union-attr]
        prober.set_targets("ok", [])
        assert prober.health(names[0]) is None or wait_for(
            lambda: prober.health(names[0]) is None, 5
        )


def test_presence_keys_in_etcd_v2_and_v3(
    cluster: SimulatedCluster, etcd_endpoint: str, prefix: str, store: Store
) -> None:
    names = ["k2:ok:bbbbbb:s:1.service", "k2:quiet:bbbbbb:s:1.service"]
    launch(cluster, etcd_endpoint, prefix, names)
    v2 = Etcd2Client(etcd_endpoint)
    v3_key = store.prefix + "-v3/services/" + kaylee_id(names[0])
    store._conn.call("test write", lambda c: c.put(v3_key, "up"))
    reader = EtcdPresence(store, v2)
    home = prefix.rstrip("/") + "-services/"
    with Prober(reader) as prober:
        targets = [Target(n, "web", etcd_key=home + kaylee_id(n), interval=0.2) for n in names]
        prober.set_targets("web", targets)
        other = Target("v3", "v3", etcd_key=v3_key, keyspace="v3", interval=0.2)
        missing = Target("v3-missing", "v3", etcd_key=v3_key + "-gone", keyspace="v3", interval=0.2)
        prober.set_targets("v3", [other, missing])
        wait_for(lambda: (h := prober.health(names[0])) and h.healthy, 10, "v2 key found")
        quiet = wait_for(
            lambda: (h := prober.health(names[1])) and "is not there" in h.reason and h, 10
        )
        assert not quiet.healthy
        wait_for(lambda: (h := prober.health("v3")) and h.healthy, 10, "v3 key found")
        assert not prober.health("v3-missing").healthy  # type: ignore[union-attr]
    v2.close()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_http_client_reports_refused_slow_and_odd_servers() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does) but never answers
    port = silent.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()

    async def probes() -> list[str]:
        client = HttpProber()
        out = []
        for url in (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{refused_port}/", "ftp://x/"):
            try:
                out.append(str(await client.status(url, 0.3)))
            except ProbeFailed as exc:
                out.append(str(exc))
        client.close()
        return out

    slow, refused, bad = run(probes())  # type: ignore[misc]
    silent.close()
    assert slow == "no answer within 0.3s"
    assert refused == "connection refused"
    assert bad.startswith("bad URL")


def serve_raw(responses: list[bytes]) -> tuple[int, list[int]]:
    """A server answering each request with the next of ``responses``; counts connections."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[int] = []

    def serve() -> None:
        while responses:
            conn, _ = listener.accept()
            accepted.append(1)
            with conn:
                while responses:
                    if not conn.recv(65536):
                        break
                    reply = responses.pop(0)
                    conn.sendall(reply)
                    if b"close" in reply.lower() or b"chunked" in reply:
                        break
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], accepted


def test_http_client_keeps_connections_alive_and_closes_when_it_must() -> None:
    port, accepted = serve_raw(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nbusy!\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ]
    )

    async def probes() -> list[int]:
        client = HttpProber()
        out = [await client.status(f"http://127.0.0.1:{port}/h", 5) for _ in range(4)]
        client.close()
        return out

    assert run(probes()) == [200, 204, 503, 200]
    assert len(accepted) == 2  # kept alive over 200 and 204, a new one after the chunked 503
