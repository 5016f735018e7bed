"""The validation rules: each one named, with the exact report a user gets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kaylee_sync.errors import SpecError
from kaylee_sync.spec import App, EnvVar, UnitSpec, Volume, load_unit, parse_stored, validate_spec
from tests import vectors as shared_vectors

# These Go-written entries combine global with replicas > 1, which unit files may not
# (kaylee-spec.md, "ours" wins); as etcd entries they must still be adopted.
GLOBAL_WITH_REPLICAS = {
    "rand-20261125-1",
    "rand-20261125-5",
    "rand-20261125-12",
    "rand-20261125-49",
}


def vectors() -> list[dict[str, Any]]:
    return shared_vectors.load("kaylee-go.jsonl")


def unit(**fields: Any) -> UnitSpec:
    base: dict[str, Any] = {"name": "a", "apps": (App("docker://x"),)}
    return UnitSpec(**{**base, **fields})


def problems(spec: UnitSpec) -> list[str]:
    return [str(i) for i in validate_spec(spec, "a.yaml")]


def issues(text: str) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_unit(text.encode(), "u.yaml")
    return [str(i) for i in exc.value.issues]


@pytest.mark.parametrize("vector", vectors(), ids=lambda v: str(v["id"]))
def test_every_go_vector_is_a_valid_stored_entry(vector: dict[str, Any]) -> None:
    stored = vector["stored"]
    spec = parse_stored(json.dumps(stored), f"units/{stored['name']}", stored["name"])
    assert validate_spec(spec, "v", strict=False) == []
    if vector["id"] not in GLOBAL_WITH_REPLICAS:
        assert validate_spec(spec, "v") == []
        assert load_unit(json.dumps(stored).encode(), "v.json") == spec


def test_go_vectors_with_global_replicas_are_refused_as_unit_files() -> None:
    refused = set()
    for vector in vectors():
        spec = parse_stored(json.dumps(vector["stored"]), "units/x")
        found = problems(spec)
        if found:
            refused.add(vector["id"])
            assert found == [
                "a.yaml: global: a global unit runs once per machine; it cannot have "
                f"replicas: {spec.replicas}"
            ]
    assert refused == GLOBAL_WITH_REPLICAS


def test_a_spec_built_in_code_is_checked_without_lines() -> None:
    assert problems(unit()) == []
    assert problems(unit(name="", apps=())) == [
        "a.yaml: apps: at least one app is required",
        "a.yaml: name: 'name' is required",
    ]


@pytest.mark.parametrize("name", ["a/b", "a:b", "a*", "-a", ".a", "a b", "x" * 65, "é"])
def test_names_that_cannot_be_keys_or_unit_names_are_refused(name: str) -> None:
    assert problems(unit(name=name)) == [
        "a.yaml: name: must be 1-64 letters, digits, '_', '.' or '-', starting with a letter "
        "or digit (it becomes an etcd key and a systemd unit name)"
    ]


def test_apps_need_a_non_empty_image_without_whitespace() -> None:
    text = "name: a\napps:\n  - image: ''\n  - image: 'a b'\n  - image: 'x\\'\n  - image: ' x'\n"
    assert issues(text) == [
        "u.yaml:3: apps[0].image: 'image' is required and must not be empty",
        "u.yaml:4: apps[1].image: must not contain whitespace (it is one argument of rkt)",
        "u.yaml:5: apps[2].image: must not end with a backslash "
        "(systemd reads it as a line continuation)",
        "u.yaml:6: apps[3].image: must not start or end with whitespace (fleet trims unit lines)",
    ]
    assert issues("name: a\napps: []\n") == ["u.yaml:2: apps: at least one app is required"]


def test_replicas_range_and_max_per_host() -> None:
    assert problems(unit(replicas=1001)) == [
        "a.yaml: replicas: must be between 0 and 1000, got 1001"
    ]
    assert problems(unit(replicas=-1)) == ["a.yaml: replicas: must be between 0 and 1000, got -1"]
    assert problems(unit(replicas=2, max_replicas_per_host=3)) == [
        "a.yaml: maxReplicasPerHost: must not exceed replicas (2), got 3"
    ]
    assert problems(unit(replicas=2, max_replicas_per_host=-1)) == [
        "a.yaml: maxReplicasPerHost: must be at least 1, got -1"
    ]
    assert problems(unit(max_replicas_per_host=1)) == [
        "a.yaml: maxReplicasPerHost: only applies to replica units; set 'replicas' too"
    ]
    # 0 is how "absent" is stored (Go's omitempty): the default, replicas.
    assert problems(unit(replicas=2, max_replicas_per_host=0)) == []
    assert problems(unit(replicas=1000, max_replicas_per_host=1000)) == []


def test_engine_is_empty_or_rkt() -> None:
    assert problems(unit(engine="rkt")) == []
    assert problems(unit(engine="docker")) == [
        "a.yaml: engine: unknown engine 'docker'; the only engine is 'rkt'"
    ]


def test_global_and_machine_id_placement_rules() -> None:
    text = "name: a\nreplicas: 2\nglobal: true\nmachineId: ab12\napps: [{image: x}]\n"
    assert issues(text) == [
        "u.yaml:3: global: a global unit cannot also be pinned with 'machineId'",
        "u.yaml:3: global: a global unit runs once per machine; it cannot have replicas: 2",
        "u.yaml:4: machineId: a unit pinned to one machine cannot have replicas: 2",
    ]
    assert problems(unit(global_=True, replicas=1)) == []
    assert problems(unit(machine_id="ab12", replicas=1)) == []


def test_cross_field_rules_stay_quiet_when_the_other_field_is_already_wrong() -> None:
    text = "name: a\nreplicas: many\nmaxReplicasPerHost: 2\nglobal: true\napps: [{image: x}]\n"
    assert issues(text) == ["u.yaml:2: replicas: expected an integer, got a string"]


def test_machine_id_is_hexadecimal() -> None:
    assert problems(unit(machine_id="not hex")) == [
        "a.yaml: machineId: must be a machine ID: hexadecimal digits as in /etc/machine-id"
    ]


def test_env_names_are_shell_identifiers_and_values_stay_on_one_line() -> None:
    text = 'name: a\nenv:\n  - {name: A-B, value: x}\n  - {name: B, value: "x\\ny"}\n'
    text += (
        '  - {name: C, value: "x\\ry"}\n  - {name: D, value: "\\0"}\n  - {name: E, value: "\\e"}\n'
    )
    text += "apps: [{image: x}]\n"
    assert issues(text) == [
        "u.yaml:3: env[0].name: must be a shell identifier (letters, digits, '_'; "
        "not starting with a digit)",
        "u.yaml:4: env[1].value: must not contain control character '\\n' "
        "(it would break the unit file)",
        "u.yaml:5: env[2].value: must not contain control character '\\r' "
        "(it would break the unit file)",
        "u.yaml:6: env[3].value: must not contain control character '\\x00' "
        "(it would break the unit file)",
        "u.yaml:7: env[4].value: must not contain control character '\\x1b' "
        "(it would break the unit file)",
    ]
    assert issues("name: a\napps: [{image: x}]\nenv: [{value: x}]\n") == [
        "u.yaml:3: env[0].name: 'name' is required"
    ]


def test_tabs_unicode_quotes_and_escapes_are_allowed_in_free_text() -> None:
    value = 'a\t<b>&c "q" back\\slash \u2028 é ✓ $$ 100%'
    spec = unit(
        env=(EnvVar("Q", value),),
        args=(value, " leading and trailing "),
        apps=(App("docker://x", cmd=value, args=(value, "\\")),),
    )
    assert problems(spec) == []


@pytest.mark.parametrize("field", ["args", "conflicts", "machine", "envFiles"])
def test_newlines_are_refused_in_every_list(field: str) -> None:
    text = f'name: a\napps: [{{image: x}}]\n{field}: ["/x\\ny"]\n'
    assert f"u.yaml:3: {field}[0]: must not contain control character '\\n' " in issues(text)[0]


def test_newlines_are_refused_in_app_args_and_cmd() -> None:
    text = 'name: a\napps:\n  - image: x\n    cmd: "a\\nb"\n    args: ["\\n"]\n'
    assert issues(text) == [
        "u.yaml:4: apps[0].cmd: must not contain control character '\\n' "
        "(it would break the unit file)",
        "u.yaml:5: apps[0].args[0]: must not contain control character '\\n' "
        "(it would break the unit file)",
    ]


def test_conflicts_are_names_or_globs() -> None:
    assert problems(unit(conflicts=("db-*", "a?[bc]"))) == []
    reason = "must be a non-empty unit name or glob without whitespace, ':' or '/'"
    assert problems(unit(conflicts=("", "a b", "k2:x", "a/b"))) == [
        f"a.yaml: conflicts[{i}]: {reason}" for i in range(4)
    ]


def test_machine_entries_are_key_value_pairs() -> None:
    assert problems(unit(machine=("ssd=true", "region=eu-west-1"))) == []
    reason = "must be 'key=value' without whitespace or '\"'"
    assert problems(unit(machine=("ssd", "a = b", 'a="b"', "=b", "a="))) == [
        f"a.yaml: machine[{i}]: {reason}" for i in range(5)
    ]
    assert problems(unit(machine=("a=b\\",))) == [
        "a.yaml: machine[0]: must not end with a backslash "
        "(systemd reads it as a line continuation)"
    ]


def test_env_files_are_absolute_and_end_the_line_cleanly() -> None:
    assert problems(unit(env_files=("/etc/environment", "/etc/my env"))) == []
    assert problems(unit(env_files=("etc/x", "/etc/x ", "/etc/x\\"))) == [
        "a.yaml: envFiles[0]: must be an absolute path",
        "a.yaml: envFiles[1]: must not start or end with whitespace (fleet trims unit lines)",
        "a.yaml: envFiles[2]: must not end with a backslash "
        "(systemd reads it as a line continuation)",
    ]


def test_net_has_no_whitespace() -> None:
    assert problems(unit(net="flannel,default")) == []
    assert problems(unit(net="flannel default")) == ["a.yaml: net: must not contain whitespace"]


def test_volume_kinds_and_their_required_fields() -> None:
    text = """\
