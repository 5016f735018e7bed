"""The scheduler loop: read specs and fleet, decide per unit, act, report.

A pass reads everything it needs in a handful of range requests (specs, restart
generations and rollout status from etcd v3; units and states from fleet), asks
:func:`~kaylee_sync.scheduler.decide.decide` what each Kaylee unit needs next, carries
out those non-blocking steps and records each unit's rollout under
``scheduler/rollouts/<name>``. Passes run when ``units/`` or ``restart/`` change (a
watch), every second while anything is moving, on every ``resync`` period, and when
this process becomes leader.

Safety: a pass that cannot read all specs does nothing (never destroy from partial
data); an entry that fails validation leaves that unit's fleet units alone; fleet
units without our prefix are never touched; leadership is re-checked before every write.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kaylee_sync.errors import FleetError, KayleeError, SpecError, StoreError
from kaylee_sync.fleet.model import LAUNCHED, LOADED, FleetUnit, UnitState
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.gcpause import collector_paused
from kaylee_sync.render import UnitName, parse_unit_name
from kaylee_sync.scheduler.decide import (
    Action,
    Create,
    Decision,
    Destroy,
    Launch,
    Stop,
    Timers,
    Timing,
    UnitView,
    decide,
    is_running,
)
from kaylee_sync.spec.loader import parse_stored
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.store import Store, keys
from kaylee_sync.supervise import Heartbeat

log = logging.getLogger(__name__)

QUIET_PHASES = frozenset({"steady", "failed", "deleted"})
_UNPARSED: Any = object()  # not parsed yet (None means "not one of ours")
#: the bound of a loop nobody watches (run without a heartbeat, e.g. by a test)
_UNWATCHED = 300.0


@dataclass(frozen=True)
class SchedulerSettings:
    unit_prefix: str = "k2"
    """Only fleet units named ``<unit_prefix>:…`` are ours (the original's ``--unit-prefix``)."""
    stable: float = 10.0
    """Seconds a new replica must stay ``running`` before an old one is retired."""
    rollout_timeout: float = 300.0
    """Seconds a new replica may take to become stable before the rollout fails."""
    destroy_timeout: float = 30.0
    """Seconds to wait for ``dead`` after stopping a unit before destroying it anyway."""
    resync: float = 60.0
    """Seconds between full passes when nothing is happening (the safety net)."""
    active_interval: float = 1.0
    """Seconds between passes while a rollout, scale or delete is under way."""

    @property
    def timing(self) -> Timing:
        return Timing(self.stable, self.rollout_timeout, self.destroy_timeout)


class Scheduler:
    """Reconciles ``units/*`` into fleet units. Only run passes while leader."""

    def __init__(
        self,
        store: Store,
        fleet: FleetClient,
        settings: SchedulerSettings | None = None,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.settings = settings or SchedulerSettings()
        self.is_leader = is_leader
        self.clock = clock
        self.wall_clock = wall_clock
        self.timers = Timers()
        self._wake = threading.Event()
        self._specs: dict[tuple[str, int], UnitSpec | SpecError] = {}
        self._errors: dict[str, str] = {}
        self._names: dict[str, UnitName | None] = {}

    # -- triggers ----------------------------------------------------------------------

    def trigger(self) -> None:
        """Ask for a pass as soon as possible (coalesced)."""
        self._wake.set()

    def became_leader(self) -> None:
        """Forget what a previous term remembered and reconcile everything now."""
        self.timers = Timers()
        self._errors.clear()
        self.trigger()

    # -- one pass ----------------------------------------------------------------------

    def run_pass(self) -> list[Decision]:
        """One full reconciliation. Raises StoreError/FleetError if reading fails."""
        with collector_paused():
            return self._pass()

    def _pass(self) -> list[Decision]:
        now = self.clock()
        specs, broken = self._read_specs()
        generations = self._read_ints(keys.RESTART)
        reports = self._read_reports()
        units, unit_states = self.fleet.snapshot()
        states: dict[str, list[UnitState]] = {}
        for state in unit_states:
            states.setdefault(state.name, []).append(state)

        ours: dict[str, list[tuple[UnitName, FleetUnit]]] = {}
        parsed_names: dict[str, UnitName | None] = {}
        for unit in units:
            # Names never change meaning: parse each once, not on every pass.
            parsed = self._names.get(unit.name, _UNPARSED)
            if parsed is _UNPARSED:
                parsed = parse_unit_name(unit.name, self.settings.unit_prefix)
            parsed_names[unit.name] = parsed
            if parsed is not None:
                ours.setdefault(parsed.unit, []).append((parsed, unit))
        self._names = parsed_names
        all_ours = [u for members in ours.values() for _, u in members]
        running = [u.name for u in all_ours if is_running(states.get(u.name, ()))]
        self.timers.observe(all_ours, running, now)
        self._seed_created_at(reports, now)

        decisions: list[Decision] = []
        for name in sorted((specs.keys() | ours.keys()) - broken):
            view = UnitView(
                name=name,
                prefix=self.settings.unit_prefix,
                spec=specs.get(name),
                generation=generations.get(name, 0),
                units=ours.get(name, []),
                states=states,
                failed_hash=str(reports.get(name, {}).get("failed_hash", "")),
            )
            decision = decide(view, self.timers, now, self.settings.timing)
            if not self.is_leader():
                log.warning("leadership lost: abandoning the scheduler pass")
                return decisions
            error = self._act(decision)
            # The unit's own fleet units (and any created just now): scanning every
            # timer for every unit would make a pass quadratic in the fleet's size.
            names = [u.name for _, u in view.units]
            names += [a.name for a in decision.actions if isinstance(a, Create)]
            self._report(decision, reports.get(name), error, names)
            decisions.append(decision)
        return decisions

    def _read_specs(self) -> tuple[dict[str, UnitSpec], set[str]]:
        specs: dict[str, UnitSpec] = {}
        broken: set[str] = set()
        seen: dict[tuple[str, int], UnitSpec | SpecError] = {}
        for stored in self.store.list_units():
            name = stored.key.removeprefix(keys.UNITS)
            cache_key = (stored.key, stored.mod_revision)
            parsed = self._specs.get(cache_key)
            if parsed is None:
                try:
                    parsed = parse_stored(stored.value, stored.key, expected_name=name)
                except SpecError as exc:
                    parsed = exc
                    log.error("%s is invalid; leaving its fleet units alone: %s", stored.key, exc)
            seen[cache_key] = parsed
            if isinstance(parsed, SpecError):
                broken.add(name)
            else:
                specs[name] = parsed
        self._specs = seen
        return specs, broken

    def _read_ints(self, area: str) -> dict[str, int]:
        out = {}
        for stored in self.store.get_prefix(area):
            try:
                out[stored.key.removeprefix(area)] = int(stored.value or b"0")
            except ValueError:
                log.error("%s is not an integer: ignored", stored.key)
        return out

    def _read_reports(self) -> dict[str, dict[str, Any]]:
        out = {}
        for stored in self.store.get_prefix(keys.ROLLOUTS):
            try:
                out[stored.key.removeprefix(keys.ROLLOUTS)] = json.loads(stored.value)
            except ValueError:
                continue
        return out

    def _seed_created_at(self, reports: dict[str, dict[str, Any]], now: float) -> None:
        """After a failover, carry over when pending units were created (for the timeout)."""
        wall_now = self.wall_clock()
        for report in reports.values():
            for name, created_wall in (report.get("created") or {}).items():
                if name in self.timers.created_at and isinstance(created_wall, int | float):
                    seeded = now - max(0.0, wall_now - created_wall)
                    self.timers.created_at[name] = min(self.timers.created_at[name], seeded)

    # -- acting and reporting ----------------------------------------------------------

    def _act(self, decision: Decision) -> str:
        """Carry out the decision; the error that stopped it ("" if none)."""
        for action in decision.actions:
            if not self.is_leader():
                return ""
            try:
                self._apply(action)
            except FleetError as exc:
                # One unit's trouble must not stop the others: the next pass retries. The
                # same error pass after pass is logged once (and stays in the report).
                error = f"{_describe(action)} failed: {exc}"
                if self._errors.get(decision.unit) != error:
                    log.error("%s: %s", decision.unit, error)
                self._errors[decision.unit] = error
                return error
            log.info("%s: %s", decision.unit, _describe(action))
        self._errors.pop(decision.unit, None)
        return ""

    def _apply(self, action: Action) -> None:
        match action:
            case Create(name=name, options=options):
                self.fleet.create_unit(name, options, LAUNCHED)
                self.timers.created_at[name] = self.clock()
            case Launch(name=name):
                self.fleet.set_target_state(name, LAUNCHED)
            case Stop(name=name):
                self.fleet.set_target_state(name, LOADED)
                self.timers.stop_requested_at[name] = self.clock()
            case Destroy(name=name):
                self.fleet.destroy_unit(name)

    def _report(
        self,
        decision: Decision,
        previous: dict[str, Any] | None,
        error: str,
        unit_names: list[str],
    ) -> None:
        key = keys.rollout_key(decision.unit)
        if decision.phase == "deleted":
            if previous is not None:
                self.store.delete(key)
            return
        wall_now = self.wall_clock()
        clock_now = self.clock()
        marker = f":{decision.unit}:{decision.hash6}:"
        pending = {
            name: round(wall_now - (clock_now - created), 3)
            for name in unit_names
            if (created := self.timers.created_at.get(name)) is not None
            and marker in name
            and name not in self.timers.running_since
        }
        report: dict[str, Any] = {
            "phase": decision.phase,
            "hash6": decision.hash6,
            "desired": decision.desired,
            "running": decision.running,
            "message": decision.message,
            "failed_hash": decision.failed_hash,
            "created": pending,
            "error": error,
        }
        comparable = previous and {k: v for k, v in previous.items() if k != "updated"}
        if comparable == report:
            return
        if report["message"] != (previous or {}).get("message") and report["message"]:
            log.info("%s: %s: %s", decision.unit, decision.phase, decision.message)
        report["updated"] = wall_now
        self.store.put(key, json.dumps(report, sort_keys=True))

    # -- the loop ----------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        heartbeat: Heartbeat | None = None,
        watch_heartbeat: Heartbeat | None = None,
    ) -> None:
        """Pass after pass until ``stop`` is set. Nothing else ends it: a failed read
        (StoreError/FleetError) is retried at the active interval; anything else — a bug,
        a record no check foresaw — is logged once with its traceback and retried with
        exponential backoff. ``heartbeat`` beats at every pass and before every wait."""
        beat = heartbeat or Heartbeat("scheduler", _UNWATCHED)
        halt = threading.Event()  # ends the watch when this loop ends, however it ends
        watcher = threading.Thread(
            target=self._watch,
            args=(halt, watch_heartbeat or Heartbeat("scheduler-watch", _UNWATCHED)),
            daemon=True,
            name="kaylee-scheduler-watch",
        )
        if watch_heartbeat is not None:
            watch_heartbeat.attach(watcher)
        watcher.start()
        busy = True
        try:
            while not stop.is_set():
                self._wake.clear()
                beat.beat()
                if self.is_leader():
                    try:
                        decisions = self.run_pass()
                        busy = any(d.phase not in QUIET_PHASES for d in decisions)
                        beat.failures.succeeded()
                    except (StoreError, FleetError) as exc:
                        log.error("scheduler pass failed, retrying: %s", exc)
                        busy = True
                    except Exception as exc:
                        # Waited out on ``stop``, not ``_wake``: a storm of watch events
                        # must not turn the backoff into a hot loop.
                        delay = beat.failures.failed(exc)
                        beat.beat(idle=delay)
                        stop.wait(delay)
                        busy = True
                wait = self.settings.active_interval if busy else self.settings.resync
                beat.beat(idle=wait)
                self._wake.wait(wait)
        finally:
            halt.set()
            self._wake.set()

    def _watch(self, stop: threading.Event, beat: Heartbeat) -> None:
        """Trigger a pass on every change under units/ and restart/ (re-watching on errors,
        whatever they are)."""
        try:
            while not stop.is_set():
                beat.beat()
                broken = threading.Event()
                failed: list[Exception] = []  # what ended a pump, if not a KayleeError
                cancels = []
                try:
                    for area in (keys.UNITS, keys.RESTART):
                        events, cancel = self.store.watch_prefix(area)
                        cancels.append(cancel)
                        threading.Thread(
                            target=self._pump,
                            args=(events, broken, failed),
                            daemon=True,
                            name=f"kaylee-watch-{area}",
                        ).start()
                    self.trigger()  # anything that changed before the watch started
                    beat.failures.succeeded()
                    while not stop.is_set() and not broken.is_set():
                        beat.beat(idle=0.5)
                        stop.wait(0.5)
                    if failed:
                        raise failed[0]
                except KayleeError as exc:
                    log.warning("watching etcd failed, retrying: %s", exc)
                    beat.beat(idle=1.0)
                    stop.wait(1.0)
                except Exception as exc:
                    delay = beat.failures.failed(exc)
                    beat.beat(idle=delay)
                    stop.wait(delay)
                finally:
                    for cancel in cancels:
                        try:
                            cancel()
                        except Exception:
                            log.exception("cancelling an etcd watch failed")
        finally:
            if stop.is_set():
                beat.stopped()

    def _pump(self, events: Any, broken: threading.Event, failed: list[Exception]) -> None:
        """One watch's events become pass requests; when it ends, for whatever reason,
        ``_watch`` opens a new one (after a backoff, and logging it, if it was a bug)."""
        try:
            for _ in events:
                self.trigger()
        except KayleeError as exc:
            log.warning("etcd watch ended: %s", exc)
        except Exception as exc:
            failed.append(exc)
        finally:
            broken.set()


def _describe(action: Action) -> str:
    verb = {Create: "create", Launch: "launch", Stop: "stop", Destroy: "destroy"}[type(action)]
    return f"{verb} {action.name}"
