"""A unit's ``[X-Fleet]`` requirements, read the way fleet reads them.

The simulator must place units exactly where fleet would, so the quirks matter: the
quoted multi-value form, ``%n %N %p %i`` substitution, ``k=v`` pairs that are dropped
unless they split into exactly two non-empty halves, "last ``Global`` wins", and
``Conflicts`` globs with Go ``path.Match`` semantics (``*`` never crosses ``/``; ``]`` and
``-`` must be escaped inside a class; a malformed pattern matches nothing). Python's
``fnmatch`` gets several of these wrong, hence :func:`go_path_match`.

Pure functions over data; no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


class OptionLike(Protocol):
    """Anything shaped like ``kaylee_sync.unitfile.UnitOption``."""

    @property
    def section(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> str: ...


# fleet accepts deprecated spellings of most keys; each maps to its modern name.
_ALIASES = {
    "MachineID": "MachineID",
    "X-ConditionMachineID": "MachineID",
    "X-ConditionMachineBootID": "MachineBootID",
    "MachineOf": "MachineOf",
    "X-ConditionMachineOf": "MachineOf",
    "Conflicts": "Conflicts",
    "X-Conflicts": "Conflicts",
    "MachineMetadata": "MachineMetadata",
    "X-ConditionMachineMetadata": "MachineMetadata",
    "Global": "Global",
    "Replaces": "Replaces",
}
_TRUTHY = frozenset({"true", "yes", "1", "on", "t"})


def split_multivalue(value: str) -> list[str]:
    """fleet's ``parseMultivalueLine``: ``"a=b" "c=d"`` → two values, else the line itself.

    Only a space (not a tab) separates values, and only outside quotes.
    """
    if not (value.startswith('"') and value.endswith('"')):
        return [value]
    values: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == " " and not quoted:
            values.append("".join(current))
            current = []
        else:
            current.append(ch)
    values.append("".join(current))
    return values


def unit_printf(text: str, unit_name: str) -> str:
    """systemd-style specifiers as fleet expands them (sequential replaces, like Go's)."""
    dot = unit_name.rfind(".")
    if dot == -1:
        return text  # fleet gets no UnitNameInfo and substitutes nothing
    name = unit_name[:dot]
    at = name.find("@")
    prefix, instance = (name, "") if at == -1 else (name[:at], name[at + 1 :])
    out = text.replace("%n", unit_name).replace("%N", name)
    return out.replace("%p", prefix).replace("%i", instance)


@functools.lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    """Translate a Go ``path.Match`` pattern to a regex; None when Go calls it malformed."""
    out: list[str] = []
    i, n = 0, len(pattern)

    def escaped(j: int) -> tuple[str, int] | None:
        # Go's getEsc: '-' and ']' must be escaped inside a class; '\' takes the next char.
        if j >= n or pattern[j] in "-]":
            return None
        if pattern[j] == "\\":
            return (pattern[j + 1], j + 2) if j + 1 < n else None
        return pattern[j], j + 1

    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "\\":
            if i + 1 >= n:
                return None
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif ch == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            i += negate
            ranges: list[str] = []
            while True:
                if i < n and pattern[i] == "]" and ranges:
                    i += 1
                    break
                lo = escaped(i)
                if lo is None:
                    return None
                lo_ch, i = lo
                hi_ch = lo_ch
                if i < n and pattern[i] == "-":
                    hi = escaped(i + 1)
                    if hi is None:
                        return None
                    hi_ch, i = hi
                    if hi_ch < lo_ch:
                        return None
                ranges.append(f"{re.escape(lo_ch)}-{re.escape(hi_ch)}")
            # Unlike '?', a class may match '/': Go does not exclude it there.
            out.append(("[^" if negate else "[") + "".join(ranges) + "]")
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def go_path_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match(pattern, name)``, with a malformed pattern matching nothing."""
    regex = _glob_regex(pattern)
    return regex is not None and regex.fullmatch(name) is not None


@dataclass(frozen=True)
class Requirements:
    """What ``[X-Fleet]`` asks of the machine a unit runs on (after substitution)."""

    machine_id: str | None = None
    metadata: Mapping[str, frozenset[str]] = field(default_factory=dict)
    peers: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    is_global: bool = False

    @classmethod
    def from_options(cls, unit_name: str, options: Iterable[OptionLike]) -> Requirements:
        values: dict[str, list[str]] = {}
        for opt in options:
            if opt.section != "X-Fleet":
                continue
            key = _ALIASES.get(opt.name, opt.name)
            for v in split_multivalue(opt.value):
                values.setdefault(key, []).append(unit_printf(v, unit_name))
        # fleet prefers MachineID, then the deprecated spellings (MachineBootID last).
        ids = values.get("MachineID") or values.get("MachineBootID") or []
        metadata: dict[str, set[str]] = {}
        for pair in values.get("MachineMetadata", []):
            parts = pair.split("=")
            if len(parts) == 2 and parts[0] and parts[1]:
                metadata.setdefault(parts[0], set()).add(parts[1])
        glob = values.get("Global", [])
        return cls(
            machine_id=ids[0] if ids else None,
            metadata={k: frozenset(v) for k, v in metadata.items()},
            peers=tuple(values.get("MachineOf", [])),
            conflicts=tuple(w for v in values.get("Conflicts", []) for w in v.split()),
            replaces=tuple(values.get("Replaces", [])),
            is_global=bool(glob) and glob[-1].lower() in _TRUTHY,
        )

    def invalid_reason(self) -> str | None:
        """Why fleet's API would refuse these requirements, or None if it accepts them."""
        for peer in self.peers:
            for pattern in (*self.conflicts, *self.replaces):
                if go_path_match(pattern, peer):
                    return f"unresolvable requirements: peer {peer!r} matches {pattern!r}"
        has_id = self.machine_id is not None
        checks = [
            (has_id and bool(self.peers), "MachineID cannot be used with Peers"),
            (has_id and bool(self.conflicts), "MachineID cannot be used with Conflicts"),
            (has_id and self.is_global, "MachineID cannot be used with Global"),
            (has_id and bool(self.replaces), "MachineID cannot be used with Replaces"),
            (self.is_global and bool(self.peers), "Global cannot be used with Peers"),
            (self.is_global and bool(self.replaces), "Global cannot be used with Replaces"),
            (bool(self.conflicts and self.replaces), "Conflicts cannot be used with Replaces"),
        ]
        return next((msg for bad, msg in checks if bad), None)


def has_metadata(machine_metadata: Mapping[str, str], wanted: Mapping[str, frozenset[str]]) -> bool:
    """Values of one key are OR-ed, different keys AND-ed (fleet's ``HasMetadata``)."""
    return all(machine_metadata.get(k) in vs for k, vs in wanted.items())
