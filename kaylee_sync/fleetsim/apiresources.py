"""What fleetd's HTTP API v1 answers, computed from the registry keys (no HTTP here).

Follows fleet's ``api/units.go``, ``api/state.go``, ``api/machines.go`` and
``api/pagination.go``: pages of 100 behind an opaque ``nextPageToken`` (base64url of two
little-endian uint16: limit, page), Go's ``omitempty`` on every field (an empty list or
an empty option value vanishes from the JSON), and the PUT rules for new, replaced and
existing units. Each method returns ``(status, body)``; ``body`` None means no content.
One deliberate difference: an unknown ``desiredState`` is a 400 here (fleet stores it,
or fails with a 500, and then hides the unit).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from kaylee_sync.fleet.etcd2 import AlreadyExists
from kaylee_sync.fleetsim.registry import JOB_STATES, JobRecord, SimRegistry, job_object, job_state
from kaylee_sync.fleetsim.requirements import Requirements
from kaylee_sync.unitfile import UnitFileError, UnitOption, parse, serialize, unit_hash

PAGE_LIMIT = 100
Reply = tuple[int, Any]

_VALID_TYPES = frozenset(
    {"automount", "busname", "device", "mount", "path", "scope", "service", "slice"}
    | {"snapshot", "socket", "swap", "target", "timer"}
)
_TEMPLATE_TYPES = frozenset({"path", "service", "socket", "target", "timer"})
_NAME_CHARS = re.compile(r"[0-9a-zA-Z:\-_.\\@]*")
_METADATA_PATH = re.compile(r"/([^/]+)/metadata/([A-Za-z0-9_.-]+)")  # used with fullmatch


class ApiError(Exception):
    """An HTTP error reply: ``{"error": {"code": status, "message": message}}``."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _q(s: str) -> str:
    return json.dumps(s)  # close enough to Go's %q for the names fleet quotes


def page_token(page: int) -> str:
    return base64.urlsafe_b64encode(struct.pack("<HH", PAGE_LIMIT, page)).decode()


def _page(query: Mapping[str, Sequence[str]], items: list[Any], key: str) -> dict[str, Any]:
    tokens = query.get("nextPageToken", [])
    page = 1
    if len(tokens) > 1:
        raise ApiError(400, "too many values for page token")
    if tokens:
        try:
            limit, page = struct.unpack("<HH", base64.urlsafe_b64decode(tokens[0])[:4])
        except (binascii.Error, ValueError, struct.error) as exc:
            raise ApiError(400, f"invalid page token: {exc}") from None
        if limit != PAGE_LIMIT:
            raise ApiError(400, f"token limit must be {PAGE_LIMIT}")
        if page == 0:
            raise ApiError(400, "token page must be greater than zero")
    start, stop = (page - 1) * PAGE_LIMIT, page * PAGE_LIMIT
    out: dict[str, Any] = {}
    if start < len(items):
        # fleet offers a next page whenever this one is full, even if the next is empty
        if stop <= len(items):
            out["nextPageToken"] = page_token(page + 1)
        if items[start:stop]:
            out[key] = items[start:stop]
    return out


def _omit_empty(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in ("", None, [], {})}


def validate_name(name: str) -> str | None:
    """systemd's ``unit_name_is_valid`` as fleet checks it; the first problem, or None."""
    if not name:
        return "unit name cannot be empty"
    if len(name) > 256:
        return "unit name exceeds maximum length (256)"
    dot = name.rfind(".")
    if dot == -1:
        return 'unit name must contain "."'
    if dot == len(name) - 1:
        return 'unit name cannot end in "."'
    suffix = name[dot + 1 :]
    if suffix not in _VALID_TYPES:
        return f"invalid unit type: {_q(suffix)}"
    if "@" in name and suffix not in _TEMPLATE_TYPES:
        return f"invalid unit type for template: {_q(suffix)}"
    bad = next((c for c in name[:dot] if not _NAME_CHARS.fullmatch(c)), None)
    if bad is not None:
        return f"invalid character {_q(bad)} in unit name"
    if name.startswith("@"):
        return 'unit name cannot start in "@"'
    return None


def _fields(raw: Any, what: str) -> dict[str, Any]:
    # Go's encoding/json matches field names case-insensitively; null decodes to nothing.
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApiError(400, f"unable to decode body: cannot unmarshal into {what}")
    return {str(k).lower(): v for k, v in raw.items()}


def _string(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"unable to decode body: {key} must be a string")
    return value


def decode_body(body: bytes) -> Any:
    """The first JSON value of the body, as Go's ``json.Decoder.Decode`` reads it."""
    try:
        text = body.decode("utf-8")
        value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"unable to decode body: {exc}") from None
    return value


