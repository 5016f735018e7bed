"""A whole simulated fleet: one engine and N agents in threads, over a real etcd.

This is what the tests and ``--dev`` start instead of fleetd (which needs systemd).
Everything goes through fleet's real registry keys in etcd's v2 API, so Kaylee's
drivers cannot tell the difference. Machines can join, leave cleanly or crash at run
time; one watcher thread long-polls the prefix and wakes the engine and the agents on
job and machine changes, as fleetd's event stream does.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from kaylee_sync.errors import KayleeError
from kaylee_sync.fleet.etcd2 import Etcd2Client, Etcd2Error, EventIndexCleared
from kaylee_sync.fleet.model import DEFAULT_KEY_PREFIX
from kaylee_sync.fleetsim.agent import Agent, AgentSettings
from kaylee_sync.fleetsim.apiserver import FleetApiServer
from kaylee_sync.fleetsim.engine import Engine
from kaylee_sync.fleetsim.registry import SimRegistry
from kaylee_sync.fleetsim.systemd import Behaviour
from kaylee_sync.fleetsim.worker import Worker
from kaylee_sync.fleetsim.workload import HealthEndpoints

log = logging.getLogger(__name__)

DEFAULT_PREFIX = DEFAULT_KEY_PREFIX


class _Watcher(Worker):
    """Long-polls the fleet prefix; job and machine changes wake every component."""

    POLL = 0.5  # seconds per long poll: also the most stop() waits for this thread

    def __init__(self, client: Etcd2Client, prefix: str, wake: Callable[[], None]) -> None:
        super().__init__("fleetsim-watcher", 0.0)
        self.client, self.prefix, self.wake_all = client, prefix.rstrip("/"), wake
        self._index = 0

    def tick(self) -> float | None:
        if not self._index:
            self._index = self.client.index() + 1
        try:
            event = self.client.watch(self.prefix, self._index, recursive=True, timeout=self.POLL)
        except EventIndexCleared:
            self._index = 0  # fell behind etcd's event history: everyone re-reads anyway
            self.wake_all()
            return 0.0
        if event is None:
            return 0.0
        self._index = event.node.modified_index + 1
        rel = event.node.key[len(self.prefix) :]
        # States and heartbeats change constantly and nobody reconciles on them.
        if rel.startswith("/machines/") or (
            rel.startswith("/job/") and not rel.endswith("/job-state")
        ):
            self.wake_all()
        return 0.0


class SimulatedCluster:
    """An engine plus one agent per machine. Use as a context manager or start()/stop().

    ``machines`` entries may hold ``metadata`` (dict), ``id`` (32 hex digits) and
    ``public_ip``. ``behaviours`` maps a glob (unit name or image) to a
    :class:`Behaviour` or its text form (``"never_start"``, ``"crash_after=2"``,
    ``"unhealthy"``, ``"no_presence"``, ``"healthy_for=5"``). ``serve_health`` serves each
    instance's health over HTTP (``health.port``, fleetsim/workload.py); ``presence`` maps
    a unit-name glob to a presence key template that healthy instances write (etcd v2).
    """

    def __init__(
        self,
        etcd_endpoint: str,
        prefix: str = DEFAULT_PREFIX,
        machines: Iterable[Mapping[str, Any]] = ({},),
        engine_interval: float = 2.0,
        agent_interval: float = 5.0,
        behaviours: Mapping[str, Behaviour | str] | None = None,
        default_start_delay: float = 0.0,
        state_ttl: int = 30,
        machine_ttl: int = 30,
        unit_dir: Path | None = None,
        serve_health: bool = False,
        presence: Mapping[str, str] | None = None,
        health_port: int = 0,
    ) -> None:
        self.endpoint = etcd_endpoint
        self.prefix = "/" + prefix.strip("/") + "/"
        table = {
            k: Behaviour.parse(v) if isinstance(v, str) else v
            for k, v in (behaviours or {}).items()
        }
        self.settings = AgentSettings(
            interval=agent_interval,
            state_ttl=state_ttl,
            machine_ttl=machine_ttl,
            default_start_delay=default_start_delay,
            behaviours=table,
            unit_dir=unit_dir,
            presence=dict(presence or {}),
        )
        # With serve_health, machines get loopback addresses (127.0.0.2, .3, …) and each
        # serves its instances' health there, so ${MACHINE_IP} in a check URL works.
        self.health = HealthEndpoints(health_port) if serve_health else None
        self.engine_interval = engine_interval
        self.agents: dict[str, Agent] = {}
        self.engine: Engine | None = None
        self._watcher: _Watcher | None = None
        self._clients: list[Etcd2Client] = []
        self._servers: list[FleetApiServer] = []
        self._lock = threading.Lock()
        self._started = False
        self._ip_counter = 0
        # One connection pool serves every component (httpx clients are thread-safe and
        # costly to create); the watcher's long polls get a client of their own.
        self._shared = self._client()
        self.registry = SimRegistry(self._shared, self.prefix)  # for the helpers below
        for spec in machines:
            self._create_agent(spec)

    # -- lifecycle -------------------------------------------------------------------

    def _client(self) -> Etcd2Client:
        client = Etcd2Client(self.endpoint)
        self._clients.append(client)
        return client

    def _create_agent(self, spec: Mapping[str, Any]) -> Agent:
        machine_id = str(spec.get("id") or uuid.uuid4().hex)
        if len(machine_id) != 32 or any(c not in "0123456789abcdef" for c in machine_id):
            raise KayleeError(f"machine id {machine_id!r} is not 32 lowercase hex digits")
        self._ip_counter += 1
        default_ip = (
            f"127.0.0.{self._ip_counter + 1}" if self.health else f"10.0.0.{self._ip_counter}"
        )
        ip = str(spec.get("public_ip", default_ip))
        agent = Agent(
            self._shared, self.prefix, machine_id, spec.get("metadata") or {}, self.settings, ip
        )
        if self.health is not None:
            self.health.serve(ip, agent.health_of)
        with self._lock:
            self.agents[machine_id] = agent
        return agent

    def start(self) -> SimulatedCluster:
        if self._started:
            return self
        self._started = True
        # The engine runs "on" the first machine, as some fleetd's engine would.
        engine_id = next(iter(self.agents), None) or uuid.uuid4().hex
        self.engine = Engine(self._shared, self.prefix, engine_id, self.engine_interval)
        for agent in list(self.agents.values()):
            agent.start()
        self.engine.start()
        self._watcher = _Watcher(self._client(), self.prefix, self.wake)
        self._watcher.start()
        return self

    def stop(self) -> None:
        """Stop every thread (agents leave cleanly) and close the etcd clients."""
        workers: list[Worker] = [*self.agents.values()]
        workers += [w for w in (self.engine, self._watcher) if w is not None]
        for w in workers:
            w.signal_stop()  # all at once, so the waits overlap
        for w in workers:
            w.join()
        for server in self._servers:
            server.stop()
        self._servers.clear()
        if self.health is not None:
            self.health.stop()
        for client in self._clients:
            client.close()
        self._started = False

    def __enter__(self) -> SimulatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_api(self, address: str = "tcp://127.0.0.1:0") -> FleetApiServer:
        """Serve fleet's HTTP API v1 for this cluster until ``stop()``; see ``.url``."""
        server = FleetApiServer(self.endpoint, self.prefix, address).start()
        self._servers.append(server)
        return server

    def wake(self) -> None:
        for w in [self.engine, *self.agents.values()]:
            if w is not None:
                w.wake()

    # -- machines joining and leaving --------------------------------------------------

    @property
    def machine_ids(self) -> list[str]:
        return sorted(self.agents)

    def add_machine(self, metadata: Mapping[str, str] | None = None, **spec: Any) -> str:
        agent = self._create_agent({**spec, "metadata": metadata or {}})
        if self._started:
            agent.start()
            self.wake()
        return agent.machine_id

    def remove_machine(self, machine_id: str) -> None:
        """The machine's fleetd stops cleanly: units stopped, states and object deleted."""
        self._drop(machine_id, clean=True)

    def crash_machine(self, machine_id: str) -> None:
        """The machine vanishes: nothing is cleaned up, its keys expire with their TTLs."""
        self._drop(machine_id, clean=False)

    def _drop(self, machine_id: str, clean: bool) -> None:
        with self._lock:
            agent = self.agents.pop(machine_id)
        agent.clean_stop = clean
        agent.stop()
        if self.health is not None:
            self.health.withdraw(agent.public_ip)
        self.wake()

    # -- helpers for tests -----------------------------------------------------------

    def wait_until(
        self, predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy (returned); else raise."""
        deadline = time.monotonic() + timeout
        stop = threading.Event()
        while True:
            try:
                result = predicate()
            except Etcd2Error:
                result = None
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            stop.wait(interval)

    def unit_states(self) -> dict[tuple[str, str], tuple[str, str, str]]:
        """(unit, machine) -> (load, active, sub), as published in ``states/``."""
        return {(s.name, s.machine_id): (s.load, s.active, s.sub) for s in self.registry.states()}

    def running_units(self) -> dict[str, list[str]]:
        """unit name -> sorted machine ids where its published subState is ``running``."""
        out: dict[str, list[str]] = {}
        for s in self.registry.states():
            if s.sub == "running":
                out.setdefault(s.name, []).append(s.machine_id)
        return out

    def targets(self) -> dict[str, str]:
        """unit name -> machine id from ``job/<name>/target`` (scheduled units only)."""
        return {r.job.name: r.job.target for r in self.registry.jobs() if r.job.target}
