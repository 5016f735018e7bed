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
    """How a unit behaves once started. ``None`` start delay = the cluster's default."""

    never_start: bool = False
    crash_after: float | None = None
    start_delay: float | None = None

    @classmethod
    def parse(cls, text: str) -> Behaviour:
        """``"never_start"``, ``"crash_after=3"``, ``"start_delay=0.5,crash_after=2"``."""
        never, crash, delay = False, None, None
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = item.partition("=")
            if key == "never_start" and not value:
                never = True
            elif key == "crash_after" and value:
                crash = float(value)
            elif key == "start_delay" and value:
                delay = float(value)
            else:
                raise ValueError(f"unknown unit behaviour {item!r}")
        return cls(never, crash, delay)


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

    @property
    def state(self) -> tuple[str, str, str]:
        return ("loaded", self.active, self.sub)

    @property
    def due(self) -> float | None:
        return self._due

    def start(self, now: float) -> None:
        self.launched = True
        self.active, self.sub = "activating", "start-pre"
        self._due = now + self.start_delay

    def stop(self) -> None:
        self.launched = False
        self.active, self.sub = "inactive", "dead"
        self._due = None

    def advance(self, now: float) -> None:
        """Apply every transition due by ``now``."""
        while self._due is not None and now >= self._due:
            due = self._due
            if self.active == "activating" and self.behaviour.never_start:
                # systemd's Restart= loop: the start fails, it waits, it tries again.
                self.sub = "auto-restart" if self.sub == "start-pre" else "start-pre"
                self._due = due + max(self.start_delay, _MIN_CYCLE)
            elif self.active == "activating":
                self.active, self.sub = "active", "running"
                crash = self.behaviour.crash_after
                self._due = due + crash if crash is not None else None
            elif self.active == "active":
                self.active, self.sub = "failed", "failed"
                self._due = None
            else:
                self._due = None
