"""Health checking: the leader's prober (an asyncio loop in a thread), its HTTP client and
the presence-key reader. The meaning of a result is ``kaylee_sync.health.checks``'s."""

from kaylee_sync.probe.http import HttpProber, ProbeFailed
from kaylee_sync.probe.presence import EtcdPresence, cluster_prober
from kaylee_sync.probe.prober import PresenceReader, Prober

__all__ = [
    "EtcdPresence",
    "HttpProber",
    "PresenceReader",
    "ProbeFailed",
    "Prober",
    "cluster_prober",
]
