"""A UnitSpec rendered as fleet units, byte for byte as the Go Kaylee's rkt engine did.

Units the Go Kaylee started are adopted only if we would have written the very same unit
text (same fleet unit hash), so the option order, the Go ``%q`` quoting and even the
original's oddities (a double space when an app has no ``cmd``, a trailing space after a
plugin volume without options) are kept deliberately. kaylee-spec.md, "Fleet unit names
and conflicts" and "Rendering (rkt engine)", is the reference; the vectors in
``kaylee-go.jsonl`` decide where its prose is ambiguous. Everything here is pure.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kaylee_sync.errors import Issue, SpecError
from kaylee_sync.spec.codec import spec_hash6
from kaylee_sync.spec.model import UnitSpec, Volume
from kaylee_sync.unitfile import LINE_MAX, UnitOption, serialize, unit_hash

#: the original's --unit-prefix: our fleet units are named "<prefix>:<name>:…"
DEFAULT_UNIT_PREFIX = "k2"

DESIRED_STATE = "launched"

_AddOption = Callable[[str, str, str], None]
_Option = tuple[str, str, str]  # section, name, value

_MOUNTSERVICE = "systemd-mountservice-"
_PLUGINS = "/var/lib/kaylee/plugins/volumes"
_RKT = "/usr/bin/rkt"
_NOT_ID_CHAR = re.compile(r"[^a-zA-Z0-9_.-]")
_SIMPLE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote`` (``%q``): printable runes kept, everything else escaped.

    Go's ``IsPrint`` means letters, marks, numbers, punctuation, symbols and the ASCII
    space; Python's unicodedata may be a Unicode version apart, which only matters for
    characters assigned in between.
    """
    # The common case, printable ASCII with nothing to escape, is the string in quotes.
    # Rendering calls this for every env var and host volume of every unit, so the
    # per-character loop below costs seconds in a plan of 10,000 units (bench/repo_sync).
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    return quote_runes(s)