class FleetApi:
    """The resources of fleet's API v1 over one :class:`SimRegistry`."""

    def __init__(self, registry: SimRegistry) -> None:
        self.registry = registry

    # -- units -----------------------------------------------------------------------

    def _unit_json(self, record: JobRecord, scheduled: bool, current: str) -> dict[str, Any]:
        options = [
            _omit_empty({"section": o.section, "name": o.name, "value": o.value})
            for o in record.options
        ]
        unit = {"name": record.job.name, "options": options}
        unit["desiredState"] = record.target_state_key
        if scheduled:
            unit["currentState"] = current
            unit["machineID"] = record.job.target
        return _omit_empty(unit)

    def list_units(self, query: Mapping[str, Sequence[str]]) -> Reply:
        records = self.registry.jobs()
        states = self.registry.states()
        # The list form reports a schedule for every unit, globals included (as fleet).
        units = [self._unit_json(r, True, job_state(r, states)) for r in records]
        return 200, _page(query, units, "units")

    def get_unit(self, name: str) -> Reply:
        record = self.registry.job(name)
        if record is None:
            raise ApiError(404, "unit does not exist")
        scheduled = not record.job.requirements.is_global
        current = job_state(record, self.registry.states()) if scheduled else ""
        return 200, self._unit_json(record, scheduled, current)

    def put_unit(self, item: str, body: bytes) -> Reply:
        fields = _fields(decode_body(body), "schema.Unit")
        name = _string(fields, "name") or item
        if name != item:
            raise ApiError(
                400, f"name in URL {_q(item)} differs from unit name in request body {_q(name)}"
            )
        problem = validate_name(name)
        if problem:
            raise ApiError(400, problem)
        options = self._options(fields.get("options"))
        desired = _string(fields, "desiredstate")
        if desired and desired not in JOB_STATES:
            raise ApiError(400, f"invalid value {_q(desired)} for JobState")
        existing = self.registry.job(name)
        if existing is None:
            if not options:
                raise ApiError(409, "unit does not exist and options field empty")
            self._validate_options(options)
            return self._create(name, options, desired)
        if options and unit_hash(options) != unit_hash(existing.options):
            return self._create(name, options, desired)
        if not desired:
            raise ApiError(409, "must provide DesiredState to update existing unit")
        stem = name[: name.rfind(".")]
        at = stem.find("@")
        if at == len(stem) - 1 and at != -1 and desired != "inactive":  # "foo@.service"
            raise ApiError(400, f"cannot activate template {_q(name)}")
        self.registry.client.set(self.registry.key("job", name, "target-state"), desired)
        return 204, None

    @staticmethod
    def _options(raw: Any) -> list[UnitOption]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ApiError(400, "unable to decode body: options must be an array")
        out = []
        for item in raw:
            f = _fields(item, "schema.UnitOption")
            out.append(UnitOption(_string(f, "section"), _string(f, "name"), _string(f, "value")))
        return out

    @staticmethod
    def _validate_options(options: list[UnitOption]) -> None:
        try:  # fleet's sanity check: the serialized unit must parse back
            parse(serialize(options))
        except UnitFileError as exc:
            raise ApiError(400, str(exc)) from None
        reason = Requirements.from_options("", options).invalid_reason()
        if reason:
            raise ApiError(400, reason)

    def _create(self, name: str, options: list[UnitOption], desired: str) -> Reply:
        client, key = self.registry.client, self.registry.key
        digest = unit_hash(options)
        # unit files are shared by hash and never change: an existing one is fine
        with contextlib.suppress(AlreadyExists):
            client.create(key("unit", digest), json.dumps({"Raw": serialize(options)}))
        client.set(key("job", name, "object"), job_object(name, digest))
        client.set(key("job", name, "target-state"), desired or "inactive")
        return 201, None

    def delete_unit(self, name: str) -> Reply:
        if self.registry.job(name) is None:
            raise ApiError(404, "unit does not exist")
        self.registry.client.delete(self.registry.key("job", name), recursive=True)
        return 204, None

    # -- states and machines -----------------------------------------------------------

    def list_states(self, query: Mapping[str, Sequence[str]]) -> Reply:
        machine = (query.get("machineID") or [""])[0]
        unit = (query.get("unitName") or [""])[0]
        states = [
            _omit_empty(
                {
                    "name": s.name,
                    "hash": s.unit_hash,
                    "machineID": s.machine_id,
                    "systemdLoadState": s.load,
                    "systemdActiveState": s.active,
                    "systemdSubState": s.sub,
                }
            )
            for s in self.registry.states()
            if (not machine or s.machine_id == machine) and (not unit or s.name == unit)
        ]
        return 200, _page(query, states, "states")

    def get_state(self, name: str) -> Reply:
        # fleetd crashes here for a unit without state; a 404 is kinder and changes nothing.
        _, page = self.list_states({"unitName": [name]})
        if not page.get("states"):
            raise ApiError(404, "unit state does not exist")
        return 200, page["states"][0]

    def list_machines(self, query: Mapping[str, Sequence[str]]) -> Reply:
        ips = self.registry.public_ips()
        machines = [
            _omit_empty({"id": m.id, "primaryIP": ips.get(m.id, ""), "metadata": dict(m.metadata)})
            for m in self.registry.machines()
        ]
        return 200, _page(query, machines, "machines")

    def patch_machines(self, body: bytes) -> Reply:
        ops = decode_body(body)
        if not isinstance(ops, list):
            raise ApiError(400, "json: cannot unmarshal into []machineMetadataOp")
        parsed = []
        for raw in ops:
            f = _fields(raw, "machineMetadataOp")
            op, path = _string(f, "op"), _string(f, "path")
            value = _string(_fields(f.get("value"), "value"), "value")
            if op not in ("add", "remove", "replace"):
                raise ApiError(400, "invalid op: expect add, remove, or replace")
            match = _METADATA_PATH.fullmatch(path)
            if match is None:
                raise ApiError(400, "machine metadata path invalid")
            if op != "remove" and not value:
                raise ApiError(400, "invalid value: add and replace require a value")
            parsed.append((match[1], match[2], "" if op == "remove" else value))
        for machine_id, key, value in parsed:
            # "" marks a removed key so it also hides the machine's own value (fleet's rule)
            self.registry.client.set(
                self.registry.key("machines", machine_id, "metadata", key), value
            )
        return 204, None
