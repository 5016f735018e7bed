"""fleet driven through its own registry: fleet's keys in etcd's v2 API.

This is how the Go Kaylee drove fleet, and it needs nothing but etcd. It must write
exactly what fleetctl writes (key layout, JSON shapes, byte for byte where fleet compares
or hashes), or fleet's engine and agents would not recognise our units, and it must
write as little as possible: each write wakes every fleetd in the cluster, so unchanged
keys are never rewritten. The layout is documented in fleet-registry.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kaylee_sync.errors import FleetNotFound
from kaylee_sync.fleet.etcd2 import AlreadyExists, Etcd2Client, Node
from kaylee_sync.fleet.model import INACTIVE, LAUNCHED, LOADED, FleetUnit, Machine, UnitState
from kaylee_sync.fleet.model import check_state as _check_state
from kaylee_sync.fleet.throttle import Throttle
from kaylee_sync.unitfile import UnitFileError, UnitOption, parse, serialize, unit_hash

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PREFIX = "/_coreos.com/fleet/"
_CACHE_LIMIT = 10_000  # unit texts kept by hash; they never change, only the count grows
_BULK_UNIT_FETCH = 4  # more missing texts than this: one recursive get of unit/


def go_json_string(s: str) -> str:
    """``s`` as Go's encoding/json writes a string (HTML-safe escapes, lowercase hex)."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:  # not valid UTF-8: Go writes the replacement char
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def unit_object_json(raw: str) -> str:
    """The value of ``unit/<hash>``: Go's json.Marshal of ``unitModel{Raw}``."""
    return '{"Raw":' + go_json_string(raw) + "}"


def job_object_json(name: str, hash_hex: str) -> str:
    """The value of ``job/<name>/object``: Go's json.Marshal of ``jobModel{Name, UnitHash}``.

    UnitHash is a ``[20]byte`` array, which Go encodes as an array of numbers.
    """
    numbers = ",".join(str(b) for b in bytes.fromhex(hash_hex))
    return '{"Name":' + go_json_string(name) + ',"UnitHash":[' + numbers + "]}"


def job_state(target: str, heartbeat: str, has_state: bool) -> str:
    """fleetctl's job state: inactive unless scheduled with a reported state; launched
    once the agent's heartbeat names the target machine."""
    if not target or not has_state:
        return INACTIVE
    return LAUNCHED if heartbeat == target else LOADED


def _children(node: Node | None) -> dict[str, Node]:
    return {child.name: child for child in node.nodes} if node else {}


def _json(value: str | None) -> Any:
    try:
        return json.loads(value or "")
    except ValueError:
        return None


