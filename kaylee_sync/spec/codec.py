"""UnitSpec ↔ JSON, byte-compatible with the Go original, and the spec hash.

The JSON stored under ``units/<name>`` is exactly what Go's ``json.Marshal`` produced
for the original ``spec.Spec`` struct: fields in struct order, ``omitempty`` fields left
out when empty, and Go's HTML-safe escaping (``<`` ``>`` ``&`` U+2028 U+2029 as ``\\uXXXX``).
Storing those very bytes keeps the Go Kaylee able to read our entries, and makes the spec
hash — SHA-1 over them — equal to the original's, so fleet units it started are adopted
rather than restarted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from kaylee_sync.spec.model import App, EnvVar, UnitSpec, Volume

# Go's encoding/json escapes < > & U+2028 U+2029 even though JSON does not require it,
# and writes every control character but \n \r \t as \u00XX where Python writes \b, \f.
# Every backslash in JSON text starts a two-character escape, so matching escapes as
# pairs keeps an escaped backslash ("\\") from being mistaken for the start of "\b".
_GO_TOKENS = re.compile(r"\\.|[<>&\u2028\u2029]")
_GO_REPLACE = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
    "\\b": "\\u0008",
    "\\f": "\\u000c",
}
_GO_SPECIAL = ("<", ">", "&", "\u2028", "\u2029")  # what _GO_TOKENS matches, but "\\."


def _go_token(match: re.Match[str]) -> str:
    token = match.group(0)
    return _GO_REPLACE.get(token, token)


def spec_to_dict(spec: UnitSpec) -> dict[str, Any]:
    """The spec as an ordered dict in Go field order, empty fields omitted."""
    out: dict[str, Any] = {"name": spec.name}
    if spec.replicas:
        out["replicas"] = spec.replicas
    if spec.max_replicas_per_host:
        out["maxReplicasPerHost"] = spec.max_replicas_per_host
    if spec.engine:
        out["engine"] = spec.engine
    if spec.env_files:
        out["envFiles"] = list(spec.env_files)
    if spec.env:
        out["env"] = [{"name": e.name, "value": e.value} for e in spec.env]
    if spec.volumes:
        out["volumes"] = [_volume_to_dict(v) for v in spec.volumes]
    if spec.net:
        out["net"] = spec.net
    out["apps"] = [_app_to_dict(a) for a in spec.apps]
    if spec.args:
        out["args"] = list(spec.args)
    if spec.machine:
        out["machine"] = list(spec.machine)
    if spec.machine_id:
        out["machineId"] = spec.machine_id
    if spec.global_:
        out["global"] = True
    if spec.conflicts:
        out["conflicts"] = list(spec.conflicts)
    return out


def _volume_to_dict(v: Volume) -> dict[str, str]:
    out: dict[str, str] = {}
    if v.id:
        out["id"] = v.id
    if v.driver:
        out["driver"] = v.driver
    if v.source:
        out["source"] = v.source
    out["path"] = v.path
    if v.options:
        out["options"] = v.options
    return out


def _app_to_dict(a: App) -> dict[str, Any]:
    out: dict[str, Any] = {"image": a.image}
    if a.cmd:
        out["cmd"] = a.cmd
    if a.args:
        out["args"] = list(a.args)
    return out


def spec_from_dict(data: Mapping[str, Any]) -> UnitSpec:
    """Build a UnitSpec from already type-checked data (see ``spec.validate``).

    Missing fields take their zero value, as Go's ``json.Unmarshal`` would leave them.
    """
    return UnitSpec(
        name=data.get("name") or "",
        replicas=data.get("replicas") or 0,
        max_replicas_per_host=data.get("maxReplicasPerHost") or 0,
        engine=data.get("engine") or "",
        env_files=tuple(data.get("envFiles") or ()),
        env=tuple(
            EnvVar(name=e.get("name") or "", value=e.get("value") or "")
            for e in data.get("env") or ()
        ),
        volumes=tuple(
            Volume(
                id=v.get("id") or "",
                driver=v.get("driver") or "",
                source=v.get("source") or "",
                path=v.get("path") or "",
                options=v.get("options") or "",
            )
            for v in data.get("volumes") or ()
        ),
        net=data.get("net") or "",
        apps=tuple(
            App(image=a.get("image") or "", cmd=a.get("cmd") or "", args=tuple(a.get("args") or ()))
            for a in data.get("apps") or ()
        ),
        args=tuple(data.get("args") or ()),
        machine=tuple(data.get("machine") or ()),
        machine_id=data.get("machineId") or "",
        global_=bool(data.get("global")),
        conflicts=tuple(data.get("conflicts") or ()),
    )


# One encoder for every call: ``json.dumps`` with options builds a new one each time.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def go_json(data: Any) -> str:
    """``json.Marshal`` output for data made of dicts, lists, str, int and bool."""
    text = _ENCODER.encode(data)
    # Nearly every spec has nothing to rewrite; a few substring scans are cheaper than
    # the regex's (every rewrite needs a backslash or one of the five characters).
    if "\\" in text or any(c in text for c in _GO_SPECIAL):
        return _GO_TOKENS.sub(_go_token, text)
    return text


_JSON_SLOT = "_canonical_json"  # where to_json keeps its answer in the spec's __dict__


def to_json(spec: UnitSpec) -> str:
    """The canonical JSON stored in etcd: identical to the Go original's bytes.

    Remembered on the spec itself: a cold plan asks for it at load time (the stored
    value), for the render check's hash and again for every create's fleet unit names.
    A UnitSpec is frozen and holds only tuples of frozen values, so the text cannot go
    stale; it lives outside the dataclass fields, so equality, hash and repr ignore it.
    """
    cached: str | None = spec.__dict__.get(_JSON_SLOT)
    if cached is None:
        cached = go_json(spec_to_dict(spec))
        spec.__dict__[_JSON_SLOT] = cached  # not setattr: the dataclass is frozen
    return cached


def go_json_bytes(spec: UnitSpec) -> bytes:
    return to_json(spec).encode("utf-8")


def spec_hash(spec: UnitSpec, generation: int = 0) -> str:
    """Full SHA-1 hex of the Go JSON bytes (plus ``\\n<generation>`` after a restart)."""
    return json_hash(to_json(spec), generation)


def json_hash(canonical: str, generation: int = 0) -> str:
    """``spec_hash`` of the spec whose ``to_json`` is ``canonical`` (saves encoding twice)."""
    data = canonical.encode("utf-8")
    if generation > 0:
        data += b"\n" + str(generation).encode()
    return hashlib.sha1(data).hexdigest()


def spec_hash6(spec: UnitSpec, generation: int = 0) -> str:
    """The 6 hex digits that name fleet units: the first 3 bytes of ``spec_hash``."""
    return spec_hash(spec, generation)[:6]
