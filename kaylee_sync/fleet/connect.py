"""Which fleet driver, and how it is reached: one table, one function.

Every program that talks to fleet (the daemon, ``kaylee server``, ``kaylee ls/run``,
``kaylee-sync sync --wait``) builds a :class:`FleetSettings` from its options and calls
:func:`connect`, so a driver is added in one place (:data:`DRIVERS`) and every command
gets it with the same TLS and auth handling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kaylee_sync.fleet.api import ApiDriver
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.model import DEFAULT_KEY_PREFIX
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.settings import EtcdSettings, with_scheme

#: fleetd's API socket where CoreOS puts it
DEFAULT_API_ENDPOINT = "unix:///var/run/fleet.sock"


@dataclass(frozen=True)
class FleetSettings:
    driver: str = "etcd"
    """``etcd``: fleet's registry in etcd (v2 API), as the original; ``api``: fleetd's API."""
    endpoints: tuple[str, ...] = ()
    """etcd endpoints of fleet's registry (``etcd`` driver); empty: the etcd v3 endpoints.
    A scheme-less ``host:port`` (fleetctl's way) gets https when etcd has TLS files."""
    api_endpoint: str = DEFAULT_API_ENDPOINT
    """fleetd's API (``api`` driver): ``unix:///path`` or ``http(s)://host:port``."""
    key_prefix: str = DEFAULT_KEY_PREFIX
    """Where fleet keeps its registry in etcd (fleetctl's ``--etcd-key-prefix``)."""


def _registry(fleet: FleetSettings, etcd: EtcdSettings) -> FleetClient:
    tls = etcd.uses_tls_files
    endpoints = [with_scheme(e, tls) for e in fleet.endpoints] or list(etcd.endpoints)
    client = Etcd2Client(
        ",".join(endpoints),
        ca_cert=etcd.ca_file,
        cert=etcd.cert_file,
        key=etcd.key_file,
        username=etcd.username,
        password=etcd.password,
        timeout=etcd.timeout,
    )
    return RegistryDriver(client, fleet.key_prefix)


def _api(fleet: FleetSettings, etcd: EtcdSettings) -> FleetClient:
    return ApiDriver(fleet.api_endpoint)


#: driver name → how to connect it
DRIVERS: dict[str, Callable[[FleetSettings, EtcdSettings], FleetClient]] = {
    "etcd": _registry,
    "api": _api,
}


def connect(fleet: FleetSettings, etcd: EtcdSettings) -> FleetClient:
    """The FleetClient ``fleet`` describes (TLS and auth of the registry as for etcd v3)."""
    return DRIVERS[fleet.driver.lower()](fleet, etcd)
