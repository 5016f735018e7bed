"""Loading unit files and etcd entries: YAML/JSON parsing, limits, and the report format."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from kaylee_sync.errors import SpecError
from kaylee_sync.source.localfile import load_unit_file
from kaylee_sync.spec import App, EnvVar, UnitSpec, load_unit, parse_stored
from kaylee_sync.spec.loader import _LOADER, MAX_BYTES

GOOD = b"""\
name: web
replicas: 2
env:
  - name: GREETING
    value: "hello, world"
apps:
  - image: docker://nginx:1.25
    args: ["--port 80"]
"""


def issues(data: bytes | str, filename: str = "u.yaml") -> list[str]:
    """The issues ``load_unit`` reports, as the user sees them."""
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(SpecError) as exc:
        load_unit(raw, filename)
    return [str(i) for i in exc.value.issues]


def test_valid_yaml_becomes_a_unit_spec() -> None:
    assert load_unit(GOOD, "web.yaml") == UnitSpec(
        name="web",
        replicas=2,
        env=(EnvVar("GREETING", "hello, world"),),
        apps=(App("docker://nginx:1.25", args=("--port 80",)),),
    )


def test_json_file_loads_through_the_same_path_with_lines() -> None:
    text = '{\n  "name": "web",\n  "replicas": "2",\n  "apps": [{"image": "docker://x"}]\n}\n'
    assert load_unit(text.replace('"2"', "2").encode(), "web.json").replicas == 2
    assert issues(text, "web.json") == ["web.json:3: replicas: expected an integer, got a string"]


def test_json_files_may_escape_characters_beyond_the_bmp() -> None:
    # json.dumps writes "\ud83d\ude00" (a surrogate pair) for 😀, which libyaml refuses.
    data = {"name": "a", "apps": [{"image": "x", "cmd": "😀", "args": ["\\ud83d\\ude00"]}]}
    spec = load_unit(json.dumps(data).encode(), "a.json")
    assert spec.apps[0].cmd == "😀"
    assert spec.apps[0].args == ("\\ud83d\\ude00",)  # an escaped backslash stays text
    (issue,) = issues(b'{"name": "a", "apps": [{"image": "x", "cmd": "\\ud800"}]}', "a.json")
    assert issue.startswith("a.json:1: invalid YAML: found invalid Unicode character escape")


def test_every_issue_of_a_file_is_reported_together() -> None:
    text = """\
name: "bad name"
replicas: 2000
maxReplicaPerHost: 2
env:
  - name: 1X
    value: ok
apps:
  - cmd: /bin/true
