"""What the daemon tells Prometheus: the metrics, and the few calls that update them.

The metrics live on their own :class:`~prometheus_client.CollectorRegistry` rather than
the library's global one, so that two daemons in one process (the tests) do not collide
and /metrics shows exactly what this module declares (plus the usual process_* and
python_* series, registered here explicitly).

Label values are closed sets, declared below and created at zero up front: a series
that appears only after the first error cannot be graphed or alerted on with
``rate()``, and an unbounded label (an error message) would let one bad repository blow
up the time-series database. One exception, asked for by operators:
``kaylee_sync_unit_rollout_phase{unit}`` has one series per unit (its current phase),
as bounded as the repository, and dropped when the unit goes.

Nothing here pages at install: ``commit_lag_seconds`` is only measured for commits first
seen while running (an old commit synced at start says nothing about how fast a push
lands), and the ``*_created`` series prometheus_client adds to counters and histograms
by default are turned off (they are process start times, and look like resets to
alert rules that do not expect them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from kaylee_sync import __version__
from kaylee_sync.supervise import Loops

PREFIX = "kaylee_sync"
#: fleet calls that write; every call may fail (FLEET_OPS)
FLEET_WRITES = ("create_unit", "set_target_state", "destroy_unit", "clean")
FLEET_OPS = ("read", *FLEET_WRITES)

# prometheus_client's switch is process-wide; this process's only registry is ours.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library

#: counts of the last plan, by what it does to a unit
UNIT_STATES = ("create", "update", "delete", "unchanged", "suspended", "invalid", "prune-refused")
#: where an error happened
ERROR_STAGES = ("git", "etcd", "fleet", "signature", "other")
#: how a sync ended: applied cleanly / applied, but some files were invalid or the prune
#: guard refused deletions / nothing applied
SYNC_RESULTS = ("ok", "partial", "error")
#: the scheduler's rollout phases (scheduler.decide.Decision.phase)
ROLLOUT_PHASES = (
    "steady",
    "deploying",
    "rolling",
    "scaling",
    "replacing",
    "failed",
    "deleting",
    "waiting",
)
#: a sync is usually well under a second; a large repository over a slow link may take
#: a minute
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The daemon's metrics. Every method is thread-safe (prometheus_client's are)."""

    def __init__(self, *, process_metrics: bool = True, loops: Loops | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The supervised loops (kaylee_sync.supervise) are read at scrape time.
        r.register(_LoopCollector(loops or Loops()))
        Info(f"{PREFIX}_build", "The running kaylee-sync's version.", registry=r).info(
            {"version": __version__}
        )
        self.commit = Info(
            f"{PREFIX}_last_synced_commit",
            "The commit the last successful sync applied.",
            [],
            registry=r,
        )
        self.last_success = Gauge(
            f"{PREFIX}_last_success_timestamp_seconds",
            "Unix time of the last successful sync.",
            registry=r,
        )
        self.lag = Gauge(
            f"{PREFIX}_commit_lag_seconds",
            "Seconds from the synced commit's commit time until it was applied to etcd, for "
            "commits first seen while running (0 until one is).",
            registry=r,
        )
        self.duration = Histogram(
            f"{PREFIX}_sync_duration_seconds",
            "How long one sync took (fetch, plan, apply).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.units = Gauge(
            f"{PREFIX}_units",
            "Units in the last plan, by what it does to them.",
            ["state"],
            registry=r,
        )
        self.invalid_files = Gauge(
            f"{PREFIX}_invalid_files", "Unit files the last sync found invalid.", registry=r
        )
        self.prunes_refused = Counter(
            f"{PREFIX}_prunes_refused",
            "Syncs whose deletions the prune guard refused.",
            registry=r,
        )
        self.prune_held = Gauge(
            f"{PREFIX}_prune_held_units",
            "Units whose deletion the prune guard holds back (0 when nothing is held).",
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors", "Errors, by where they happened.", ["stage"], registry=r
        )
        self.leader = Gauge(f"{PREFIX}_leader", "1 while this process is the leader.", registry=r)
        self.rollouts = Gauge(
            f"{PREFIX}_rollouts", "Units by rollout phase.", ["phase"], registry=r
        )
        self.syncs = Counter(f"{PREFIX}_syncs", "Syncs, by result.", ["result"], registry=r)
        self.unit_phase = Gauge(
            f"{PREFIX}_unit_rollout_phase",
            "1 for each unit's current rollout phase (one series per unit).",
            ["unit", "phase"],
            registry=r,
        )
        self.fleet_writes = Counter(
            f"{PREFIX}_fleet_writes", "Writes to fleet, by operation.", ["op"], registry=r
        )
        self.fleet_errors = Counter(
            f"{PREFIX}_fleet_errors", "Failed fleet calls, by operation.", ["op"], registry=r
        )
        for op in FLEET_WRITES:
            self.fleet_writes.labels(op=op)
        for op in FLEET_OPS:
            self.fleet_errors.labels(op=op)
        self._unit_phases: dict[str, str] = {}
        self._first_commit: str | None = None  # the commit synced at start: not lag
        for state in UNIT_STATES:
            self.units.labels(state=state)
        for stage in ERROR_STAGES:
            self.errors.labels(stage=stage)
        self._phases = set(ROLLOUT_PHASES)  # every phase ever shown, kept at 0 when absent
        self._phases_lock = threading.Lock()
        for phase in ROLLOUT_PHASES:
            self.rollouts.labels(phase=phase)
        for result in SYNC_RESULTS:
            self.syncs.labels(result=result)
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def observe_sync(
        self,
        duration: float,
        commit: str,
        lag: float | None,
        counts: Mapping[str, int],
        invalid: int,
        prune_refused: bool,
        *,
        now: float | None = None,
    ) -> None:
        """Record a sync that applied ``commit`` (possibly partially: see SYNC_RESULTS).

        ``counts`` maps UNIT_STATES to the last plan's counts (missing states are 0,
        unknown ones are ignored); ``lag`` None leaves the lag gauge as it was (nothing
        new was applied), and so does the first commit this process syncs: it may have
        been pushed long before the daemon started.
        """
        self.duration.observe(duration)
        self.commit.info({"commit": commit})
        self.last_success.set(time.time() if now is None else now)
        if self._first_commit is None:
            self._first_commit = commit
        elif lag is not None and commit != self._first_commit:
            self.lag.set(lag)
        for state in UNIT_STATES:
            self.units.labels(state=state).set(counts.get(state, 0))
        self.invalid_files.set(invalid)
        self.prune_held.set(counts.get("prune-refused", 0))
        if prune_refused:
            self.prunes_refused.inc()
        result = "partial" if invalid or prune_refused else "ok"
        self.syncs.labels(result=result).inc()

    def sync_failed(self, duration: float, stage: str) -> None:
        """Record a sync that applied nothing because ``stage`` failed."""
        self.duration.observe(duration)
        self.syncs.labels(result="error").inc()
        self.error(stage)

    def error(self, stage: str) -> None:
        """Count one error. A stage outside ERROR_STAGES counts as "other"."""
        self.errors.labels(stage=stage if stage in ERROR_STAGES else "other").inc()

    def set_leader(self, leader: bool) -> None:
        self.leader.set(1 if leader else 0)

    def set_rollouts(self, phases: Mapping[str, int]) -> None:
        """Units by rollout phase, from the scheduler's last pass (absent phases are 0).

        A phase outside ROLLOUT_PHASES gets its own series: phases are a small set
        owned by the scheduler, and hiding a new one would be worse than showing it.
        """
        with self._phases_lock:
            self._phases.update(phases)
            for phase in self._phases:
                self.rollouts.labels(phase=phase).set(phases.get(phase, 0))

    def set_unit_phases(self, phases: Mapping[str, str]) -> None:
        """Each unit's rollout phase, from the scheduler's last pass (unit → phase)."""
        with self._phases_lock:
            for unit, phase in list(self._unit_phases.items()):
                if phases.get(unit) != phase:
                    self.unit_phase.remove(unit, phase)
            for unit, phase in phases.items():
                self.unit_phase.labels(unit=unit, phase=phase).set(1)
            self._unit_phases = dict(phases)

    def fleet_call(self, op: str, *, failed: bool) -> None:
        """Count one fleet call: a write (``op`` in FLEET_WRITES) or a failed call."""
        if failed:
            self.fleet_errors.labels(op=op if op in FLEET_OPS else "read").inc()
        elif op in FLEET_WRITES:
            self.fleet_writes.labels(op=op).inc()


class _LoopCollector(Collector):
    """The supervised loops at scrape time: up or not, and the exceptions they survived.

    The label values are the loops' names, a small fixed set per program.
    """

    def __init__(self, loops: Loops) -> None:
        self.loops = loops

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{PREFIX}_loop_up", "1 while the loop is alive and not stuck.", labels=["loop"]
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_loop_failures",
            "Unexpected exceptions the loop survived (each logged with its traceback).",
            labels=["loop"],
        )
        for beat in self.loops.heartbeats():
            up.add_metric([beat.name], 0 if beat.problem() else 1)
            failures.add_metric([beat.name], beat.failures.total)
        yield up
        yield failures
