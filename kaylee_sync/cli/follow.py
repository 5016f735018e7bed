"""``kaylee run --wait``: follow one unit's rollout until it is done, failed or stuck.

Writing a spec only asks for a rollout; the leader's scheduler carries it out. A person
(or a CI job) running ``kaylee run --wait`` wants to know when the new version serves,
and to hear *why* when it does not. This module watches what the scheduler publishes
and what fleet reports, and decides which of those it is:

- **done**: the scheduler's report (``scheduler/rollouts/<name>``) is about this spec and
  says ``steady``, and fleet shows exactly the spec's instances, all on the new hash and
  all running. The scheduler only retires an old replica once a new one has run for
  ``--stable`` seconds, so a finished rolling update has nothing but stable replicas.
- **failed**: the report says the rollout of this hash failed (a replica never ran
  stably), or the scheduler has kept reporting the same error for ``error_grace``.
- **stuck**: no ``kaylee server`` has held leadership for ``leaderless_grace`` (nothing
  will ever schedule the unit), or the timeout passed.
- **superseded**: someone else rewrote or removed the unit meanwhile.

A report written before the new spec was seen must not count, so a report is only
believed when its hash is this spec's identity hash (the spec hash, or the hash a group
scaled in place keeps) and its ``desired`` matches. A restart requested while waiting is
followed too (it changes the hash). The loop and the decision are plain functions with a
clock and a display passed in, so they are tested without click or a terminal.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TextIO

from kaylee_sync.errors import FleetError, StoreError
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.health import (
    FleetTally,
    RolloutReport,
    StuckWatch,
    Verdict,
    decode_report,
    judge,
)
from kaylee_sync.render import DEFAULT_UNIT_PREFIX, parse_unit_name
from kaylee_sync.scheduler.decide import is_running, replica_variant
from kaylee_sync.spec import UnitSpec, spec_hash6
from kaylee_sync.store import Store, keys


@dataclass(frozen=True)
class FollowSettings:
    timeout: float = 330.0
    """Seconds to wait in all: the scheduler's default rollout timeout (300 s) plus slack."""
    interval: float = 1.0
    """Seconds between looks. Each look reads every fleet unit, so not much more often."""
    leaderless_grace: float = 15.0
    """Seconds without any leader before giving up. Longer than a failover (the default
    lease TTL is 10 s), so a leader change does not end the wait."""
    error_grace: float = 30.0
    """Seconds the scheduler may keep reporting the same error (it retries every second)
    before the rollout counts as failed."""


@dataclass(frozen=True)
class Target:
    """The spec ``kaylee run`` wrote, and the exact value it wrote."""

    spec: UnitSpec
    value: bytes
    generation: int = 0
    unit_prefix: str = DEFAULT_UNIT_PREFIX

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def hash6(self) -> str:
        return spec_hash6(self.spec, self.generation)

    def is_identity(self, hash6: str) -> bool:
        """True for the hash this spec's units carry: its own, or a scaled-in-place group's."""
        return hash6 == self.hash6 or replica_variant(self.spec, self.generation, hash6)


@dataclass(frozen=True)
class Look:
    """One look at etcd and fleet."""

    stored: bytes | None  # units/<name> now
    generation: int
    leader: str | None
    report: RolloutReport | None
    fleet: list[tuple[str, bool]] | None  # (hash6, running) per fleet unit; None: not read
    fleet_error: str = ""
    report_error: str = ""  # the report is there but is not one (shown, never fatal)


@dataclass(frozen=True)
class Status:
    text: str  # the progress line, without the elapsed time
    done: bool = False
    failure: str = ""  # why the rollout failed or was superseded; "" if it did not
    error: str = ""  # the scheduler's current error for this unit (retried)
    leaderless: bool = False


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    elapsed: float


def assess(target: Target, look: Look) -> Status:
    """What one look says about the rollout (pure); the verdict is :func:`health.judge`'s."""
    name, spec = target.name, target.spec
    if look.stored is None:
        return Status(f"{name}: removed", failure=f"{name} was removed while waiting")
    if look.stored != target.value:
        return Status(
            f"{name}: changed",
            failure=f"units/{name} was changed by someone else while waiting; stopped following",
        )
    want = spec.instance_count
    report = look.report if look.report and look.report.is_about(target.is_identity, want) else None
    ident = report.hash6 if report is not None else target.hash6
    tally = None
    if look.fleet is not None:
        new_total = sum(1 for h, _ in look.fleet if h == ident)
        new_running = sum(1 for h, running in look.fleet if h == ident and running)
        tally = FleetTally(new_total, new_running, len(look.fleet) - new_total)
    else:
        new_running = report.running if report is not None else 0
    noun = "replicas" if spec.is_replica_unit else "instance"
    text = f"{name}: {new_running}/{want} new {noun} running"
    if tally is not None and tally.old:
        text += f", {tally.old} old left"
    if report is not None and report.healthy:
        text += f", {report.healthy} healthy"  # a unit with health checks
    text += f" · {report.phase.value if report is not None else 'waiting for the scheduler'}"
    if look.leader is None:
        text += " · no leader"
    if look.fleet_error:
        text += f" · fleet not reachable: {look.fleet_error}"
    if look.report_error:
        text += f" · {look.report_error}"
    error = report.error if report is not None else ""
    if error:
        text += f" · error: {error}"
    status = Status(text, error=error, leaderless=look.leader is None)
    judgement = judge(report, is_identity=target.is_identity, desired=want, fleet=tally)
    if judgement.verdict is Verdict.FAILED:
        return replace(status, failure=f"{name}: rollout failed: {judgement.reason}")
    return replace(status, done=judgement.verdict is Verdict.DONE)