class RegistryDriver:
    """A FleetClient over fleet's registry keys under ``prefix`` (fleet's default)."""

    def __init__(
        self, client: Etcd2Client, prefix: str = DEFAULT_PREFIX, throttle: Throttle | None = None
    ) -> None:
        self.client = client
        self.prefix = "/" + prefix.strip("/") + "/"
        self.throttle = throttle or Throttle()
        self._texts: dict[str, tuple[UnitOption, ...]] = {}

    def __repr__(self) -> str:
        return f"RegistryDriver({self.client!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        self.client.close()

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _get(self, key: str, recursive: bool = False) -> Node | None:
        return self.throttle.call(
            f"get {key}", lambda: self.client.get(key, recursive=recursive, sorted=True)
        )

    # -- reading --------------------------------------------------------------------

    def units(self) -> list[FleetUnit]:
        jobs = self._get(self._key("job"), recursive=True)
        return self._units(jobs, self._get(self._key("states"), recursive=True))

    def snapshot(self) -> tuple[list[FleetUnit], list[UnitState]]:
        # states/ is read once for both: it is a third of what a pass reads.
        jobs = self._get(self._key("job"), recursive=True)
        states = self._get(self._key("states"), recursive=True)
        return self._units(jobs, states), self._unit_states(states)

    def _units(self, jobs: Node | None, states: Node | None) -> list[FleetUnit]:
        reported = {
            (unit.name, machine.name)
            for unit in _children(states).values()
            for machine in unit.nodes
        }
        dirs = sorted(_children(jobs).items())
        objects = {name: _json(_children(d).get("object", Node("")).value) for name, d in dirs}
        self._load_texts({h for obj in objects.values() if (h := _hash_of(obj))})
        out = []
        for name, d in dirs:
            unit = self._unit(name, d, objects[name], lambda n, m: (n, m) in reported)
            if unit is not None:
                out.append(unit)
        return out

    def unit(self, name: str) -> FleetUnit | None:
        d = self._get(self._key("job", name), recursive=True)
        if d is None:
            return None
        obj = _json(_children(d).get("object", Node("")).value)
        hash_hex = _hash_of(obj)
        if hash_hex:
            self._load_texts({hash_hex})
        target = _children(d).get("target", Node("")).value or ""
        has_state = bool(target) and self._get(self._key("states", name, target)) is not None
        return self._unit(name, d, obj, lambda n, m: has_state)

    def _unit(
        self, name: str, d: Node, obj: Any, reported: Callable[[str, str], bool]
    ) -> FleetUnit | None:
        hash_hex = _hash_of(obj)
        options = self._texts.get(hash_hex) if hash_hex else None
        if options is None:
            if hash_hex:  # fleet skips such a job too (getUnitFromObjectNode)
                log.warning("fleet job %s refers to unit %s, which is missing", name, hash_hex)
            return None
        values = {key: child.value or "" for key, child in _children(d).items()}
        target = values.get("target", "")
        return FleetUnit(
            name=name,
            options=options,
            desired_state=values.get("target-state") or INACTIVE,
            current_state=job_state(target, values.get("job-state", ""), reported(name, target)),
            machine_id=target,
        )

    def _load_texts(self, hashes: set[str]) -> None:
        missing = hashes - self._texts.keys()
        if not missing:
            return
        if len(self._texts) + len(missing) > _CACHE_LIMIT:
            self._texts.clear()
        if len(missing) > _BULK_UNIT_FETCH:
            nodes = list(_children(self._get(self._key("unit"), recursive=True)).values())
        else:
            nodes = [n for h in missing if (n := self._get(self._key("unit", h))) is not None]
        for node in nodes:
            if node.name not in missing:
                continue
            obj = _json(node.value)
            raw = obj.get("Raw") if isinstance(obj, dict) else None
            if not isinstance(raw, str):
                log.warning("fleet unit %s has no Raw text", node.name)
                continue
            try:
                self._texts[node.name] = parse(raw)  # fleet re-parses Raw the same way
            except UnitFileError as exc:
                log.warning("fleet unit %s cannot be parsed: %s", node.name, exc)

    def unit_states(self) -> list[UnitState]:
        return self._unit_states(self._get(self._key("states"), recursive=True))

    def _unit_states(self, states: Node | None) -> list[UnitState]:
        out = []
        for unit in _children(states).values():
            for node in unit.nodes:
                raw = _json(node.value)
                if not isinstance(raw, dict):
                    log.warning("unreadable fleet unit state at %s", node.key)
                    continue
                machine = raw.get("machineState") or {}
                out.append(
                    UnitState(
                        name=unit.name,
                        hash=str(raw.get("unitHash") or ""),
                        machine_id=str(machine.get("ID") or node.name),
                        load_state=str(raw.get("loadState") or ""),
                        active_state=str(raw.get("activeState") or ""),
                        sub_state=str(raw.get("subState") or ""),
                    )
                )
        return sorted(out, key=lambda s: (s.name, s.machine_id))

    def machines(self) -> list[Machine]:
        root = self._get(self._key("machines"), recursive=True)
        out = []
        for d in _children(root).values():
            parts = _children(d)
            obj = _json(parts.get("object", Node("")).value)
            if not isinstance(obj, dict) or not obj.get("ID"):
                continue  # metadata left behind by a machine that is gone
            metadata = {str(k): str(v) for k, v in (obj.get("Metadata") or {}).items()}
            for entry in parts.get("metadata", Node("")).nodes:
                if entry.value:
                    metadata[entry.name] = entry.value
                else:  # "" is how fleet's API deletes a key
                    metadata.pop(entry.name, None)
            out.append(Machine(str(obj["ID"]), str(obj.get("PublicIP") or ""), metadata))
        return sorted(out, key=lambda m: m.id)

    # -- writing --------------------------------------------------------------------

    def _write(self, what: str, fn: Callable[[], T]) -> T:
        return self.throttle.call(what, fn, write=True)

    def create_unit(
        self, name: str, options: Sequence[UnitOption], desired_state: str = LAUNCHED
    ) -> None:
        _check_state(desired_state)
        options = tuple(options)
        hash_hex = unit_hash(options)
        current = _children(self._get(self._key("job", name), recursive=True))
        obj = _json(current.get("object", Node("")).value)
        if _hash_of(obj) != hash_hex or not isinstance(obj, dict) or obj.get("Name") != name:
            self._store_unit(hash_hex, options)
            key = self._key("job", name, "object")
            self._write(f"set {key}", lambda: self.client.set(key, job_object_json(name, hash_hex)))
        if current.get("target-state", Node("")).value != desired_state:
            key = self._key("job", name, "target-state")
            self._write(f"set {key}", lambda: self.client.set(key, desired_state))

    def _store_unit(self, hash_hex: str, options: tuple[UnitOption, ...]) -> None:
        key = self._key("unit", hash_hex)
        value = unit_object_json(serialize(options))

        def create() -> None:
            # unit bodies are content-addressed: one already there is the same
            with contextlib.suppress(AlreadyExists):
                self.client.create(key, value)

        self._write(f"create {key}", create)
        self._texts.setdefault(hash_hex, options)

    def set_target_state(self, name: str, state: str) -> None:
        _check_state(state)
        current = _children(self._get(self._key("job", name), recursive=True))
        if "object" not in current:
            raise FleetNotFound(f"fleet unit {name} does not exist")
        existing = current.get("target-state")
        if existing is not None and existing.value == state:
            return
        key = self._key("job", name, "target-state")
        # prevExist keeps a concurrent destroy from being undone by a stray target-state
        prev = True if existing is not None else None
        self._write(f"set {key}", lambda: self.client.set(key, state, prev_exist=prev))

    def destroy_unit(self, name: str) -> None:
        key = self._key("job", name)
        if not self._write(f"delete {key}", lambda: self.client.delete(key, recursive=True)):
            raise FleetNotFound(f"fleet unit {name} does not exist")


def _hash_of(obj: Any) -> str:
    """The hex unit hash of a job object, "" if it has none (or a malformed one)."""
    if not isinstance(obj, dict):
        return ""
    raw = obj.get("UnitHash")
    try:
        data = bytes(raw) if isinstance(raw, list) else b""
    except (TypeError, ValueError):
        data = b""
    if len(data) != 20:
        log.warning("fleet job %r has a malformed UnitHash", obj.get("Name"))
        return ""
    return data.hex()
