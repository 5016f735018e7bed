"""Cleaning fleet's registry of what a crash or a stale writer can leave behind.

Writes to fleet's registry cannot be made atomic across keys (etcd v2), so a leader
killed between two writes, or a deposed leader whose last request slipped through
after its deadline (see docs/architecture.md, "Fencing fleet writes"), can leave a job
directory without ``object`` or a unit body nothing refers to. fleet ignores both,
but a half-made job blocks re-creating that unit. The driver finds such debris under
our unit prefix only; this module decides when to remove it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kaylee_sync.errors import FleetConflict
from kaylee_sync.fleet.protocol import FleetClient

log = logging.getLogger(__name__)


class Repair:
    """Scans every ``interval`` seconds; removes a piece two scans in a row found unchanged.

    Two scans: a piece found once may be a write in flight (a stale leader's last
    request); one still there, unchanged, a scan later is left over for good. While
    anything is found, the next scan comes after ``soon`` seconds instead.
    """

    def __init__(self, fleet: FleetClient, unit_prefix: str, interval: float, soon: float) -> None:
        self.fleet, self.unit_prefix = fleet, unit_prefix
        self.interval, self.soon = interval, soon
        self._due = 0.0
        self._seen: set[tuple[str, int]] = set()

    def reset(self) -> None:
        """Scan at the next chance, trusting nothing seen before (a new term)."""
        self._due = 0.0
        self._seen.clear()

    def run(self, now: float, halted: Callable[[], bool]) -> None:
        if now < self._due or halted():
            return
        self._due = now + self.interval
        found = self.fleet.debris(self.unit_prefix)
        seen, self._seen = self._seen, {(d.key, d.index) for d in found}
        for item in found:
            if (item.key, item.index) not in seen:
                continue
            if halted():
                return
            try:
                self.fleet.clean(item)
            except FleetConflict as exc:
                log.info("registry debris %s changed; left for the next scan: %s", item.key, exc)
                continue
            log.warning("removed registry debris %s (%s)", item.key, item.reason)
        if found:
            self._due = min(self._due, now + self.soon)