"""
    assert issues(text) == [
        "u.yaml:1: name: must be 1-64 letters, digits, '_', '.' or '-', starting with a letter"
        " or digit (it becomes an etcd key and a systemd unit name)",
        "u.yaml:2: replicas: must be between 0 and 1000, got 2000",
        "u.yaml:3: maxReplicaPerHost: unknown field 'maxReplicaPerHost'; "
        "did you mean 'maxReplicasPerHost'?",
        "u.yaml:5: env[0].name: must be a shell identifier (letters, digits, '_'; "
        "not starting with a digit)",
        "u.yaml:8: apps[0].image: 'image' is required",
    ]


def test_unknown_key_suggests_the_closest_field_whatever_the_case() -> None:
    text = "name: a\napps: [{image: x}]\nmachineID: abc\n"
    assert issues(text) == [
        "u.yaml:3: machineID: unknown field 'machineID'; did you mean 'machineId'?"
    ]
    assert issues("name: a\napps: [{image: x, imgae: y}]\n") == [
        "u.yaml:2: apps[0].imgae: unknown field 'imgae'; did you mean 'image'?"
    ]
    assert issues("name: a\napps: [{image: x}]\nzzz: 1\n") == ["u.yaml:3: zzz: unknown field 'zzz'"]


def test_duplicate_keys_are_errors_not_silently_last_wins() -> None:
    text = "name: a\napps: [{image: x}]\nname: b\n"
    assert issues(text) == ["u.yaml:3: name: duplicate key 'name' (first at line 1)"]
    nested = "name: a\napps:\n  - image: x\n    image: y\n"
    assert issues(nested) == ["u.yaml:4: apps[0].image: duplicate key 'image' (first at line 3)"]


def test_yes_no_on_off_in_a_string_field_ask_for_quotes() -> None:
    text = "name: a\nenv:\n  - name: DEBUG\n    value: yes\napps: [{image: x}]\n"
    assert issues(text) == [
        "u.yaml:4: env[0].value: expected a string, got a boolean "
        "(yes/no/on/off/true/false are booleans in YAML; quote the value)"
    ]


def test_numbers_and_dates_in_string_fields_ask_for_quotes() -> None:
    text = "name: 1234\nnet: 2020-01-01\napps: [{image: x, args: [1.5]}]\n"
    assert issues(text) == [
        "u.yaml:1: name: expected a string, got a number (quote the value)",
        "u.yaml:2: net: expected a string, got a date/time (quote the value)",
        "u.yaml:3: apps[0].args[0]: expected a string, got a number (quote the value)",
    ]


def test_integer_fields_refuse_strings_bools_and_fractions() -> None:
    text = "name: a\nreplicas: '3'\nmaxReplicasPerHost: yes\napps: [{image: x}]\n"
    assert issues(text) == [
        "u.yaml:2: replicas: expected an integer, got a string",
        "u.yaml:3: maxReplicasPerHost: expected an integer, got a boolean",
    ]
    assert issues("name: a\nreplicas: 2.0\napps: [{image: x}]\n") == [
        "u.yaml:2: replicas: expected an integer, got a number"
    ]


def test_boolean_field_refuses_a_string() -> None:
    assert issues("name: a\nglobal: 'true'\napps: [{image: x}]\n") == [
        "u.yaml:2: global: expected a boolean (true or false), got a string"
    ]


def test_lists_and_mappings_are_checked_and_missing_keys_point_at_their_parent() -> None:
    text = "name: a\nargs: --x\nenv: [JUST_A_NAME]\napps:\n  - cmd: x\n"
    assert issues(text) == [
        "u.yaml:2: args: expected a list of strings, got a string",
        "u.yaml:3: env[0]: expected a mapping, got a string",
        "u.yaml:5: apps[0].image: 'image' is required",
    ]
    assert issues("replicas: 1\n") == [
        "u.yaml:1: apps: 'apps' is required",
        "u.yaml:1: name: 'name' is required",
    ]


def test_empty_values_are_reported_as_empty() -> None:
    assert issues("name:\napps: [{image: x}]\n") == [
        "u.yaml:1: name: expected a string, got nothing (an empty value); "
        "give a value or remove the key"
    ]


def test_empty_file_and_null_document_are_refused() -> None:
    assert issues(b"") == ["u.yaml: is empty; a unit file needs at least 'name' and 'apps'"]
    assert issues(b"# only a comment\n") == [
        "u.yaml: is empty; a unit file needs at least 'name' and 'apps'"
    ]
    assert issues(b"---\n~\n") == ["u.yaml:2: holds no unit (the document is empty)"]


def test_top_level_must_be_a_mapping() -> None:
    assert issues(b"- name: a\n") == [
        "u.yaml:1: expected a mapping of fields at the top level, got a list"
    ]


def test_multi_document_files_are_refused() -> None:
    text = b"name: a\napps: [{image: x}]\n---\nname: b\napps: [{image: y}]\n"
    assert issues(text) == [
        "u.yaml:4: holds more than one YAML document ('---'); put one unit in each file"
    ]


def test_syntax_errors_name_the_line() -> None:
    (issue,) = issues(b"name: a\napps: [{image: x}\n")
    assert issue.startswith("u.yaml:3: invalid YAML: ")


def test_billion_laughs_fails_fast() -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = ("\n".join(lines) + "\nname: x\napps: [{image: x}]\n").encode()
    start = time.perf_counter()
    result = issues(bomb)
    assert time.perf_counter() - start < 5  # 10**9 expanded nodes would take hours
    assert len(result) == 1
    assert result[0].endswith(": YAML aliases expand to too many nodes")


def test_small_aliases_are_fine() -> None:
    text = b"name: a\napps:\n  - image: x\n    args: &common [--a, --b]\nargs: *common\n"
    assert load_unit(text, "u.yaml").args == ("--a", "--b")


def test_merge_keys_are_refused_with_a_reason() -> None:
    text = "name: a\nbase: &b {net: host}\n<<: *b\napps: [{image: x}]\n"
    assert issues(text) == [
        "u.yaml:2: base: unknown field 'base'",
        "u.yaml:3: <<: YAML merge keys ('<<') are not supported; write the fields out",
    ]


def test_integers_too_long_to_convert_are_refused() -> None:
    text = "name: a\nreplicas: 1" + "0" * 5000 + "\napps: [{image: x}]\n"
    assert issues(text) == ["u.yaml:2: replicas: number too large to read"]


def test_non_standard_tags_are_refused() -> None:
    text = "name: !!python/object:os.system x\napps: !!set {a: null}\n"
    assert issues(text) == [
        "u.yaml:1: name: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system';"
        " use plain values",
        "u.yaml:2: apps: unsupported YAML tag 'tag:yaml.org,2002:set'; "
        "use plain lists and mappings",
    ]


def test_non_string_keys_are_refused() -> None:
    assert issues("name: a\napps: [{image: x}]\non: 1\n") == [
        "u.yaml:3: on: key 'on' is read as a boolean in YAML; field names are strings"
    ]


def test_deep_nesting_is_refused() -> None:
    text = "name: a\napps: [{image: x}]\nargs: " + "[" * 40 + "]" * 40 + "\n"
    assert issues(text) == ["u.yaml:3: nested more than 32 levels deep"]


def test_files_over_one_mib_are_refused_before_parsing() -> None:
    data = GOOD + b"#" * MAX_BYTES
    assert issues(data) == ["u.yaml: is larger than 1048576 bytes (1 MiB); refusing to read it"]


def test_nul_bytes_and_invalid_utf8_are_refused() -> None:
    assert issues(b"name: a\napps: [{image: x\x00}]\n") == [
        "u.yaml:2: contains a NUL byte; unit files are UTF-8 text"
    ]
    assert issues(b"name: a\n\nnet: \xff\n") == ["u.yaml:3: is not valid UTF-8 text"]


def test_load_unit_file_reads_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_bytes(GOOD)
    assert load_unit_file(path).name == "web"
    with pytest.raises(SpecError) as exc:
        path.write_bytes(b"name: web\n")
        load_unit_file(path, display_name="units/web.yaml")
    assert [str(i) for i in exc.value.issues] == ["units/web.yaml:1: apps: 'apps' is required"]


def file_issues(path: Path) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_unit_file(path, display_name="x.yaml")
    return [str(i) for i in exc.value.issues]


def test_symlinks_are_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_bytes(GOOD)
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert file_issues(link) == ["x.yaml: is a symbolic link; unit files must be regular files"]


def test_directories_fifos_and_missing_files_are_refused(tmp_path: Path) -> None:
    assert file_issues(tmp_path) == ["x.yaml: is not a regular file"]
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert file_issues(fifo) == ["x.yaml: is not a regular file"]
    assert file_issues(tmp_path / "missing.yaml") == [
        "x.yaml: cannot be read: No such file or directory"
    ]


def test_big_files_are_refused_by_size_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: refused on its size, never read
    assert file_issues(path) == [
        "x.yaml: is larger than 1048576 bytes (1 MiB); refusing to read it"
    ]


def stored_issues(
    value: bytes | str, expected_name: str | None = None, *, strict: bool = False
) -> list[str]:
    with pytest.raises(SpecError) as exc:
        parse_stored(value, "units/a", expected_name, strict=strict)
    return [str(i) for i in exc.value.issues]


def test_parse_stored_reads_go_json() -> None:
    value = b'{"name":"a","env":[{"name":"X","value":"\\u003c\\u2028"}],"apps":[{"image":"x"}]}'
    assert parse_stored(value, "units/a", "a").env == (EnvVar("X", "<\u2028"),)


def test_parse_stored_checks_the_name_against_the_key() -> None:
    value = '{"name":"b","apps":[{"image":"x"}]}'
    assert stored_issues(value, expected_name="a") == [
        "units/a: name: 'b' does not match its key (expected 'a')"
    ]


def test_parse_stored_reports_every_issue_without_lines() -> None:
    value = json.dumps({"name": "a", "replicas": "2", "apps": [{}], "extra": 1})
    assert stored_issues(value) == [
        "units/a: apps[0].image: 'image' is required",
        "units/a: extra: unknown field 'extra'",
        "units/a: replicas: expected an integer, got a string",
    ]


def test_parse_stored_refuses_bad_json_duplicates_and_nan() -> None:
    assert stored_issues('{"name": "a",\n "apps": [}') == [
        "units/a:2: invalid JSON: Expecting value"
    ]
    assert stored_issues('{"name":"a","name":"a","apps":[{"image":"x"}]}') == [
        "units/a: name: duplicate key 'name'"
    ]
    assert stored_issues('{"name":"a","replicas":NaN,"apps":[{"image":"x"}]}') == [
        "units/a: invalid JSON: NaN is not a JSON number"
    ]
    assert stored_issues(b"\xff") == ["units/a:1: is not valid UTF-8 text"]


def test_parse_stored_refuses_lone_surrogates() -> None:
    value = '{"name":"a","apps":[{"image":"x","cmd":"\\ud800"}]}'
    assert stored_issues(value) == [
        "units/a: apps[0].cmd: must not contain a lone surrogate (it would break the unit file)"
    ]


def test_parse_stored_adopts_go_placement_that_unit_files_may_not_use() -> None:
    # The Go Kaylee accepted global units with replicas; their etcd entries stay readable.
    value = '{"name":"a","replicas":3,"apps":[{"image":"x"}],"global":true}'
    assert parse_stored(value, "units/a").global_
    assert stored_issues(value, strict=True) == [
        "units/a: global: a global unit runs once per machine; it cannot have replicas: 3"
    ]


# -- the fast composer gives PyYAML's safe loader's tags -------------------------------

_TAG_CORPUS = [
    "a: yes\nb: No\nc: on\nd: OFF\ne: y\nf: n\ng: true\nh: ~\ni: null\nj:\n",
    "a: 010\nb: 0o17\nc: 0x1f\nd: 1_000\ne: 1:30\nf: -0\ng: +1.5e3\nh: .inf\ni: .NaN\n",
    "a: 2024-01-01\nb: 2024-01-01T10:00:00Z\nc: <<\nd: =\ne: '~'\nf: \"yes\"\n",
    "- [a, 1, {b: c}]\n- !!str 1\n- !!map {a: b}\n- !!seq [x]\n- ? [k]\n  : v\n",
    "base: &b {net: host}\n<<: *b\nlist: &l [1, 2]\nagain: *l\nempty: {}\nnone: []\n",
    "--- !!set\n? a\n? b\n",
    "name: web-00001\napps:\n  - image: docker://x:1\n    args: [--port 80, -v, '1']\n",
]


def _tags(node: Node) -> object:
    """A composed node tree as plain data: tags, values and where each node starts."""
    mark = (node.start_mark.line, node.start_mark.column)
    if isinstance(node, MappingNode):
        return (node.tag, mark, [(_tags(key), _tags(value)) for key, value in node.value])
    if isinstance(node, SequenceNode):
        return (node.tag, mark, [_tags(item) for item in node.value])
    return (node.tag, mark, node.value)


@pytest.mark.parametrize("text", _TAG_CORPUS)
def test_the_fast_composer_tags_like_the_safe_loader(text: str) -> None:
    stock = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    assert _LOADER is not stock  # the fast composer is in use: this compares something
    ours = [_tags(node) for node in yaml.compose_all(text, Loader=_LOADER)]
    theirs = [_tags(node) for node in yaml.compose_all(text, Loader=stock)]
    assert ours == theirs
    assert ours == [_tags(node) for node in yaml.compose_all(text, Loader=yaml.SafeLoader)]
