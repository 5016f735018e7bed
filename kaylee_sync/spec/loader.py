"""Loading unit specs from untrusted bytes: unit files (YAML or JSON) and etcd entries.

This module does no I/O: it is given bytes. Reading a file from disk safely (no symlinks,
no FIFOs, size capped) is the source layer's job (``kaylee_sync.source.localfile``).

Unit files come from any contributor's pull request, so loading is defensive: sizes are
capped before reading, YAML is only *composed* (safe loader, no object construction) and
the node tree is walked here, which lets us record the line of every field, count nodes
so that alias bombs fail fast, reject duplicate keys (PyYAML keeps the last silently),
merge keys and exotic tags, and keep YAML 1.1's surprises (``on`` is a boolean) visible.
Every problem in a file is collected and raised together in one ``SpecError``.

Decisions: JSON files take the YAML path (JSON is YAML here), so they get line numbers
too. libyaml refuses surrogate escapes, which JSON writers use for characters beyond the
BMP ("\\ud83d\\ude00"): in ``*.json`` files escaped pairs are joined first, lone ones stay
refused. Merge keys (``<<``) are rejected rather than supported: one way to write a unit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kaylee_sync.errors import Issue, SpecError
from kaylee_sync.spec import schema
from kaylee_sync.spec.codec import spec_from_dict
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.spec.policy import DEFAULT_POLICY, UnitPolicy, policy_from_dict
from kaylee_sync.spec.policy_rules import policy_issues
from kaylee_sync.spec.schema import Field
from kaylee_sync.spec.validate import (
    REPORTED,
    Opaque,
    check_shape,
    line_of,
    validate_spec,
)

MAX_BYTES = 1 << 20  # 1 MiB: far above any real unit file, small enough to hold in memory.
NODE_BUDGET = 100_000  # nodes visited, aliases counted each time: a billion laughs stops here.
MAX_DEPTH = 32  # a unit file nests four levels deep; more is an attack or a mistake.

_BASE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVED: dict[str, str] = {}  # plain scalar -> implicit tag, for short scalars only
_RESOLVED_MAX = 4096  # entries; the cache is emptied when full, so it stays small
_RESOLVED_LEN = 64  # longer scalars are resolved every time, never kept


class _FastLoader(_BASE_LOADER):  # type: ignore[misc]
    """The safe loader with PyYAML's Python resolver taken off the hot path.

    The C composer calls ``descend_resolver``/``ascend_resolver``/``resolve`` in Python
    for every node, a fifth of composing a unit file (bench/repo_sync). The safe loader
    has no path resolvers (checked below), so the first two do nothing, and a plain
    scalar's implicit tag depends only on its text: short ones are memoised (nobody
    adds implicit resolvers to the safe loader after import). Tags are exactly
    PyYAML's: a scalar whose first character no resolver is registered for gets the
    default tag, as PyYAML would give it, a mapping or sequence gets its default tag
    at once (PyYAML's answer without path resolvers; a tenth of the calls went there),
    and anything else asks PyYAML's ``resolve``.
    """

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode:
            if not implicit[0]:  # quoted: PyYAML skips the implicit resolvers too
                return _SCALAR
            tag = _RESOLVED.get(value)
            if tag is None:
                resolvers = self.yaml_implicit_resolvers
                if value and value[0] not in resolvers and None not in resolvers:
                    return _SCALAR  # no resolver could match: PyYAML's answer too
                tag = super().resolve(kind, value, implicit)
                if len(value) <= _RESOLVED_LEN:
                    if len(_RESOLVED) >= _RESOLVED_MAX:
                        _RESOLVED.clear()
                    _RESOLVED[value] = tag
            return tag
        # A mapping or sequence: with no path resolvers PyYAML gives the default tag.
        if kind is MappingNode:
            return _MAPPING
        if kind is SequenceNode:
            return _SEQUENCE
        return super().resolve(kind, value, implicit)


# Path resolvers would make tags depend on a node's position: keep PyYAML's walk then.
_LOADER: Any = _BASE_LOADER if _BASE_LOADER.yaml_path_resolvers else _FastLoader
_SCALAR: str = _BASE_LOADER.DEFAULT_SCALAR_TAG
_MAPPING: str = _BASE_LOADER.DEFAULT_MAPPING_TAG
_SEQUENCE: str = _BASE_LOADER.DEFAULT_SEQUENCE_TAG
_SAFE = yaml.SafeLoader("")  # only its scalar constructors are used, never its loader
_TAG = "tag:yaml.org,2002:"
_STR_TAG, _MAP_TAG, _SEQ_TAG = _TAG + "str", _TAG + "map", _TAG + "seq"
_KINDS = {
    "bool": "a boolean",
    "int": "a number",
    "float": "a number",
    "null": "null",
    "timestamp": "a date/time",
    "merge": "a merge key",
}


# In JSON every backslash starts a two-character escape; consuming "\\." tokens in order
# keeps an escaped backslash ("\\\\ud83d") from being read as the start of an escape.
_JSON_ESCAPE = re.compile(r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\.")


def _join_surrogate_escapes(text: str) -> str:
    def join(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return m.group(0)
        pair = chr(int(m.group(1), 16)) + chr(int(m.group(2), 16))
        return pair.encode("utf-16", "surrogatepass").decode("utf-16")

    return _JSON_ESCAPE.sub(join, text)


class _Abort(Exception):
    """Stops the walk when going on would be pointless or dangerous."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line, self.reason = line, reason


def _fail(filename: str, reason: str, line: int = 0, field: str = "") -> SpecError:
    return SpecError([Issue(filename, line, field, reason)])


def _decode(data: bytes, filename: str) -> str:
    if len(data) > MAX_BYTES:
        raise _fail(filename, f"is larger than {MAX_BYTES} bytes (1 MiB); refusing to read it")
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise _fail(filename, "contains a NUL byte; unit files are UTF-8 text", line)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _fail(filename, "is not valid UTF-8 text", line) from exc


class _Walker:
    """Turns a composed YAML node tree into plain data, recording the line of each field."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.issues: list[Issue] = []
        self.lines: dict[str, int] = {}
        self.visited = 0

    def issue(self, line: int, path: str, reason: str) -> None:
        self.issues.append(Issue(self.filename, line, path, reason))

    def walk(self, node: Node, path: str, depth: int) -> Any:
        # The hot loop of loading (some 30 nodes a file, 10,000 files in a cold read):
        # the most common case, a plain string, is tested first and tags are compared
        # whole rather than stripped of their prefix.
        line = node.start_mark.line + 1
        self.visited += 1
        if self.visited > NODE_BUDGET:
            raise _Abort(line, "YAML aliases expand to too many nodes")
        if depth > MAX_DEPTH:
            raise _Abort(line, f"nested more than {MAX_DEPTH} levels deep")
        lines = self.lines
        if path not in lines:
            lines[path] = line
        if isinstance(node, ScalarNode):
            if node.tag == _STR_TAG:
                return node.value
            return self.scalar(node, path, line)
        if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
            return self.mapping(node, path, depth)
        if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
            depth += 1
            return [self.walk(n, f"{path}[{i}]", depth) for i, n in enumerate(node.value)]
        self.issue(line, path, f"unsupported YAML tag '{node.tag}'; use plain lists and mappings")
        return REPORTED

    def mapping(self, node: MappingNode, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        lines = self.lines
        depth += 1
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                line = key_node.start_mark.line + 1
                self.issue(line, path, "keys must be plain strings, not lists or mappings")
                continue
            key = key_node.value
            if key_node.tag != _STR_TAG and not self.plain_key(key_node, prefix):
                continue
            field = prefix + key
            line = key_node.start_mark.line + 1
            if key in out:
                first = lines[field]
                self.issue(line, field, f"duplicate key '{key}' (first at line {first})")
                continue
            lines[field] = line
            if isinstance(value_node, ScalarNode) and value_node.tag == _STR_TAG:
                # walk() inlined for the commonest value, a plain string: the same
                # budget and depth checks, and its line is the key's (recorded above).
                if self.visited >= NODE_BUDGET or depth > MAX_DEPTH:
                    self.walk(value_node, field, depth)  # raises walk's own _Abort
                self.visited += 1
                out[key] = value_node.value
            else:
                out[key] = self.walk(value_node, field, depth)
        return out

    def plain_key(self, key_node: ScalarNode, prefix: str) -> bool:
        """Whether a key not tagged as a string is still a field name; else report it."""
        line = key_node.start_mark.line + 1
        key, tag = key_node.value, key_node.tag.removeprefix(_TAG)
        if tag == "merge":
            self.issue(
                line,
                prefix + key,
                "YAML merge keys ('<<') are not supported; write the fields out",
            )
            return False
        if tag not in ("str", "value"):
            kind = _KINDS.get(tag, f"tagged '{key_node.tag}'")
            self.issue(
                line,
                prefix + key,
                f"key '{key}' is read as {kind} in YAML; field names are strings",
            )
            return False
        return True

    def scalar(self, node: ScalarNode, path: str, line: int) -> Any:
        tag = node.tag.removeprefix(_TAG)
        try:
            if tag in ("str", "value", "merge"):  # "=" and "<<" as values are just text
                return node.value
            if tag == "int":
                return _SAFE.construct_yaml_int(node)
            if tag == "float":
                return _SAFE.construct_yaml_float(node)
            if tag == "bool":
                return _SAFE.construct_yaml_bool(node)
            if tag == "null":
                return None
            if tag == "timestamp":
                return Opaque("date/time")
        except ValueError:  # an integer of more digits than Python converts
            self.issue(line, path, "number too large to read")
            return REPORTED
        self.issue(line, path, f"unsupported YAML tag '{node.tag}'; use plain values")
        return REPORTED


def compose_node(text: str, filename: str) -> Node:
    loader = _LOADER(text)
    try:
        if not loader.check_node():
            raise _fail(filename, "is empty; a unit file needs at least 'name' and 'apps'")
        root: Node = loader.get_node()
        if loader.check_node():
            second = loader.get_node().start_mark.line + 1
            raise _fail(
                filename,
                "holds more than one YAML document ('---'); put one unit in each file",
                second,
            )
        return root
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        context = f" {exc.context}" if exc.context else ""
        raise _fail(filename, f"invalid YAML: {exc.problem}{context}", line) from exc
    except yaml.YAMLError as exc:
        raise _fail(filename, f"invalid YAML: {str(exc).splitlines()[0]}") from exc
    except RecursionError as exc:  # the pure-Python composer on absurd nesting
        raise _fail(filename, "invalid YAML: nested too deeply") from exc
    finally:
        loader.dispose()


def _check(
    data: Any,
    filename: str,
    lines: dict[str, int],
    issues: list[Issue],
    strict: bool,
    expected_name: str | None = None,
    *,
    fields: Mapping[str, Field] = schema.UNIT_FIELDS,
) -> tuple[UnitSpec, UnitPolicy]:
    clean, shape_issues, bad = check_shape(data, filename, lines, fields)
    issues = issues + shape_issues
    policy_part = {k: clean.pop(k) for k in schema.POLICY_FIELDS if k in clean}
    spec = spec_from_dict(clean)
    if "" not in bad:  # the top level is a mapping: the value rules make sense
        issues += validate_spec(spec, filename, lines, strict=strict, skip=bad)
        if expected_name is not None and "name" not in bad and spec.name != expected_name:
            issues.append(
                Issue(
                    filename,
                    lines.get("name", 0),
                    "name",
                    f"'{spec.name}' does not match its key (expected '{expected_name}')",
                )
            )
        if policy_part:
            issues += [
                Issue(filename, line_of(lines, path), path, reason)
                for path, reason in policy_issues(policy_part, spec, bad)
            ]
    if issues:
        raise SpecError(sorted(set(issues)))
    return spec, policy_from_dict(policy_part) if policy_part else DEFAULT_POLICY


def load_unit(data: bytes, filename: str, *, strict: bool = True) -> UnitSpec:
    """Parse and validate one unit file (YAML or JSON); raise SpecError with every issue.

    Its ``rollout:`` and ``health:`` sections are checked too, and left out of the spec
    (``load_unit_and_policy`` returns them).
    """
    return load_unit_and_policy(data, filename, strict=strict)[0]


def load_unit_and_policy(
    data: bytes, filename: str, *, strict: bool = True
) -> tuple[UnitSpec, UnitPolicy]:
    """A unit file's spec and its rollout policy (the default one if it has none)."""
    text = _decode(data, filename)
    if filename.endswith(".json"):
        text = _join_surrogate_escapes(text)
    root = compose_node(text, filename)
    if isinstance(root, ScalarNode) and root.tag == _TAG + "null":
        raise _fail(filename, "holds no unit (the document is empty)", root.start_mark.line + 1)
    walker = _Walker(filename)
    try:
        plain = walker.walk(root, "", 0)
    except _Abort as exc:
        raise _fail(filename, exc.reason, exc.line) from None
    return _check(plain, filename, walker.lines, walker.issues, strict, fields=schema.FILE_FIELDS)


class _Pairs(dict[str, Any]):
    """A JSON object that remembers keys it saw twice (json keeps the last silently)."""

    duplicates: list[str]


def _pairs(items: list[tuple[str, Any]]) -> _Pairs:
    out = _Pairs()
    out.duplicates = []
    for key, value in items:
        if key in out:
            out.duplicates.append(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_stored(
    value: bytes | str, key: str, expected_name: str | None = None, *, strict: bool = False
) -> UnitSpec:
    """Parse a JSON spec read from etcd; ``key`` names it in issues.

    Validated like a unit file, except that by default (``strict=False``) the placement
    policy (global / machineId / replicas combinations) is not enforced: entries written
    by the Go Kaylee must be adopted, not rejected. Issues carry line 0 (compact JSON).
    """
    data = _json_document(value, key)
    return _check(data, key, {}, [], strict, expected_name)[0]


def parse_stored_policy(value: bytes | str, key: str) -> UnitPolicy:
    """The policy stored at ``key`` (``policy/<name>``); SpecError naming key and field.

    The stored form is the unit file's sections as JSON, so it is checked by the same
    shape and rules (without the spec, which is stored apart).
    """
    data = _json_document(value, key)
    clean, issues, bad = check_shape(data, key, {}, schema.POLICY_FIELDS)
    if "" not in bad:
        issues += [Issue(key, 0, p, r) for p, r in policy_issues(clean, None, bad)]
    if issues:
        raise SpecError(sorted(set(issues)))
    return policy_from_dict(clean)


def _json_document(value: bytes | str, key: str) -> Any:
    if isinstance(value, bytes):
        value = _decode(value, key)
    elif len(value) > MAX_BYTES:
        raise _fail(key, f"is larger than {MAX_BYTES} bytes (1 MiB); refusing to read it")
    try:
        return json.loads(value, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise _fail(key, f"invalid JSON: {exc.msg}", exc.lineno) from exc
    except (ValueError, RecursionError) as exc:
        raise _fail(key, f"invalid JSON: {exc}") from exc
