"""fleet: the client protocol Kaylee's scheduler uses and its two drivers.

``registry`` reads and writes fleet's own keys in etcd's v2 API (``etcd2`` is the thin
v2 client underneath); ``api`` talks to fleetd's HTTP API v1. Both implement
``protocol.FleetClient`` over the plain data of ``model`` and share ``throttle``'s write
rate limit and retry policy.
"""

from kaylee_sync.fleet.api import ApiDriver, ApiError
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.model import JOB_STATES, FleetUnit, Machine, UnitState
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.fleet.registry import DEFAULT_PREFIX, RegistryDriver
from kaylee_sync.fleet.throttle import Throttle, ThrottleSettings

__all__ = [
    "DEFAULT_PREFIX",
    "JOB_STATES",
    "ApiDriver",
    "ApiError",
    "Etcd2Client",
    "FleetClient",
    "FleetUnit",
    "Machine",
    "RegistryDriver",
    "Throttle",
    "ThrottleSettings",
    "UnitState",
]
