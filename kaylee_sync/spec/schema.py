"""The shape of a unit file: one field table, its patterns, and a JSON Schema made from it.

The loader's type checks (``spec.validate.check_shape``) and the JSON Schema handed to
editors (yaml-language-server) are both generated from ``UNIT_FIELDS``, so the two cannot
drift apart. The patterns are written in the common subset of Python ``re`` and
ECMA-262 regular expressions, so the same text serves both; ``spec.validate`` stays the
authority and gives each rule its own plain-English reason, the schema is advisory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# Characters that may never appear: C0 controls other than TAB. A newline, CR or NUL
# in a value would end a unit-file line early and let the rest inject systemd directives.
_CTRL = "\\u0000-\\u0008\\u000A-\\u001F"
TEXT = f"^[^{_CTRL}]*$"
NAME = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ENV_NAME = "^[A-Za-z_][A-Za-z0-9_]*$"
# Values written at the end of a unit-file line: fleet trims them and reads a trailing
# backslash as a line continuation, so leading/trailing whitespace or "\" would change them.
LINE_END = f"^(?!\\s)(?![\\s\\S]*[\\s\\\\]$)[^{_CTRL}]*$"
ABS_PATH_LINE_END = f"^/(?![\\s\\S]*[\\s\\\\]$)[^{_CTRL}]*$"
IMAGE = f"^[^\\s{_CTRL}]*[^\\s\\\\{_CTRL}]$"
NO_SPACE = f"^[^\\s{_CTRL}]*$"
# Volume ids and drivers become file names and systemd unit names ("<svc>@<id>.service",
# "/var/lib/kaylee/plugins/volumes/<driver>"); an id must not look like an option ("-u").
VOLUME_ID = "^(?!\\.{1,2}$)[A-Za-z0-9_.@][A-Za-z0-9_.@-]*$"
DRIVER = "^[A-Za-z0-9][A-Za-z0-9_.@-]*$"
# A comma would start a new rkt volume option ("source=/a,readOnly=false").
VOLUME_PATH = f"^/[^,{_CTRL}]*$"
VOLUME_SOURCE = f"^[^,{_CTRL}]+$"
CONFLICT = f"^[^\\s:/{_CTRL}]+$"
MACHINE_KV = f'^[^\\s="{_CTRL}]+=[^\\s"{_CTRL}]+$'
MACHINE = "^(?![\\s\\S]*\\\\$)" + MACHINE_KV[1:]
MACHINE_ID = "^[0-9A-Fa-f]{1,128}$"

MAX_REPLICAS = 1000
# Go-style durations ("30s", "5m", "1m30s", "250ms") for the rollout policy and checks.
DURATION = "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
# Check templates: no whitespace (a URL or key is one word); ${VAR} stands for a variable.
ETCD_KEY = f"^/[^\\s{_CTRL}]*$"
URL = f"^https?://[^\\s{_CTRL}]+$"

Kind = Literal["string", "integer", "boolean", "strings", "objects", "object", "duration"]


@dataclass(frozen=True)
class Field:
    """One key of a unit file (or of an env/volume/app entry)."""

    kind: Kind
    description: str
    required: bool = False
    # For kind "objects": the fields of each list item; for "object": of the mapping.
    item: Mapping[str, Field] | None = None
    # Extra JSON Schema keywords for the value (or, for "strings", for each item).
    extra: Mapping[str, Any] = field(default_factory=dict)


ENV_FIELDS: dict[str, Field] = {
    "name": Field(
        "string", "Variable name: a shell identifier.", True, extra={"pattern": ENV_NAME}
    ),
    "value": Field(
        "string", "Value; any text on one line (tabs allowed).", extra={"pattern": TEXT}
    ),
}

VOLUME_FIELDS: dict[str, Field] = {
    "id": Field(
        "string",
        "Volume id, required with a driver (e.g. an EBS volume id).",
        extra={"pattern": VOLUME_ID},
    ),
    "driver": Field(
        "string",
        "Absent for a host path; 'systemd-mountservice-<svc>' for a mount service "
        "template; otherwise the name of a plugin script under /var/lib/kaylee/plugins/volumes/.",
        extra={"pattern": DRIVER},
    ),
    "source": Field(
        "string",
        "Host path (absolute) for a host volume; a sub-path of the mount with a driver.",
        extra={"pattern": VOLUME_SOURCE},
    ),
    "path": Field(
        "string", "Absolute mount path inside the pod.", True, extra={"pattern": VOLUME_PATH}
    ),
    "options": Field("string", "Options passed to a plugin script.", extra={"pattern": LINE_END}),
}

APP_FIELDS: dict[str, Field] = {
    "image": Field(
        "string",
        "Image to fetch and run, e.g. docker://nginx:1.25.",
        True,
        extra={"pattern": IMAGE},
    ),
    "cmd": Field(
        "string", "Command overriding the image's entry point (--exec).", extra={"pattern": TEXT}
    ),
    "args": Field("strings", "Arguments of the app, spliced as written.", extra={"pattern": TEXT}),
}

UNIT_FIELDS: dict[str, Field] = {
    "name": Field(
        "string",
        "Unit name: the etcd key units/<name> and part of every fleet unit name.",
        True,
        extra={"pattern": NAME},
    ),
    "replicas": Field(
        "integer",
        "Number of instances; absent or 0 makes a single non-replica unit.",
        extra={"minimum": 0, "maximum": MAX_REPLICAS},
    ),
    "maxReplicasPerHost": Field(
        "integer",
        "At most this many instances per host (1..replicas); absent or 0 means replicas. "
        "Only meaningful for replica units.",
        extra={"minimum": 0, "maximum": MAX_REPLICAS},
    ),
    "engine": Field("string", "Container engine: '' or 'rkt'.", extra={"enum": ["", "rkt"]}),
    "envFiles": Field(
        "strings", "Absolute paths of EnvironmentFile= files.", extra={"pattern": ABS_PATH_LINE_END}
    ),
    "env": Field("objects", "Environment variables.", item=ENV_FIELDS),
    "volumes": Field("objects", "Volumes mounted into the pod.", item=VOLUME_FIELDS),
    "net": Field(
        "string", "rkt --net= value, e.g. 'flannel' or 'host'.", extra={"pattern": NO_SPACE}
    ),
    "apps": Field(
        "objects",
        "The pod's applications; at least one.",
        True,
        item=APP_FIELDS,
        extra={"minItems": 1},
    ),
    "args": Field(
        "strings", "Extra 'rkt run' arguments, spliced as written.", extra={"pattern": TEXT}
    ),
    "machine": Field(
        "strings", "fleet MachineMetadata constraints, 'key=value'.", extra={"pattern": MACHINE}
    ),
    "machineId": Field(
        "string", "fleet MachineID: pins the unit to one machine.", extra={"pattern": MACHINE_ID}
    ),
    "global": Field("boolean", "Run on every machine (fleet Global=true)."),
    "conflicts": Field(
        "strings",
        "Other unit names (globs allowed) that must not share a host.",
        extra={"pattern": CONFLICT},
    ),
}

# The rollout policy and the health checks: in the unit file, never in the stored spec
# (spec/policy.py says why), so they are not in UNIT_FIELDS but in FILE_FIELDS.
ROLLOUT_FIELDS: dict[str, Field] = {
    "maxParallel": Field(
        "integer",
        "Instances replaced at once (default 1).",
        extra={"minimum": 1, "maximum": MAX_REPLICAS},
    ),
    "minHealthyTime": Field(
        "duration",
        "How long a new instance must stay healthy before it counts (default: the server's "
        "--stable), e.g. '30s'.",
        extra={"pattern": DURATION},
    ),
    "healthyDeadline": Field(
        "duration",
        "A new instance must be healthy within this (default: the server's --rollout-timeout).",
        extra={"pattern": DURATION},
    ),
    "progressDeadline": Field(
        "duration",
        "The whole rollout must finish within this (default: none).",
        extra={"pattern": DURATION},
    ),
    "canary": Field(
        "integer",
        "New instances started beside the old ones and held until promoted (default 0).",
        extra={"minimum": 0, "maximum": MAX_REPLICAS},
    ),
    "autoPromote": Field(
        "boolean", "Promote the canaries once healthy for minHealthyTime (default false)."
    ),
    "autoRevert": Field(
        "boolean",
        "On a missed deadline, destroy the new instances and bring the last healthy spec "
        "back to full count (default true).",
    ),
}

HTTP_FIELDS: dict[str, Field] = {
    "url": Field(
        "string",
        "URL to GET; ${MACHINE_IP}, ${KAYLEE_ID} and the unit's env names are replaced.",
        True,
        extra={"pattern": URL},
    ),
    "interval": Field(
        "duration", "Time between checks (default 10s).", extra={"pattern": DURATION}
    ),
    "timeout": Field(
        "duration", "Time a check may take (default 2s).", extra={"pattern": DURATION}
    ),
    "failures": Field(
        "integer",
        "Checks failing in a row before a healthy instance counts as unhealthy (default 3).",
        extra={"minimum": 1, "maximum": 100},
    ),
}

HEALTH_FIELDS: dict[str, Field] = {
    "etcdKey": Field(
        "string",
        "A presence key the instance writes, e.g. /services/web/${KAYLEE_ID}.",
        extra={"pattern": ETCD_KEY},
    ),
    "etcdKeyspace": Field(
        "string", "Where etcdKey lives: 'v2' (default) or 'v3'.", extra={"enum": ["v2", "v3"]}
    ),
    "http": Field("object", "An HTTP check.", item=HTTP_FIELDS),
}

POLICY_FIELDS: dict[str, Field] = {
    "rollout": Field("object", "How a new spec replaces the old one.", item=ROLLOUT_FIELDS),
    "health": Field(
        "object",
        "Checks an instance must pass, besides fleet's active/running, to count as healthy.",
        item=HEALTH_FIELDS,
    ),
}

FILE_FIELDS: dict[str, Field] = {**UNIT_FIELDS, **POLICY_FIELDS}

_JSON_TYPES: dict[Kind, str] = {
    "string": "string",
    "integer": "integer",
    "boolean": "boolean",
    "strings": "array",
    "objects": "array",
    "object": "object",
    "duration": "string",
}


def _object_schema(fields: Mapping[str, Field], description: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, f in fields.items():
        prop: dict[str, Any] = {"description": f.description, "type": _JSON_TYPES[f.kind]}
        if f.kind == "strings":
            prop["items"] = {"type": "string", **f.extra}
        elif f.kind == "objects":
            assert f.item is not None
            prop["items"] = _object_schema(f.item, f.description)
            prop.update(f.extra)
        elif f.kind == "object":
            assert f.item is not None
            prop = _object_schema(f.item, f.description)
        else:
            prop.update(f.extra)
        props[key] = prop
    return {
        "type": "object",
        "description": description,
        "properties": props,
        "required": [k for k, f in fields.items() if f.required],
        "additionalProperties": False,
    }


def unit_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of one unit file, for editors and linters."""
    schema = _object_schema(FILE_FIELDS, "A Kaylee unit: one service run on fleet with rkt.")
    volume = schema["properties"]["volumes"]["items"]
    # A driver needs an id; a host volume (no driver) needs an absolute source.
    volume["if"] = {"required": ["driver"]}
    volume["then"] = {"required": ["id"]}
    volume["else"] = {"required": ["source"], "properties": {"source": {"pattern": "^/"}}}
    # global excludes machineId and replicas > 1; machineId excludes replicas > 1.
    schema["allOf"] = [
        {
            "if": {"required": ["global"], "properties": {"global": {"const": True}}},
            "then": {
                "not": {"required": ["machineId"]},
                "properties": {"replicas": {"maximum": 1}},
            },
        },
        {
            "if": {"required": ["machineId"]},
            "then": {"properties": {"replicas": {"maximum": 1}}},
        },
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/kaylee-sync/kaylee-sync/unit.schema.json",
        "title": "Kaylee unit",
        **schema,
    }