def quote_runes(s: str) -> str:
    """:func:`go_quote` the long way, rune by rune (what the fast path must agree with)."""
    out = ['"']
    for char in s:
        code = ord(char)
        if char in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[char])
        elif 0xD800 <= code <= 0xDFFF:
            # A lone surrogate cannot be a Go rune: its (surrogatepass) bytes are
            # invalid UTF-8, which Go quotes byte by byte.
            out.extend(f"\\x{b:02x}" for b in char.encode("utf-8", "surrogatepass"))
        elif char == " " or unicodedata.category(char)[0] in "LMNPS":
            out.append(char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


@dataclass(frozen=True)
class FleetUnit:
    """One fleet unit to submit: its name and its options (desired state: launched)."""

    name: str
    options: tuple[UnitOption, ...]

    @property
    def text(self) -> str:
        return serialize(self.options)

    @property
    def hash(self) -> str:
        return unit_hash(self.options)


@dataclass(frozen=True)
class UnitName:
    """The parts of ``<prefix>:<unit>:<hash6>:<slot>:<index>.service``."""

    prefix: str
    unit: str
    hash6: str
    slot: str
    index: int

    def __str__(self) -> str:
        return f"{self.prefix}:{self.unit}:{self.hash6}:{self.slot}:{self.index}.service"


# Unit names are validated to [A-Za-z0-9][A-Za-z0-9_.-]*, so they never contain ":".
# Hashes are Go's %x (lowercase); the index has no leading zero so str() round trips.
_NAME_TAIL = re.compile(
    r":(?P<unit>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<hash6>[0-9a-f]{6}):(?P<slot>[0-9a-f]{6})"
    r":(?P<index>[1-9][0-9]*)\.service"
)


def parse_unit_name(name: str, prefix: str = DEFAULT_UNIT_PREFIX) -> UnitName | None:
    """The parts of a fleet unit name of ours, or None for any other name."""
    if not name.startswith(prefix):
        return None
    match = _NAME_TAIL.fullmatch(name, len(prefix))
    if match is None:
        return None
    return UnitName(
        prefix=prefix,
        unit=match["unit"],
        hash6=match["hash6"],
        slot=match["slot"],
        index=int(match["index"]),
    )


def slot_ids(unit: str, hash6: str, count: int) -> tuple[str, ...]:
    """``count`` distinct 6-hex slot ids, derived from the unit name and spec hash.

    The original drew them at random; deriving them makes rendering a pure function, so
    ``plan`` and the daemon agree on names. A collision (1 in 16M per pair) is resolved
    by re-deriving with an attempt counter, which is just as deterministic.
    """
    ids: dict[str, None] = {}  # insertion-ordered set
    for k in range(count):
        attempt = 0
        while True:
            seed = f"{unit}\0{hash6}\0{k}" + (f"\0{attempt}" if attempt else "")
            slot = hashlib.sha1(seed.encode("utf-8", "surrogatepass")).hexdigest()[:6]
            if slot not in ids:
                break
            attempt += 1
        ids[slot] = None
    return tuple(ids)


def conflicts_for(spec: UnitSpec, prefix: str, hash6: str, slot: str) -> tuple[str, ...]:
    """X-Fleet ``Conflicts`` globs: one instance per slot per host, plus spec conflicts."""
    if spec.is_replica_unit:
        own = f"{prefix}:{spec.name}:{hash6}:{slot}:*.service"
    else:
        # A non-replica unit conflicts with every version of itself (it is replaced whole).
        own = f"{prefix}:{spec.name}:*.service"
    return (own, *(f"{prefix}:{c}:*.service" for c in spec.conflicts))


def render_units(
    spec: UnitSpec, prefix: str = DEFAULT_UNIT_PREFIX, generation: int = 0
) -> tuple[FleetUnit, ...]:
    """Every fleet unit of the spec, instance 1 first."""
    hash6 = spec_hash6(spec, generation)
    slots = slot_ids(spec.name, hash6, spec.slots)
    return tuple(
        _render_unit(spec, prefix, hash6, slots, index)
        for index in range(1, spec.instance_count + 1)
    )


def _render_unit(
    spec: UnitSpec, prefix: str, hash6: str, slots: Sequence[str], index: int
) -> FleetUnit:
    """Instance ``index`` of the spec (``render_units``' loop body)."""
    slot = slots[index % len(slots)]
    name = str(UnitName(prefix, spec.name, hash6, slot, index))
    return FleetUnit(name, render_options(spec, name, conflicts_for(spec, prefix, hash6, slot)))


def kaylee_id(unit_name: str) -> str:
    """The unit's id in its ``KAYLEE_ID`` environment and rkt uuid file: the name with
    every character that is not ``[a-zA-Z0-9_.-]`` as ``_``, without ``.service``."""
    return _NOT_ID_CHAR.sub("_", unit_name).removesuffix(".service")


def render_options(
    spec: UnitSpec, unit_name: str, conflicts: Sequence[str]
) -> tuple[UnitOption, ...]:
    """The rkt engine's options for one fleet unit, in the original's order."""
    return tuple(UnitOption(*option) for option in _options(spec, unit_name, conflicts))


def _options(spec: UnitSpec, unit_name: str, conflicts: Sequence[str]) -> list[_Option]:
    """``render_options`` as (section, name, value) triples, cheaper to build than
    ``UnitOption``s: the load-time line check needs only the text (``render_issues``)."""
    unit_id = kaylee_id(unit_name)
    uuid_file = f"/var/run/kaylee_{unit_id}"
    options: list[_Option] = []

    def add(section: str, name: str, value: str) -> None:
        options.append((section, name, value))

    add("Unit", "Requires", "flanneld.service")
    add("Unit", "After", "flanneld.service")
    for env_file in spec.env_files:
        add("Service", "EnvironmentFile", env_file)
    for env in spec.env:
        add("Service", "Environment", go_quote(f"{env.name}={env.value}"))
    add("Service", "Environment", f"KAYLEE_ID={unit_id}")
    add("Service", "TimeoutStartSec", "0")
    add("Service", "KillMode", "mixed")

    rkt_args: list[str] = []
    for k, volume in enumerate(spec.volumes):
        rkt_args.extend(_volume(k, volume, add))
    if spec.net:
        rkt_args.append(f"--net={spec.net}")
    rkt_args += [
        "--insecure-options=image,ondisk",
        "--inherit-env",
        f"--uuid-file-save={uuid_file}",
    ]
    rkt_args += spec.args
    for app in spec.apps:
        add("Service", "ExecStartPre", f"{_RKT} fetch --insecure-options=image,ondisk {app.image}")
        exec_opt = f"--exec={go_quote(app.cmd)}" if app.cmd else ""
        # Without cmd the original still writes both spaces around the empty option.
        rkt_args.append(f"{app.image} {exec_opt} -- {' '.join(app.args)} ---")

    add("Service", "ExecStart", f"{_RKT} run {' '.join(rkt_args)}")
    add("Service", "ExecStop", f"-{_RKT} stop --uuid-file={uuid_file}")
    add("Service", "ExecStopPost", f"-{_RKT} rm --uuid-file={uuid_file}")
    add("Service", "ExecStopPost", f"{_RKT} gc")
    add("Service", "ExecStopPost", f"{_RKT} image gc")
    add("Service", "Restart", "always")
    add("Service", "RestartSec", "30")

    for machine in spec.machine:
        add("X-Fleet", "MachineMetadata", machine)
    if spec.machine_id:
        add("X-Fleet", "MachineID", spec.machine_id)
    if spec.global_:
        add("X-Fleet", "Global", "true")
    for conflict in conflicts:
        add("X-Fleet", "Conflicts", conflict)
    return options


def _volume(k: int, volume: Volume, add: _AddOption) -> list[str]:
    """The rkt arguments for volume number k, adding its [Unit]/[Service] options.

    The ``<id>`` in mount-service and plugin lines is the volume's own id.
    """
    name = f"kaylee-volume-{k}"
    if not volume.driver:  # a host path; only here are source and target Go-quoted
        return [
            f"--volume {name},kind=host,source={go_quote(volume.source)}",
            f"--mount volume={name},target={go_quote(volume.path)}",
        ]
    if volume.driver.startswith(_MOUNTSERVICE):
        service = volume.driver.removeprefix(_MOUNTSERVICE)
        add("Unit", "Wants", f"{service}@{volume.id}.service")
        add(
            "Service", "ExecStartPre", f"/usr/bin/systemctl is-active {service}@{volume.id}.service"
        )
        mount_dir = f"/mnt/{service}/{volume.id}"
    else:
        # With no options this leaves a trailing space, which fleet's agents trim when
        # they re-parse the unit (so they see another hash); kept for byte identity.
        add("Service", "ExecStartPre", f"{_PLUGINS}/{volume.driver} {volume.id} {volume.options}")
        add("Service", "ExecStopPost", f"{_PLUGINS}/{volume.driver} -u {volume.id}")
        mount_dir = f"/mnt/{volume.driver}/{volume.id}"
    return [
        f"--volume {name},kind=host,source={mount_dir}/{volume.source}",
        f"--mount volume={name},target={volume.path}",
    ]


# Which unit file field a rendered option comes from, for error messages.
_OPTION_FIELDS = {
    "EnvironmentFile": "envFiles",
    "Environment": "env",
    "ExecStart": "apps",
    "ExecStartPre": "apps",
    "ExecStopPost": "volumes",
    "MachineMetadata": "machine",
    "Conflicts": "conflicts",
}


def render_issues(
    spec: UnitSpec, filename: str, prefix: str = DEFAULT_UNIT_PREFIX, *, hash6: str | None = None
) -> list[Issue]:
    """Problems visible only once rendered: a unit file line fleet would refuse.

    go-systemd rejects (and systemd truncates) lines of LINE_MAX bytes or more; the
    ``ExecStart`` line grows with every arg, volume and app, so no single field's limit
    can prevent it. The last instance has the longest name, so it is the one checked.
    ``hash6``: ``spec_hash6(spec)`` when the caller has it (it costs the spec's JSON).
    """
    # Only that instance is rendered: every file of a repository is checked on load,
    # and rendering all replicas of 10,000 units to keep one was most of the cost.
    if hash6 is None:
        hash6 = spec_hash6(spec)
    slots = slot_ids(spec.name, hash6, spec.slots)
    index = spec.instance_count  # what _render_unit does, without building a FleetUnit
    slot = slots[index % len(slots)]
    unit_name = str(UnitName(prefix, spec.name, hash6, slot, index))
    issues = []
    for _, name, value in _options(spec, unit_name, conflicts_for(spec, prefix, hash6, slot)):
        # An ASCII line's size is its length; only other lines need encoding.
        if len(name) + len(value) + 1 < LINE_MAX and value.isascii() and name.isascii():
            continue
        size = len(f"{name}={value}".encode("utf-8", "surrogatepass"))
        if size >= LINE_MAX:
            issues.append(
                Issue(
                    filename,
                    0,
                    _OPTION_FIELDS.get(name, "name"),
                    f"renders a {name}= line of {size} bytes; fleet refuses lines of "
                    f"{LINE_MAX} bytes or more (split the unit or shorten its arguments)",
                )
            )
    return issues


def check_renderable(spec: UnitSpec, filename: str, prefix: str = DEFAULT_UNIT_PREFIX) -> UnitSpec:
    """``spec`` itself, or SpecError if it cannot be rendered into a unit fleet accepts."""
    issues = render_issues(spec, filename, prefix)
    if issues:
        raise SpecError(issues)
    return spec
