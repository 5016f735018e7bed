"""fleet driven through its own registry: fleet's keys in etcd's v2 API.

This is how the Go Kaylee drove fleet, and it needs nothing but etcd. It must write
exactly what fleetctl writes (key layout, JSON shapes, byte for byte where fleet compares
or hashes), or fleet's engine and agents would not recognise our units, and it must
write as little as possible: each write wakes every fleetd in the cluster, so unchanged
keys are never rewritten. The layout is documented in fleet-registry.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kaylee_sync.errors import FleetConflict, FleetError, FleetNotFound
from kaylee_sync.fleet.batch import DEFAULT_WORKERS, Latch, run_all
from kaylee_sync.fleet.etcd2 import (
    AlreadyExists,
    CompareFailed,
    Etcd2Client,
    KeyNotFound,
    Node,
    NotEmpty,
)
from kaylee_sync.fleet.model import (
    DEFAULT_KEY_PREFIX,
    INACTIVE,
    LAUNCHED,
    LOADED,
    Debris,
    FleetUnit,
    Machine,
    UnitState,
)
from kaylee_sync.fleet.model import check_state as _check_state
from kaylee_sync.fleet.throttle import Throttle
from kaylee_sync.render import kaylee_id
from kaylee_sync.unitfile import UnitFileError, UnitOption, parse, serialize, unit_hash

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PREFIX = DEFAULT_KEY_PREFIX
_CACHE_LIMIT = 10_000  # unit texts kept by hash; they never change, only the count grows
_BULK_UNIT_FETCH = 4  # more missing texts than this: one recursive get of unit/


def _go_json_escapes() -> dict[int, str]:
    table = {code: f"\\u{code:04x}" for code in range(0x20)}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    table.update({ord('"'): '\\"', ord("\\"): "\\\\"})
    table.update({ord(ch): f"\\u{ord(ch):04x}" for ch in "<>&\u2028\u2029"})
    # not valid UTF-8: Go writes the replacement character
    table.update({code: "\ufffd" for code in range(0xD800, 0xE000)})
    return table


_GO_JSON_ESCAPES = _go_json_escapes()
_GO_JSON_SPECIAL = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')


def _go_json_escape(match: re.Match[str]) -> str:
    return _GO_JSON_ESCAPES[ord(match.group())]


def go_json_string(s: str) -> str:
    """``s`` as Go's encoding/json writes a string (HTML-safe escapes, lowercase hex).

    A regular expression finds the few characters to escape: a unit body is a few KiB
    and a batch writes thousands, and a loop over every character (or a translate
    table, which looks up every character too) cost more than sending the body.
    """
    return '"' + _GO_JSON_SPECIAL.sub(_go_json_escape, s) + '"'


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
        self._guard: Callable[[str], None] | None = None
        self._latch: Latch | None = None  # the fence of the batch under way, if any

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
        parts = _children(d)
        values = {key: child.value or "" for key, child in parts.items()}
        target = values.get("target", "")
        return FleetUnit(
            name=name,
            options=options,
            desired_state=values.get("target-state") or INACTIVE,
            current_state=job_state(target, values.get("job-state", ""), reported(name, target)),
            machine_id=target,
            object_index=parts["object"].modified_index if "object" in parts else 0,
            state_index=parts["target-state"].modified_index if "target-state" in parts else 0,
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
                machine = raw.get("machineState")
                if not isinstance(machine, dict):
                    machine = {}  # fleet writes an object; anything else names no machine
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
            raw_metadata = obj.get("Metadata")
            metadata = (
                {str(k): str(v) for k, v in raw_metadata.items()}
                if isinstance(raw_metadata, dict)
                else {}
            )
            for entry in parts.get("metadata", Node("")).nodes:
                if entry.value:
                    metadata[entry.name] = entry.value
                else:  # "" is how fleet's API deletes a key
                    metadata.pop(entry.name, None)
            out.append(Machine(str(obj["ID"]), str(obj.get("PublicIP") or ""), metadata))
        return sorted(out, key=lambda m: m.id)

    # -- writing --------------------------------------------------------------------
    #
    # Fencing (design.md "Fencing fleet writes"): every write goes through the throttle,
    # whose guard checks the leader lease right before sending, and every write is a
    # v2 compare-and-swap on what the caller read: ``create`` (prevExist=false) for keys
    # it saw absent, ``prevIndex`` for keys it saw. v2 compares one key at a time, so a
    # ``target-state`` write compares the target-state's own index: that key is only
    # ever removed together with its job, so an unchanged index means the job was
    # neither destroyed nor re-created since it was read, and a stale writer cannot
    # resurrect a destroyed job or overwrite a newer target state.

    def set_write_guard(self, guard: Callable[[str], None] | None) -> None:
        self._guard = guard
        self.throttle.guard = self._check  # before each attempt, retries included
        self.client.before_write = self._check  # and once more right before the request

    def _check(self, what: str) -> None:
        latch = self._latch
        if latch is not None:
            latch(what)  # during a batch: one refusal refuses the whole batch
        elif self._guard is not None:
            self._guard(what)

    def _write(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return self.throttle.call(what, fn, write=True)
        except (CompareFailed, AlreadyExists, KeyNotFound, NotEmpty) as exc:
            raise FleetConflict(f"fleet {what}: refused, the registry changed: {exc}") from exc

    def create_unit(
        self,
        name: str,
        options: Sequence[UnitOption],
        desired_state: str = LAUNCHED,
        *,
        fresh: bool = False,
    ) -> None:
        # fleet's own CreateUnit, without a read first: the body (create-only, content-
        # addressed), then the job object with prevExist=false, then the target state.
        # A new unit costs three writes and no read. If the object is already there
        # (etcd error 105), a fresh create is refused as fleet refuses ("job already
        # exists"); otherwise the unit is read and only what differs is written.
        _check_state(desired_state)
        options = tuple(options)
        hash_hex = unit_hash(options)
        object_key = self._key("job", name, "object")
        state_key = self._key("job", name, "target-state")
        self._store_unit(hash_hex, options, name)
        value = job_object_json(name, hash_hex)
        try:
            self._create(object_key, value)
        except AlreadyExists as exc:
            if fresh:
                raise FleetConflict(f"fleet unit {name} already exists") from exc
            self._update_unit(name, hash_hex, desired_state)
            return
        # After the object: a crash in between leaves a job without a target state,
        # which fleet reads as inactive and the scheduler launches (decide.py).
        try:
            self._create(state_key, desired_state)
        except AlreadyExists as exc:  # left behind in a job directory without an object
            if fresh:
                raise FleetConflict(f"fleet unit {name}: a target state was already there") from exc
            self._update_unit(name, hash_hex, desired_state)

    def create_units(
        self,
        units: Sequence[tuple[str, Sequence[UnitOption]]],
        desired_state: str = LAUNCHED,
        *,
        fresh: bool = False,
        workers: int = DEFAULT_WORKERS,
    ) -> dict[str, FleetError]:
        """``create_unit`` for each (name, options), ``workers`` units in flight at once
        (``fleetctl start`` of many units); the units that failed, with their errors.

        Every write passes the throttle and the write guard; once the guard refuses
        one write, no write of the batch is sent any more and FleetFenced is raised
        after the workers have stopped (batch.py). Units cut short are left as a crash
        would leave them: the scheduler's next pass completes or repairs them.
        """
        _check_state(desired_state)
        names = [name for name, _ in units]
        if len(set(names)) != len(names):
            raise ValueError("create_units: a unit name appears twice")
        options = dict(units)
        latch = Latch(self._guard)
        self._latch = latch
        try:
            return run_all(
                names,
                lambda name: self.create_unit(name, options[name], desired_state, fresh=fresh),
                latch,
                workers,
            )
        finally:
            self._latch = None

    def _create(self, key: str, value: str) -> None:
        """A throttled, guarded create whose AlreadyExists the caller handles."""
        self.throttle.call(f"create {key}", lambda: self.client.create(key, value), write=True)

    def _update_unit(self, name: str, hash_hex: str, desired_state: str) -> None:
        """Bring an existing unit to ``hash_hex`` and ``desired_state``, writing only what
        differs, each write conditional on what was read."""
        object_key = self._key("job", name, "object")
        state_key = self._key("job", name, "target-state")
        current = _children(self._get(self._key("job", name), recursive=True))
        obj_node = current.get("object")
        obj = _json(obj_node.value if obj_node else None)
        if _hash_of(obj) != hash_hex or not isinstance(obj, dict) or obj.get("Name") != name:
            value = job_object_json(name, hash_hex)
            self._write(f"set {object_key}", lambda: self._swap(object_key, value, obj_node))
        existing = current.get("target-state")
        if existing is None or existing.value != desired_state:
            self._write(f"set {state_key}", lambda: self._swap(state_key, desired_state, existing))

    def _swap(self, key: str, value: str, read: Node | None) -> Node:
        """Write ``key`` only if it is as read: absent, or unchanged since ``read``."""
        if read is None:
            return self.client.create(key, value)
        return self.client.set(key, value, prev_index=read.modified_index)

    def _store_unit(self, hash_hex: str, options: tuple[UnitOption, ...], name: str) -> None:
        key = self._key("unit", hash_hex)
        value = unit_object_json(serialize(options))

        def create() -> None:
            # unit bodies are content-addressed: one already there is the same
            with contextlib.suppress(AlreadyExists):
                self.client.create(key, value)

        self._write(f"create {key} (the body of {name})", create)
        self._texts.setdefault(hash_hex, options)

    def set_target_state(self, name: str, state: str, *, seen: FleetUnit | None = None) -> None:
        _check_state(state)
        key = self._key("job", name, "target-state")
        if seen is not None and seen.state_index:
            if seen.desired_state != state:
                index = seen.state_index
                self._write(f"set {key}", lambda: self.client.set(key, state, prev_index=index))
            return
        current = _children(self._get(self._key("job", name), recursive=True))
        obj = current.get("object")
        if obj is None:
            raise FleetNotFound(f"fleet unit {name} does not exist")
        if seen is not None and seen.object_index and obj.modified_index != seen.object_index:
            raise FleetConflict(f"fleet unit {name} was replaced since it was read")
        existing = current.get("target-state")
        if existing is not None and existing.value == state:
            return
        # compare-and-swap: a concurrent destroy is never undone by a stray target-state
        self._write(f"set {key}", lambda: self._swap(key, state, existing))

    def destroy_unit(self, name: str, *, seen: FleetUnit | None = None) -> None:
        key = self._key("job", name)
        if seen is not None and (seen.state_index or seen.object_index):
            # A directory cannot be compared: compare-and-delete the key that was read
            # first (the fence), then remove what is left of the job.
            part, index = (
                ("target-state", seen.state_index)
                if seen.state_index
                else ("object", seen.object_index)
            )
            first = self._key("job", name, part)
            self._write(f"delete {first}", lambda: self._delete_at(first, index))
        gone = not self._write(f"delete {key}", lambda: self.client.delete(key, recursive=True))
        if gone and seen is None:
            raise FleetNotFound(f"fleet unit {name} does not exist")

    def _delete_at(self, key: str, index: int) -> None:
        if not self.client.delete(key, prev_index=index):
            raise KeyNotFound(f"etcd v2: {key} is gone", 100)

    # -- repair ---------------------------------------------------------------------

    def debris(self, unit_prefix: str) -> list[Debris]:
        mine = unit_prefix + ":"
        jobs = _children(self._get(self._key("job"), recursive=True))
        bodies = _children(self._get(self._key("unit"), recursive=True))
        out: list[Debris] = []
        referenced: set[str] = set()
        for name, d in sorted(jobs.items()):
            parts = _children(d)
            hash_hex = _hash_of(_json(parts["object"].value)) if "object" in parts else ""
            referenced.add(hash_hex)
            if not name.startswith(mine):
                continue  # never anyone else's
            index = max(n.modified_index for n in d.walk())
            if "object" not in parts:
                out.append(Debris("job", d.key, index, "job directory without an object"))
            elif hash_hex and hash_hex not in bodies:
                out.append(Debris("job", d.key, index, f"its unit body {hash_hex} is missing"))
        # Bodies carry no name; ours are recognised by the KAYLEE_ID our renderer writes.
        marker = f"KAYLEE_ID={kaylee_id(mine)}"
        for hash_hex, node in sorted(bodies.items()):
            raw = _json(node.value)
            text = raw.get("Raw") if isinstance(raw, dict) else None
            if hash_hex in referenced or not isinstance(text, str) or marker not in text:
                continue
            try:
                ours = any(
                    o.section == "Service"
                    and o.name == "Environment"
                    and o.value.startswith(marker)
                    for o in parse(text)
                )
            except UnitFileError:
                continue  # not ours to judge
            if ours:
                out.append(Debris("body", node.key, node.modified_index, "no job refers to it"))
        return out

    def clean(self, item: Debris) -> None:
        if item.kind == "body":
            self._write(f"delete {item.key}", lambda: self._delete_at(item.key, item.index))
            self._texts.pop(item.key.rsplit("/", 1)[-1], None)
            return
        node = self._get(item.key, recursive=True)
        if node is None:
            return
        if max(n.modified_index for n in node.walk()) != item.index:
            raise FleetConflict(f"fleet {item.key} changed since it was found")
        for child in node.walk()[1:]:
            if not child.dir:
                delete = functools.partial(self._delete_at, child.key, child.modified_index)
                self._write(f"delete {child.key}", delete)
        # A plain directory delete fails if anything was written into it meanwhile.
        self._write(f"delete {item.key}", lambda: self.client.delete(item.key, dir=True))


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
