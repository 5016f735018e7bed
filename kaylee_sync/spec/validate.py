"""Validation of unit specs: the shape of raw data, then the rules on the built model.

Unit files are untrusted input whose values end up inside systemd unit files, so the
rules here guard two things: that the spec means what the team decided (kaylee-spec.md,
"Ours — validation") and that no value can change the unit text around it (newlines,
control characters, trailing backslashes, whitespace where fleet trims).

Two passes, both collecting every problem rather than stopping at the first:
``check_shape`` checks keys and types of plain data (from YAML or JSON) and returns a
cleaned copy fit for ``spec_from_dict``; ``validate_spec`` checks the values of a built
``UnitSpec``. ``strict=False`` relaxes only the placement policy (global / machineId /
replicas combinations) for entries the Go Kaylee already wrote to etcd: those must be
adopted as they are, never rejected.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from typing import Any

from kaylee_sync.errors import Issue
from kaylee_sync.spec import schema
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.spec.schema import Field

_BAD_CHAR = re.compile("[\x00-\x08\x0a-\x1f]|[\ud800-\udfff]")
_PARENT = re.compile(r"(?:\.[^.\[]*|\[\d+\])$")
_SYSTEMD_MOUNT = "systemd-mountservice-"


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled once: ``re.fullmatch(str, ...)`` looks it up in re's cache on
    every call, which adds up over the dozens of checked strings of 10,000 files."""
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        compiled = _PATTERNS[pattern] = re.compile(pattern)
    return compiled


