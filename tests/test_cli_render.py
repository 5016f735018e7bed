"""``kaylee-sync render``: what fleet will receive for a unit file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from kaylee_sync.cli.sync import cli
from kaylee_sync.unitfile import canonical, text_hash

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample-repo" / "countly.yaml"


def test_render_json_has_the_json_hash_and_every_fleet_unit() -> None:
    result = CliRunner().invoke(cli, ["render", str(SAMPLE), "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"json", "hash", "units"} <= set(doc)
    assert doc["json"].startswith('{"name":"countly","replicas":4,"maxReplicasPerHost":2,')
    assert doc["hash"].startswith("160702") and len(doc["hash"]) == 40
    assert len(doc["units"]) == 4
    for i, unit in enumerate(doc["units"], start=1):
        assert unit["name"].startswith("k2:countly:160702:")
        assert unit["name"].endswith(f":{i}.service")
        # The text is fleet's canonical form and the hash is fleet's hash of it.
        assert canonical(unit["unit_file"]) == unit["unit_file"]
        assert text_hash(unit["unit_file"]) == unit["fleet_unit_hash"]
        assert "MachineMetadata=ssd=false" in unit["unit_file"]
    # maxReplicasPerHost 2: two slots, each used by two instances.
    slots = [u["name"].split(":")[3] for u in doc["units"]]
    assert len(set(slots)) == 2 and slots[0] == slots[2] and slots[1] == slots[3]


def test_render_text_shows_json_hash_and_units() -> None:
    result = CliRunner().invoke(cli, ["render", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    assert "units/countly" in result.stdout
    assert result.stdout.count("# fleet unit k2:countly:160702:") == 4
    assert "ExecStart=/usr/bin/rkt run " in result.stdout


def test_render_restart_generation_changes_the_hash() -> None:
    runner = CliRunner()
    plain = json.loads(runner.invoke(cli, ["render", str(SAMPLE), "--format", "json"]).stdout)
    bumped = json.loads(
        runner.invoke(
            cli, ["render", str(SAMPLE), "--format", "json", "--restart-generation", "1"]
        ).stdout
    )
    assert plain["json"] == bumped["json"]
    assert plain["hash"] != bumped["hash"]


def test_render_of_an_invalid_file_is_an_error_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\napps:\n- image: docker://a\nreplicas: 2\nglobal: true\n")
    result = CliRunner().invoke(cli, ["render", str(bad)])
    assert result.exit_code == 1
    assert str(bad) in result.output and "global" in result.output


def test_render_as_a_subprocess() -> None:
    script = Path(sys.executable).parent / "kaylee-sync"
    done = subprocess.run(
        [str(script) if script.exists() else "kaylee-sync", "render", str(SAMPLE), "--format",
         "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["units"]) == 4


def test_a_unit_whose_exec_start_line_fleet_would_refuse_is_rejected(tmp_path: Path) -> None:
    long_args = "\n".join(f"  - --flag-{i}={'x' * 40}" for i in range(60))
    big = tmp_path / "big.yaml"
    big.write_text(f"name: big\napps:\n- image: docker://a\n  args:\n{long_args}\n")
    result = CliRunner().invoke(cli, ["render", str(big)])
    assert result.exit_code == 1
    assert f"{big}: apps: renders a ExecStart= line of" in result.output


def test_a_reader_closing_the_pipe_early_is_not_reported_as_a_bug() -> None:
    script = Path(sys.executable).parent / "kaylee-sync"
    # The read end is closed before the child (still importing) writes: its first write
    # fails with EPIPE, as under ``kaylee-sync render … | head``.
    child = subprocess.Popen(
        [str(script), "render", str(SAMPLE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read().decode()
    child.stderr.close()
    assert child.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "internal error" not in stderr
