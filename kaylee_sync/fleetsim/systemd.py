"""A stand-in for the systemd an agent drives: unit states over time, with failures.

Real units take time to start and sometimes never do; Kaylee's rollout must cope with
both. Each simulated unit moves through systemd's (LoadState, ActiveState, SubState)
triples on a clock the agent advances, and a behaviour table decides per unit whether it
starts after a delay, never starts (an activating / auto-restart loop), or crashes some
seconds after it started running.
"""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kaylee_sync.unitfile import UnitOption

# When a never-starting unit cycles, each phase lasts at least this long so that a zero
# start delay does not make the agent spin.
_MIN_CYCLE = 0.2


@dataclass(frozen=True)
class Behaviour:
    """How a unit behaves once started. ``None`` start delay = the cluster's default.

    The workload's health (what health checks see, fleetsim/workload.py): ``unhealthy``
    runs but its HTTP endpoint answers 503; ``no_presence`` never writes its presence
    key; ``healthy_for`` is healthy for that many seconds after it started running,
    then fails its checks while it keeps running (a leak, a lost dependency).
    """

    never_start: bool = False
    crash_after: float | None = None
    start_delay: float | None = None
    unhealthy: bool = False
    no_presence: bool = False
    healthy_for: float | None = None

    @classmethod
    def parse(cls, text: str) -> Behaviour:
        """``"never_start"``, ``"crash_after=3"``, ``"start_delay=0.5,unhealthy"``..."""
        flags = {"never_start": False, "unhealthy": False, "no_presence": False}
        numbers: dict[str, float | None] = dict.fromkeys(
            ("crash_after", "start_delay", "healthy_for")
        )
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = item.partition("=")
            if key in flags and not value:
                flags[key] = True
            elif key in numbers and value:
                numbers[key] = float(value)
            else:
                raise ValueError(f"unknown unit behaviour {item!r}")
        return cls(**flags, **numbers)  # type: ignore[arg-type]


def exec_words(options: Iterable[UnitOption]) -> list[str]:
    """The words of every ``[Service]`` Exec* line: where a unit's images are named."""
    words: list[str] = []
    for opt in options:
        if opt.section == "Service" and opt.name.startswith("Exec"):
            try:
                words.extend(shlex.split(opt.value))
            except ValueError:
                words.extend(opt.value.split())
    return words


def behaviour_for(
    name: str, options: Iterable[UnitOption], table: Mapping[str, Behaviour]
) -> Behaviour:
    """The first table entry whose glob matches the unit name or an image in its Exec lines.

    These globs are the simulator's own (``fnmatch``: ``*`` crosses ``/``, which suits
    image names such as ``quay.io/acme/web:1.2``), not fleet's.
    """
    words = exec_words(options)
    for pattern, behaviour in table.items():
        if fnmatch.fnmatchcase(name, pattern) or any(
            fnmatch.fnmatchcase(w, pattern) for w in words
        ):
            return behaviour
    return Behaviour()


class SimUnit:
    """One loaded unit on one machine: its file, its systemd state and its timers."""

    def __init__(
        self, name: str, unit_hash: str, raw: str, behaviour: Behaviour, default_delay: float
    ) -> None:
        self.name = name
        self.unit_hash = unit_hash
        self.raw = raw
        self.behaviour = behaviour
        self.start_delay = (
            behaviour.start_delay if behaviour.start_delay is not None else default_delay
        )
        self.launched = False  # the agent's cache: target loaded (False) or launched (True)
        self.active, self.sub = "inactive", "dead"
        self._due: float | None = None  # when the next transition happens
        self.running_at: float | None = None  # when it last became active/running
        self._turned = False  # its healthy_for has run out (so it is no longer "due")

    @property
    def state(self) -> tuple[str, str, str]:
        return ("loaded", self.active, self.sub)

    @property
    def due(self) -> float | None:
        """When something changes next: a state transition, or the workload's health."""
        turns = self.health_turns
        if turns is not None and not self._turned and (self._due is None or turns < self._due):
            return turns
        return self._due

    @property
    def health_turns(self) -> float | None:
        """When a ``healthy_for`` workload stops being healthy (None: not pending)."""
        limit = self.behaviour.healthy_for
        if limit is None or self.running_at is None:
            return None
        return self.running_at + limit

    def healthy(self, now: float) -> bool:
        """What its health checks would find: running, and its workload answering."""
        if self.running_at is None or self.behaviour.unhealthy:
            return False
        turns = self.health_turns
        return turns is None or now < turns

    def start(self, now: float) -> None:
        self.launched = True
        self.active, self.sub = "activating", "start-pre"
        self._due = now + self.start_delay

    def stop(self) -> None:
        self.launched = False
        self.active, self.sub = "inactive", "dead"
        self._due = None
        self.running_at = None

    def advance(self, now: float) -> None:
        """Apply every transition due by ``now``."""
        turns = self.health_turns
        self._turned = turns is not None and now >= turns
        while self._due is not None and now >= self._due:
            due = self._due
            if self.active == "activating" and self.behaviour.never_start:
                # systemd's Restart= loop: the start fails, it waits, it tries again.
                self.sub = "auto-restart" if self.sub == "start-pre" else "start-pre"
                self._due = due + max(self.start_delay, _MIN_CYCLE)
            elif self.active == "activating":
                self.active, self.sub = "active", "running"
                self.running_at = due
                crash = self.behaviour.crash_after
                self._due = due + crash if crash is not None else None
            elif self.active == "active":
                self.active, self.sub = "failed", "failed"
                self.running_at = None
                self._due = None
            else:
                self._due = None
