"""``kaylee server``: the daemon without a Git source.

Every node may run it; the election lets exactly one schedule. It is the same process
as ``kaylee-sync`` (:class:`~kaylee_sync.daemon.service.Service`: election, scheduler,
HTTP listener with /healthz /readyz /metrics, systemd notify and watchdog, signals and
shutdown order), minus the sync worker and its triggers. The scheduler checks
``Election.is_leader`` — which turns false *before* the lease could expire on the
server — ahead of every write, so a deposed leader stops acting in time. SIGTERM or
SIGINT resigns (revoking the lease, so a standby takes over at once); a second SIGINT
exits immediately.

Its listener defaults to 127.0.0.1:9421, one above ``kaylee-sync``'s 9420, so that the
two never clash on a node.
"""

from __future__ import annotations

from kaylee_sync.daemon.service import SERVER_LISTEN, Service, ServiceSettings
from kaylee_sync.election import ElectionSettings
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.store import Store

__all__ = ["SERVER_LISTEN", "SchedulerServer", "ServiceSettings"]


class SchedulerServer(Service):
    """The scheduling server: :class:`Service` with a fleet client and nothing else."""

    def __init__(
        self,
        store: Store,
        fleet: FleetClient,
        scheduler: SchedulerSettings,
        election: ElectionSettings,
        identity: str | None = None,
        *,
        listen: str | None = None,
        stuck_after: float = ServiceSettings.stuck_after,
    ) -> None:
        settings = ServiceSettings(
            listen=listen, scheduler=scheduler, election=election, stuck_after=stuck_after
        )
        super().__init__(store, fleet, settings, identity)