class Opaque:
    """A YAML scalar that is neither string, number, boolean nor null (e.g. a date)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


def describe(value: Any) -> str:
    """Name a raw value's type the way a user would, with a hint for YAML's surprises."""
    if isinstance(value, bool):
        return "a boolean (yes/no/on/off/true/false are booleans in YAML; quote the value)"
    if isinstance(value, int | float):
        return "a number (quote the value)"
    if isinstance(value, Opaque):
        return f"a {value.kind} (quote the value)"
    if value is None:
        return "nothing (an empty value); give a value or remove the key"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "a mapping"


def did_you_mean(key: str, known: Collection[str]) -> str:
    """A "did you mean 'x'?" suffix for an unknown key, or ""."""
    lowered = {k.lower(): k for k in known}
    match = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean '{lowered[match[0]]}'?" if match else ""


class _Shape:
    """check_shape's state: issues found and field paths already reported as wrong."""

    def __init__(self, filename: str, lines: Mapping[str, int]) -> None:
        self.filename, self.lines = filename, lines
        self.issues: list[Issue] = []
        self.bad: set[str] = set()

    def fail(self, path: str, reason: str) -> None:
        self.issues.append(Issue(self.filename, line_of(self.lines, path), path, reason))
        self.bad.add(path)

    def mapping(
        self, data: Mapping[str, Any], fields: Mapping[str, Field], path: str
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        # A plain dict (from YAML) has no attributes; getattr's miss raises and catches.
        duplicates = () if type(data) is dict else getattr(data, "duplicates", ())
        for key in duplicates:
            self.fail(prefix + key, f"duplicate key '{key}'")
        for key, value in data.items():
            f = fields.get(key)
            if f is None:
                self.fail(prefix + key, f"unknown field '{key}'{did_you_mean(key, fields)}")
            else:
                out[key] = self.value(value, f, prefix + key)
        for key, f in fields.items():
            if f.required and key not in data:
                self.fail(prefix + key, f"'{key}' is required")
        return out

    def value(self, value: Any, f: Field, path: str) -> Any:
        kind = f.kind
        # Fast paths for what nearly every file holds: a string, a list of strings.
        if kind == "string" and isinstance(value, str):
            return value
        if kind == "strings" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if isinstance(value, _Reported):
            self.bad.add(path)
        elif f.kind == "string":
            if isinstance(value, str):
                return value
            self.fail(path, f"expected a string, got {describe(value)}")
        elif f.kind == "integer":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            self.fail(path, f"expected an integer, got {describe(value).split(' (')[0]}")
        elif f.kind == "boolean":
            if isinstance(value, bool):
                return value
            self.fail(path, f"expected a boolean (true or false), got {describe(value)}")
        elif f.kind == "duration":
            if isinstance(value, str):
                return value
            self.fail(path, f"expected a duration such as '30s' or '5m', got {describe(value)}")
        elif f.kind == "object":
            assert f.item is not None
            return self.item(value, f.item, path)
        elif not isinstance(value, list):
            what = "strings" if f.kind == "strings" else "mappings"
            self.fail(path, f"expected a list of {what}, got {describe(value)}")
        elif f.kind == "strings":
            return [self.value(v, _STRING_ITEM, f"{path}[{i}]") for i, v in enumerate(value)]
        else:
            assert f.item is not None
            return [self.item(v, f.item, f"{path}[{i}]") for i, v in enumerate(value)]
        return _ZERO[f.kind]

    def item(self, value: Any, fields: Mapping[str, Field], path: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return self.mapping(value, fields, path)
        if isinstance(value, _Reported):
            self.bad.add(path)
        else:
            self.fail(path, f"expected a mapping, got {describe(value)}")
        return {}


_STRING_ITEM = Field("string", "an item of a list of strings")
_ZERO: dict[str, Any] = {
    "string": "",
    "integer": 0,
    "boolean": False,
    "strings": [],
    "objects": [],
    "object": {},
    "duration": "",
}


class _Reported:
    """Stands for a value the loader already reported (bad tag, merge key...)."""


REPORTED = _Reported()


def check_shape(
    data: Any,
    filename: str,
    lines: Mapping[str, int],
    fields: Mapping[str, Field] = schema.UNIT_FIELDS,
) -> tuple[dict[str, Any], list[Issue], frozenset[str]]:
    """Check keys and types; return (clean data, issues, field paths found wrong).

    Wrong values are replaced by their type's zero value (lists keep their length so that
    later issues still name the right index); ``validate_spec`` skips the paths returned.
    ``fields``: the spec's (an etcd entry), or ``schema.FILE_FIELDS`` (a unit file, which
    may also hold the rollout policy).
    """
    shape = _Shape(filename, lines)
    if not isinstance(data, dict):
        shape.fail("", f"expected a mapping of fields at the top level, got {describe(data)}")
        return {}, shape.issues, frozenset(shape.bad)
    clean = shape.mapping(data, fields, "")
    return clean, shape.issues, frozenset(shape.bad)


def line_of(lines: Mapping[str, int], path: str) -> int:
    """The line of ``path``, else of its nearest recorded parent, else 0."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return 0
        path = _PARENT.sub("", path) if _PARENT.search(path) else ""


def validate_spec(
    spec: UnitSpec,
    filename: str,
    lines: Mapping[str, int] | None = None,
    *,
    strict: bool = True,
    skip: Collection[str] = frozenset(),
) -> list[Issue]:
    """Every rule ``spec`` breaks, as issues sorted by line; ``[]`` when it is valid.

    ``lines`` maps field paths ("apps[0].image") to 1-based lines; a path missing from it
    takes its nearest parent's line, else 0. ``strict=False`` leaves out the placement
    policy (for entries the Go Kaylee wrote). ``skip``: paths the caller already reported.
    """
    rules = _Rules()
    rules.run(spec, strict, skip)

    def reported(path: str) -> bool:
        return any(path == s or path.startswith((s + ".", s + "[")) for s in skip)

    lines = lines or {}
    issues = {Issue(filename, line_of(lines, p), p, r) for p, r in rules.found if not reported(p)}
    return sorted(issues)


class _Rules:
    """The value rules, each appending (field path, reason) to ``found``."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        self.found.append((path, reason))

    def text(self, path: str, value: str, pattern: str | None = None, why: str = "") -> bool:
        """Character-level checks shared by every string; then an optional pattern."""
        # Printable ASCII (what nearly every value is) holds none of _BAD_CHAR's characters.
        bad = None if value.isascii() and value.isprintable() else _BAD_CHAR.search(value)
        if bad:
            c = bad.group(0)
            what = "a lone surrogate" if "\ud800" <= c <= "\udfff" else f"control character {c!r}"
            self.add(path, f"must not contain {what} (it would break the unit file)")
            return False
        if pattern is not None and not _compiled(pattern).fullmatch(value):
            self.add(path, why)
            return False
        return True

    def line_end(self, path: str, value: str) -> bool:
        """Rules for a value that ends a unit-file line; True when it passes."""
        if not self.text(path, value):
            return False
        if value != value.strip():
            self.add(path, "must not start or end with whitespace (fleet trims unit lines)")
            return False
        if value.endswith("\\"):
            self.add(
                path, "must not end with a backslash (systemd reads it as a line continuation)"
            )
            return False
        return True

    def run(self, spec: UnitSpec, strict: bool, skip: Collection[str]) -> None:
        if not spec.name:
            self.add("name", "'name' is required")
        else:
            self.text(
                "name",
                spec.name,
                schema.NAME,
                "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter "
                "or digit (it becomes an etcd key and a systemd unit name)",
            )
        self.counts(spec, strict, skip)
        if spec.engine not in ("", "rkt"):
            self.add("engine", f"unknown engine '{spec.engine}'; the only engine is 'rkt'")
        for i, path in enumerate(spec.env_files):
            p = f"envFiles[{i}]"
            if not path.startswith("/"):
                self.add(p, "must be an absolute path")
            self.line_end(p, path)
        for i, env in enumerate(spec.env):
            self.text(
                f"env[{i}].name",
                env.name,
                schema.ENV_NAME,
                "must be a shell identifier (letters, digits, '_'; not starting with a digit)",
            )
            self.text(f"env[{i}].value", env.value)
        for i, vol in enumerate(spec.volumes):
            self.volume(f"volumes[{i}]", vol.id, vol.driver, vol.source, vol.path, vol.options)
        self.text("net", spec.net, schema.NO_SPACE, "must not contain whitespace")
        if not spec.apps:
            self.add("apps", "at least one app is required")
        for i, app in enumerate(spec.apps):
            p = f"apps[{i}]"
            if not app.image:
                self.add(f"{p}.image", "'image' is required and must not be empty")
            elif self.line_end(f"{p}.image", app.image):
                self.text(
                    f"{p}.image",
                    app.image,
                    schema.NO_SPACE,
                    "must not contain whitespace (it is one argument of rkt)",
                )
            self.text(f"{p}.cmd", app.cmd)
            for j, arg in enumerate(app.args):
                self.text(f"{p}.args[{j}]", arg)
        for i, arg in enumerate(spec.args):
            self.text(f"args[{i}]", arg)
        for i, m in enumerate(spec.machine):
            if self.text(
                f"machine[{i}]",
                m,
                schema.MACHINE_KV,
                "must be 'key=value' without whitespace or '\"'",
            ):
                self.line_end(f"machine[{i}]", m)
        if spec.machine_id:
            self.text(
                "machineId",
                spec.machine_id,
                schema.MACHINE_ID,
                "must be a machine ID: hexadecimal digits as in /etc/machine-id",
            )
        for i, c in enumerate(spec.conflicts):
            self.text(
                f"conflicts[{i}]",
                c,
                schema.CONFLICT,
                "must be a non-empty unit name or glob without whitespace, ':' or '/'",
            )

    def counts(self, spec: UnitSpec, strict: bool, skip: Collection[str]) -> None:
        r, m = spec.replicas, spec.max_replicas_per_host
        if not 0 <= r <= schema.MAX_REPLICAS:
            self.add("replicas", f"must be between 0 and {schema.MAX_REPLICAS}, got {r}")
        # maxReplicasPerHost: 0 is the same as absent (Go's omitempty) and means "replicas".
        # Cross-field rules are skipped when the other field was already reported wrong.
        if m < 0:
            self.add("maxReplicasPerHost", f"must be at least 1, got {m}")
        elif m and r == 0 and "replicas" not in skip:
            self.add("maxReplicasPerHost", "only applies to replica units; set 'replicas' too")
        elif m > r > 0 and "replicas" not in skip:
            self.add("maxReplicasPerHost", f"must not exceed replicas ({r}), got {m}")
        if not strict:
            return
        if spec.global_ and r > 1 and "replicas" not in skip:
            self.add("global", f"a global unit runs once per machine; it cannot have replicas: {r}")
        if spec.global_ and spec.machine_id:
            self.add("global", "a global unit cannot also be pinned with 'machineId'")
        if spec.machine_id and r > 1 and "replicas" not in skip:
            self.add("machineId", f"a unit pinned to one machine cannot have replicas: {r}")

    def volume(self, p: str, vid: str, driver: str, source: str, path: str, options: str) -> None:
        comma = "must not contain ',' (it separates rkt volume options)"
        if not path:
            self.add(f"{p}.path", "'path' is required")
        elif not path.startswith("/"):
            self.add(f"{p}.path", "must be an absolute path")
        elif (
            self.text(f"{p}.path", path, schema.VOLUME_PATH, comma)
            and driver
            and re.search(r"\s", path)
        ):
            # With a driver, path and source are spliced into rkt's arguments unquoted.
            self.add(f"{p}.path", "must not contain whitespace when a driver is set")
        if driver:
            self.text(
                f"{p}.driver",
                driver,
                schema.DRIVER,
                "must be letters, digits, '_', '.', '@' or '-', starting with a letter or "
                "digit (it names a file and a systemd unit)",
            )
            if driver == _SYSTEMD_MOUNT:
                self.add(f"{p}.driver", f"names no service after '{_SYSTEMD_MOUNT}'")
            if not vid:
                self.add(f"{p}.id", "'id' is required when a driver is set")
            # The source lands under /mnt/<driver>/<id>/, unquoted: no escaping that directory.
            if (
                source
                and self.text(f"{p}.source", source, schema.VOLUME_SOURCE, comma)
                and (re.search(r"\s", source) or ".." in source.split("/"))
            ):
                self.add(f"{p}.source", "must not contain whitespace or '..'")
        elif not source:
            self.add(f"{p}.source", "'source' is required for a host volume (no driver)")
        elif self.text(
            f"{p}.source", source, schema.VOLUME_SOURCE, comma
        ) and not source.startswith("/"):
            self.add(f"{p}.source", "must be an absolute host path")
        if vid:
            self.text(
                f"{p}.id",
                vid,
                schema.VOLUME_ID,
                "must be letters, digits, '_', '.', '@' or '-', not starting with '-' "
                "and not '.' or '..' (it names a file and a systemd unit)",
            )
        if options:
            self.line_end(f"{p}.options", options)