name: a
apps: [{image: x}]
volumes:
  - {source: /srv/data, path: /data}
  - {path: /data}
  - {driver: nfs, source: exports, path: /d}
  - {source: /srv}
  - {source: srv, path: data}
"""
    assert issues(text) == [
        "u.yaml:5: volumes[1].source: 'source' is required for a host volume (no driver)",
        "u.yaml:6: volumes[2].id: 'id' is required when a driver is set",
        "u.yaml:7: volumes[3].path: 'path' is required",
        "u.yaml:8: volumes[4].path: must be an absolute path",
        "u.yaml:8: volumes[4].source: must be an absolute host path",
    ]


def test_volume_ids_and_drivers_cannot_escape_their_directories() -> None:
    def vol(**kw: str) -> UnitSpec:
        return unit(volumes=(Volume(path="/d", source="s", **kw),))

    assert problems(vol(id="vol-1.a@b", driver="systemd-mountservice-ebs")) == []
    assert problems(vol(id=".H", driver="nfs")) == []  # a Go vector uses such an id
    id_reason = (
        "must be letters, digits, '_', '.', '@' or '-', not starting with '-' "
        "and not '.' or '..' (it names a file and a systemd unit)"
    )
    driver_reason = (
        "must be letters, digits, '_', '.', '@' or '-', starting with a letter or "
        "digit (it names a file and a systemd unit)"
    )
    for bad_id in ("..", ".", "-u", "a/b", "a b"):
        assert problems(vol(id=bad_id, driver="nfs")) == [f"a.yaml: volumes[0].id: {id_reason}"]
    for bad_driver in ("../x", "..", "a/b", "-x", "a b"):
        assert problems(vol(id="v", driver=bad_driver)) == [
            f"a.yaml: volumes[0].driver: {driver_reason}"
        ]
    assert problems(vol(id="v", driver="systemd-mountservice-")) == [
        "a.yaml: volumes[0].driver: names no service after 'systemd-mountservice-'"
    ]


def test_volume_sources_paths_and_options() -> None:
    def vol(**kw: str) -> UnitSpec:
        return unit(volumes=(Volume(**{"path": "/d", **kw}),))

    assert problems(vol(source="/my data", path="/my path")) == []  # quoted when rendered
    assert problems(vol(id="v", driver="nfs")) == []  # no source, no options: fine
    assert problems(vol(source="/a,readOnly=false")) == [
        "a.yaml: volumes[0].source: must not contain ',' (it separates rkt volume options)"
    ]
    assert problems(vol(id="v", driver="nfs", source="../../etc")) == [
        "a.yaml: volumes[0].source: must not contain whitespace or '..'"
    ]
    assert problems(vol(id="v", driver="nfs", path="/a b")) == [
        "a.yaml: volumes[0].path: must not contain whitespace when a driver is set"
    ]
    assert problems(vol(id="v", driver="nfs", options="-o ro ")) == [
        "a.yaml: volumes[0].options: must not start or end with whitespace (fleet trims unit lines)"
    ]
    assert problems(vol(id="v", driver="nfs", options="-o ro\\")) == [
        "a.yaml: volumes[0].options: must not end with a backslash "
        "(systemd reads it as a line continuation)"
    ]
