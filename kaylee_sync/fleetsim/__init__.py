"""A fleet simulator: fleet's engine, agents and HTTP API v1 over a real etcd.

fleetd needs systemd, so the tests and ``--dev`` run this instead. It replaces only
fleetd: every read and write goes through fleet's real registry keys in etcd's v2 API.

- ``requirements`` / ``scheduling``: pure placement rules ([X-Fleet], Go globs).
- ``systemd``: simulated unit states and injected failures (``Behaviour``).
- ``registry``: the simulated fleetd's reads and writes of fleet's keys.
- ``engine`` / ``agent`` / ``worker``: the threads; ``cluster`` runs them together.
- ``apiresources`` / ``apiserver``: fleet's HTTP API v1 on a unix socket or TCP port.
"""

from kaylee_sync.fleetsim.apiserver import FleetApiServer
from kaylee_sync.fleetsim.cluster import DEFAULT_PREFIX, SimulatedCluster
from kaylee_sync.fleetsim.systemd import Behaviour

__all__ = ["DEFAULT_PREFIX", "Behaviour", "FleetApiServer", "SimulatedCluster"]
