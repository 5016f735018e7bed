"""The scheduler loop: read specs and fleet, decide per unit, act, report.

A pass reads everything it needs in a handful of range requests (specs, restart
generations and rollout status from etcd v3; units and states from fleet), asks
:func:`~kaylee_sync.scheduler.decide.decide` what each Kaylee unit needs next, carries
out those non-blocking steps and records each unit's rollout under
``scheduler/rollouts/<name>``. Passes run when ``units/`` or ``restart/`` change (a
watch), every second while anything is moving, on every ``resync`` period, and when
this process becomes leader. The units the watch named are looked at first, on their
own, so that a changed unit's first new fleet unit does not wait for the full read
(:mod:`focus`: creates only; everything else is the full pass's).

Safety: a pass that cannot read all specs does nothing (never destroy from partial
data); an entry that fails validation leaves that unit's fleet units alone; a malformed
record costs that record only (:mod:`records`); fleet units without our prefix are never
touched.

Fencing (design.md "Fencing fleet writes", docs/architecture.md): every fleet write
passes the driver's write guard, which refuses (FleetFenced) unless this process still
holds a live lease by its own monotonic clock and is not stopping — checked right before
the request is sent, retries included; every fleet write is conditional on the unit as
this pass read it; rollout reports are written in a transaction comparing ``master``
with our id. Between two actions the pass checks for shutdown and lost leadership, so
a SIGTERM under load hands over within one write.

Unknown is not dead: for ``settle`` seconds after becoming leader, after a failed read
and after a long gap between reads, fleet's states (30 s TTL) may be missing although
units run; decide() then neither stops nor destroys a unit whose instances report
nothing (see decide.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from kaylee_sync.errors import (
    FleetConflict,
    FleetError,
    FleetFenced,
    KayleeError,
    SpecError,
    StoreError,
)
from kaylee_sync.fleet.model import LAUNCHED, LOADED, FleetUnit, UnitState
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.gcpause import collector_paused
from kaylee_sync.health import QUIET_PHASES, Phase, RolloutReport, decode_report, encode_report
from kaylee_sync.render import DEFAULT_UNIT_PREFIX, UnitName, parse_unit_name
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
from kaylee_sync.scheduler.focus import (
    MAX_FOCUSED,
    fleet_names_by_unit,
    read_focused,
    touched_names,
)
from kaylee_sync.scheduler.gated import Gate, Outcome, decide_gated
from kaylee_sync.scheduler.health_gate import HealthGate, HealthSource
from kaylee_sync.scheduler.records import Complaints, decode_generation
from kaylee_sync.scheduler.repair import Repair
from kaylee_sync.spec.loader import parse_stored
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.store import Compare, Op, Store, keys
from kaylee_sync.supervise import Heartbeat

log = logging.getLogger(__name__)

_UNPARSED: Any = object()  # not parsed yet (None means "not one of ours")
#: the bound of a loop nobody watches (run without a heartbeat, e.g. by a test)
_UNWATCHED = 300.0


@dataclass(frozen=True)
class SchedulerSettings:
    unit_prefix: str = DEFAULT_UNIT_PREFIX
    """Only fleet units named ``<unit_prefix>:…`` are ours (the original's ``--unit-prefix``)."""
    stable: float = 10.0
    """Seconds a new replica must stay ``running`` before an old one is retired."""
    rollout_timeout: float = 300.0
    """Seconds a new replica may take to become stable before the rollout fails."""
    destroy_timeout: float = 30.0
    """Seconds to wait for ``dead`` after stopping a unit before destroying it anyway."""
    resync: float = 60.0
    """Seconds between full passes when nothing is happening (the safety net), and
    between scans for registry debris (a piece is removed when two scans in a row
    found it unchanged)."""
    active_interval: float = 1.0
    """Seconds between passes while a rollout, scale or delete is under way."""
    settle: float = 30.0
    """Seconds after becoming leader (or after fleet or etcd could not be read) during
    which a unit whose instances report no state is neither stopped nor destroyed:
    fleet's unit states live 30 s, so by then every agent has republished."""

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
        should_stop: Callable[[], bool] = lambda: False,
        identity: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        prober: HealthSource | None = None,
    ) -> None:
        """``is_leader`` must turn false before the lease can expire on the server
        (Election.is_leader does: last renewal + TTL - margin, by the monotonic clock);
        ``identity`` is the value this process writes to ``master``: reports are fenced
        on it (None: unfenced, for tests and one-off tools). ``prober`` runs the health
        checks of units with a ``health:`` section (None: such instances never pass)."""
        self.store = store
        self.fleet = fleet
        self.settings = settings or SchedulerSettings()
        self.is_leader = is_leader
        self.should_stop = should_stop
        self.identity = identity
        self.clock = clock
        self.wall_clock = wall_clock
        self.timers = Timers()
        self._wake = threading.Event()
        self._specs: dict[tuple[str, int], UnitSpec | SpecError] = {}
        self._errors: dict[str, str] = {}
        self._names: dict[str, UnitName | None] = {}
        self._complain = Complaints()
        self._settle_until: float | None = None  # None: start settling at the next read
        self._last_read: float | None = None
        #: units the watch named since the last pass began (focus.py)
        self._touched: set[str] = set()
        self._touched_lock = threading.Lock()
        #: each unit's fleet unit names as this term's last full read saw them; None
        #: until one has (no early steps before it)
        self._known: dict[str, tuple[str, ...]] | None = None
        self.gate = HealthGate(store, fleet, prober, self._complain)
        self.repair = Repair(
            fleet, self.settings.unit_prefix, self.settings.resync, self.settings.active_interval
        )
        fleet.set_write_guard(self.check_lease)

    # -- fencing -----------------------------------------------------------------------

    def check_lease(self, what: str = "write") -> None:
        """Raise FleetFenced unless a write may be sent now: called right before each."""
        if self.should_stop():
            raise FleetFenced(f"not sending {what}: stopping")
        if not self.is_leader():
            raise FleetFenced(f"not sending {what}: the leader lease is not live")

    def _fence(self) -> list[Compare]:
        return [] if self.identity is None else [Compare.value_equals(keys.MASTER, self.identity)]

    # -- triggers ----------------------------------------------------------------------

    def trigger(self) -> None:
        """Ask for a pass as soon as possible (coalesced)."""
        self._wake.set()

    def became_leader(self) -> None:
        """Forget what a previous term remembered and reconcile everything now."""
        self.timers = Timers()
        self._errors.clear()
        self._settle_until = None  # fleet's states may be missing: settle first
        self._known = None
        self.repair.reset()
        self.trigger()

    # -- one pass ----------------------------------------------------------------------

    def run_pass(self) -> list[Decision]:
        """One full reconciliation. Raises StoreError/FleetError if reading fails."""
        try:
            with collector_paused():
                return self._pass()
        except FleetFenced as exc:
            log.info("scheduler pass abandoned: %s", exc)
            return []
        except (StoreError, FleetError):
            self._settle_until = None  # etcd or fleet trouble: states may have expired
            raise

    def _halted(self) -> bool:
        return self.should_stop() or not self.is_leader()

    def _settling(self, now: float) -> bool:
        """Whether fleet's states may still be missing (see SchedulerSettings.settle)."""
        gap = self._last_read is not None and now - self._last_read > self.settings.settle
        if self._settle_until is None or gap:
            self._settle_until = now + self.settings.settle
        self._last_read = now
        return now < self._settle_until

    def _pass(self) -> list[Decision]:
        with self._touched_lock:
            touched, self._touched = self._touched, set()
        if touched and self._known is not None:
            self._first_steps(touched, self._known)
        now = self.clock()
        specs, broken = self._read_specs()
        generations = self._read_ints(keys.RESTART)
        reports = self._read_reports()
        self.gate.read()
        units, unit_states = self.fleet.snapshot()
        settling = self._settling(self.clock())
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
        self._known = fleet_names_by_unit(ours)
        all_ours = [u for members in ours.values() for _, u in members]
        running = [u.name for u in all_ours if is_running(states.get(u.name, ()))]
        self.timers.observe(all_ours, running, now)
        self._seed_created_at(reports, now)
        self.gate.update_checks(specs, ours)

        decisions: list[Decision] = []
        for name in sorted((specs.keys() | ours.keys()) - broken):
            view = UnitView(
                name=name,
                prefix=self.settings.unit_prefix,
                spec=specs.get(name),
                generation=generations.get(name, 0),
                units=ours.get(name, []),
                states=states,
                failed_hash=report.failed_hash if (report := reports.get(name)) else "",
                settling=settling,
            )
            decision, outcome = self._decide(view, reports.get(name), now, specs)
            if self._halted():
                log.warning("stopping or no longer leading: abandoning the scheduler pass")
                return decisions
            error = self._act(decision, {u.name: u for _, u in view.units})
            # The unit's own fleet units (and any created just now): scanning every
            # timer for every unit would make a pass quadratic in the fleet's size.
            names = [u.name for _, u in view.units]
            names += [a.name for a in decision.actions if isinstance(a, Create)]
            if not self._report(decision, reports.get(name), error, names, outcome):
                return decisions  # the fence on master refused: someone else leads
            decisions.append(decision)
        self.repair.run(now, self._halted)
        return decisions

    def _first_steps(self, names: set[str], known: dict[str, tuple[str, ...]]) -> None:
        """The creates the units the watch named need, each unit read on its own (see
        focus.py); the full read follows. A read that fails leaves it to the full pass."""
        if len(names) > MAX_FOCUSED:
            return
        prefix = self.settings.unit_prefix
        for name in sorted(names):
            if self._halted():
                raise FleetFenced("stopping or no longer leading")
            try:
                focused = read_focused(
                    self.store, self.fleet, name, known.get(name, ()), prefix, self._complain
                )
            except (StoreError, FleetError) as exc:
                log.info("%s: early look failed, left to the full pass: %s", name, exc)
                return
            if focused is None or self.gate.gated(name, focused.spec):
                continue
            view = UnitView(
                name=name,
                prefix=prefix,
                spec=focused.spec,
                generation=focused.generation,
                units=focused.units,
                states={},  # not read: every instance is "unknown", i.e. serving
                failed_hash=focused.failed_hash,
                settling=True,  # and nothing is judged dead or late on this view
            )
            decision = decide(view, self.timers, self.clock(), self.settings.timing)
            creates = tuple(a for a in decision.actions if isinstance(a, Create))
            if creates:
                self._act(replace(decision, actions=creates), {})

    def _decide(
        self,
        view: UnitView,
        report: RolloutReport | None,
        now: float,
        specs: dict[str, UnitSpec],
    ) -> tuple[Decision, Outcome | None]:
        """decide(), or for a unit with a rollout policy the health-gated decide_gated()."""
        if not self.gate.gated(view.name, view.spec):
            return decide(view, self.timers, now, self.settings.timing), None
        stable = None
        if report is not None and report.stable_spec:
            try:
                stable = parse_stored(report.stable_spec, f"{keys.rollout_key(view.name)}: stable")
            except SpecError as exc:
                self._complain(keys.rollout_key(view.name), f"stable_spec: {exc}")
        healthy, failing = self.gate.healthy_since(view.name, view.units, self.timers)
        gate = Gate(
            policy=self.gate.policy(view.name),
            healthy_since=healthy,
            failing=failing,
            record=report,
            control=self.gate.control(view.name),
            stable=stable,
            wall_now=self.wall_clock(),
        )
        return decide_gated(view, gate, self.timers, now, self.settings.timing)

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
            value = decode_generation(stored.key, stored.value, self._complain)
            if value is not None:
                out[stored.key.removeprefix(area)] = value
        return out

    def _read_reports(self) -> dict[str, RolloutReport]:
        out = {}
        for stored in self.store.get_prefix(keys.ROLLOUTS):
            try:
                report = decode_report(stored.value, stored.key)
            except StoreError as exc:
                # Logged once; the unit's next report replaces the bad record.
                self._complain(stored.key, str(exc).removeprefix(f"{stored.key}: "))
                continue
            out[stored.key.removeprefix(keys.ROLLOUTS)] = report
        return out

    def _seed_created_at(self, reports: dict[str, RolloutReport], now: float) -> None:
        """After a failover, carry over when pending units were created (for the timeout)."""
        wall_now = self.wall_clock()
        for report in reports.values():
            for name, created_wall in report.created.items():
                if name in self.timers.created_at:
                    seeded = now - max(0.0, wall_now - created_wall)
                    self.timers.created_at[name] = min(self.timers.created_at[name], seeded)

    # -- acting and reporting ----------------------------------------------------------

    def _act(self, decision: Decision, seen: dict[str, FleetUnit]) -> str:
        """Carry out the decision; the error that stopped it ("" if none).

        FleetFenced (no live lease, or stopping) propagates: the pass ends there.
        """
        for action in decision.actions:
            if self._halted():
                raise FleetFenced("stopping or no longer leading")
            try:
                self._apply(action, seen.get(action.name))
            except FleetFenced:
                raise
            except FleetConflict as exc:
                # The world moved since this pass read it: not an error, the next pass
                # reads again and decides afresh.
                log.info("%s: %s skipped: %s", decision.unit, _describe(action), exc)
                self.trigger()
                return ""
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

    def _apply(self, action: Action, seen: FleetUnit | None) -> None:
        """One action, conditional on ``seen`` (the unit as this pass read it)."""
        match action:
            case Create(name=name, options=options):
                self.fleet.create_unit(name, options, LAUNCHED, fresh=True)
                self.timers.created_at[name] = self.clock()
            case Launch(name=name):
                self.fleet.set_target_state(name, LAUNCHED, seen=seen)
            case Stop(name=name):
                self.fleet.set_target_state(name, LOADED, seen=seen)
                self.timers.stop_requested_at[name] = self.clock()
            case Destroy(name=name):
                self.fleet.destroy_unit(name, seen=seen)

    def _report(
        self,
        decision: Decision,
        previous: RolloutReport | None,
        error: str,
        unit_names: list[str],
        outcome: Outcome | None = None,
    ) -> bool:
        """Write the unit's rollout report if it changed; False if the fence refused."""
        key = keys.rollout_key(decision.unit)
        if decision.phase is Phase.DELETED:
            return previous is None or self._write_report(Op.delete(key))
        wall_now = self.wall_clock()
        clock_now = self.clock()
        marker = f":{decision.unit}:{decision.hash6}:"
        waiting = set(outcome.waiting) if outcome is not None else set()
        pending = {
            name: round(wall_now - (clock_now - created), 3)
            for name in unit_names
            if (created := self.timers.created_at.get(name)) is not None
            and marker in name
            and (name not in self.timers.running_since or name in waiting)
        }
        report = RolloutReport(
            phase=decision.phase,
            hash6=decision.hash6,
            desired=decision.desired,
            running=decision.running,
            message=decision.message,
            failed_hash=decision.failed_hash,
            created=pending,
            error=error,
        )
        if outcome is not None:
            report = replace(
                report,
                healthy=outcome.healthy,
                started=outcome.started,
                promoted=outcome.promoted,
                stable_spec=outcome.stable_spec,
                stable_generation=outcome.stable_generation,
            )
        if report.same_content(previous):
            return True
        if report.message and report.message != (previous.message if previous else ""):
            log.info("%s: %s: %s", decision.unit, decision.phase, decision.message)
        stamped = replace(report, updated=wall_now)
        return self._write_report(Op.put(key, encode_report(stamped)))

    def _write_report(self, op: Op) -> bool:
        """A leader-only v3 write: lease checked just before, ``master`` compared."""
        self.check_lease(f"{op.kind} {op.key}")
        log.debug("sending %s %s (fenced on master)", op.kind, op.key)
        if self.store.txn(self._fence(), [op]):
            return True
        log.warning("%s not written: %s no longer holds master", op.key, self.identity)
        return False

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
                if not self.is_leader():
                    self.gate.forget()  # a standby checks nothing
                else:
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
                    for area in (keys.UNITS, keys.RESTART, keys.POLICY, keys.CONTROL):
                        events, cancel = self.store.watch_prefix(area)
                        cancels.append(cancel)
                        threading.Thread(
                            target=self._pump,
                            args=(area, events, broken, failed),
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

    def _pump(
        self, area: str, events: Any, broken: threading.Event, failed: list[Exception]
    ) -> None:
        """One watch's events become pass requests, naming the unit where there is one;
        when it ends, for whatever reason, ``_watch`` opens a new one (after a backoff,
        and logging it, if it was a bug)."""
        try:
            for event in events:
                name = touched_names(area, event.key)
                if name is not None:
                    with self._touched_lock:
                        self._touched.add(name)
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