def take_look(store: Store, fleet: FleetClient | None, target: Target) -> Look:
    """Read the unit, its restart generation, the leader, the report and fleet's units."""
    stored = store.get_unit(target.name)
    report_value = store.get(keys.rollout_key(target.name))
    report, report_error = None, ""
    if report_value is not None:
        try:
            report = decode_report(report_value.value, report_value.key)
        except StoreError as exc:
            report_error = str(exc)
    units: list[tuple[str, bool]] | None = None
    fleet_error = ""
    if fleet is not None:
        try:
            states: dict[str, list[Any]] = {}
            for state in fleet.unit_states():
                states.setdefault(state.name, []).append(state)
            units = []
            for unit in fleet.units():
                parsed = parse_unit_name(unit.name, target.unit_prefix)
                if parsed is not None and parsed.unit == target.name:
                    units.append((parsed.hash6, is_running(states.get(unit.name, ()))))
        except FleetError as exc:
            units, fleet_error = None, str(exc)
    return Look(
        stored=stored.value if stored is not None else None,
        generation=store.restart_generation(target.name),
        leader=store.leader(),
        report=report,
        fleet=units,
        fleet_error=fleet_error,
        report_error=report_error,
    )


class Display(Protocol):
    def show(self, text: str, elapsed: float) -> None: ...
    def close(self) -> None: ...


class TtyLine:
    """One line rewritten in place (``\\r`` and erase-to-end), cut to the terminal width."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._shown = False

    def show(self, text: str, elapsed: float) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)  # never wrap: \r must work
        line = f"{text} · {elapsed:.0f} s"
        if len(line) > width:
            line = line[: width - 1] + "…"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()


class ChangeLines:
    """A line per change (logs, CI): the elapsed time alone is not a change."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = ""

    def show(self, text: str, elapsed: float) -> None:
        if text != self._last:
            self.stream.write(f"{text} · {elapsed:.0f} s\n")
            self.stream.flush()
            self._last = text

    def close(self) -> None:
        pass


def display_for(stream: TextIO) -> Display:
    return TtyLine(stream) if stream.isatty() else ChangeLines(stream)


def follow(
    store: Store,
    fleet: FleetClient | None,
    target: Target,
    display: Display,
    settings: FollowSettings | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], object] | None = None,
) -> Outcome:
    """Look every ``interval`` until the rollout is done, failed or stuck."""
    settings = settings or FollowSettings()
    wait = wait or threading.Event().wait
    start = clock()
    stuck = StuckWatch(settings.leaderless_grace, settings.error_grace)
    text = f"{target.name}: waiting for the scheduler"
    try:
        while True:
            now = clock()
            elapsed = now - start
            try:
                look = take_look(store, fleet, target)
            except StoreError as exc:
                look = None
                display.show(f"{text} · etcd not reachable: {exc}", elapsed)
            if look is not None:
                if look.generation != target.generation:  # a restart: follow that one
                    target = replace(target, generation=look.generation)
                status = assess(target, look)
                text = status.text
                display.show(text, elapsed)
                if status.done:
                    return Outcome(True, f"rollout of {target.name} ({target.hash6}) done", elapsed)
                if status.failure:
                    return Outcome(False, status.failure, elapsed)
                why = stuck.observe(now, leaderless=status.leaderless, error=status.error)
                if why is not None and why.leaderless:
                    hint = f"so nothing schedules {target.name}: start 'kaylee server'"
                    return Outcome(False, f"{why.reason}, {hint}", elapsed)
                if why is not None:
                    return Outcome(False, f"{target.name}: {why.reason}", elapsed)
            if elapsed >= settings.timeout:
                return Outcome(False, f"timed out after {settings.timeout:.0f} s: {text}", elapsed)
            wait(min(settings.interval, max(0.0, settings.timeout - elapsed)))
    finally:
        display.close()
