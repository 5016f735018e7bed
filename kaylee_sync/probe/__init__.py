"""Health checking: the leader's prober (an asyncio loop in a thread), its HTTP client and
the presence-key reader. The meaning of a result is ``kaylee_sync.health.checks``'s."""

from kaylee_sync.probe.http import HttpProber, ProbeFailed
from kaylee_sync.probe.prober import PresenceReader, Prober

__all__ = ["HttpProber", "PresenceReader", "ProbeFailed", "Prober"]
