"""``kaylee-sync import-v2`` against the real etcd's v2 keyspace, as the Go Kaylee left it.

The entries are written with the v2 keys API (the test etcd runs with --enable-v2), the
fleet units with the registry driver, exactly as fleet keeps them.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from kaylee_sync.cli.sync import cli
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.render import render_units
from kaylee_sync.source.localfile import load_unit_file
from kaylee_sync.spec import parse_stored, to_json

from .test_cli_kaylee import SAMPLE_JSON

WEB = '{"name":"web","replicas":2,"apps":[{"image":"docker://nginx:1.25"}]}'
BAD = '{"name":"bad","global":true,"replicas":3,"apps":[{"image":"docker://x"}]}'


def test_import_v2_writes_each_entry_as_a_unit_file_with_the_same_spec_hash(
    client: Etcd2Client, etcd_endpoint: str, prefix: str, tmp_path: Path
) -> None:
    kaylee = prefix + "/kaylee2"
    fleet_prefix = prefix + "/fleet/"
    client.set(f"{kaylee}/units/countly", SAMPLE_JSON)
    client.set(f"{kaylee}/units/web", WEB)
    client.set(f"{kaylee}/units/bad", BAD)
    # fleet runs the README sample as the Go Kaylee started it, and an older web
    fleet = RegistryDriver(client, fleet_prefix)
    for unit in render_units(parse_stored(SAMPLE_JSON, "countly")):
        fleet.create_unit(unit.name, unit.options)
    old_web = parse_stored(WEB.replace("1.25", "1.24"), "web")
    fleet.create_unit(render_units(old_web)[0].name, render_units(old_web)[0].options)

    out = tmp_path / "units"
    args = ["import-v2", "--from", etcd_endpoint.removeprefix("http://"), str(out)]
    args += ["--prefix", kaylee, "--fleet-prefix", fleet_prefix]
    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 1  # one invalid entry
    assert sorted(p.name for p in out.iterdir()) == ["bad.yaml", "countly.yaml", "web.yaml"]
    assert to_json(load_unit_file(out / "countly.yaml")) == SAMPLE_JSON
    assert to_json(load_unit_file(out / "web.yaml")) == WEB
    assert not (out / "countly.yaml").read_text().startswith("{")  # YAML, for people
    lines = result.stdout.splitlines()
    assert any("countly.yaml: spec hash 160702, as the running fleet units" in ln for ln in lines)
    assert any("web.yaml: spec hash" in ln and "MISMATCH" in ln for ln in lines)
    assert any("bad.yaml: INVALID" in ln for ln in lines)
    assert (out / "bad.yaml").read_text().strip() == BAD  # as stored, to be fixed by hand
    assert "Traceback" not in result.output

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "exists; use --force" in again.output


def test_import_v2_says_when_there_is_no_kaylee_keyspace(
    etcd_endpoint: str, prefix: str, tmp_path: Path
) -> None:
    args = ["import-v2", "--from", etcd_endpoint, "--prefix", prefix + "/none", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "no " + prefix + "/none/units" in result.output
