"""What a check result means (health.checks): pure, fed with the caller's clock."""

from __future__ import annotations

from kaylee_sync.health.checks import (
    CheckState,
    Health,
    combine,
    common_directory,
    healthy_since,
    target_for,
)
from kaylee_sync.spec import HealthPolicy, HttpCheck

VARS = {"KAYLEE_ID": "k2_web_abc123_s1_1", "MACHINE_IP": "10.0.0.7", "PORT": "8080"}


def test_an_instance_is_healthy_from_its_first_pass_until_failures_in_a_row() -> None:
    state = CheckState(failures=3)
    state.record(False, 1.0, "HTTP 503")
    assert state.healthy_since is None
    state.record(True, 2.0)
    state.record(True, 3.0)
    assert state.healthy_since == 2.0
    state.record(False, 4.0, "HTTP 500")
    state.record(False, 5.0, "HTTP 500")
    assert state.healthy_since == 2.0  # two failures of three: still healthy
    state.record(True, 6.0)
    state.record(False, 7.0, "x")
    state.record(False, 8.0, "x")
    state.record(False, 9.0, "refused")
    assert state.healthy_since is None and state.last_error == "refused"
    state.record(True, 10.0)
    assert state.healthy_since == 10.0  # minHealthyTime starts over


def test_every_check_must_pass_and_the_latest_start_counts() -> None:
    http, key = CheckState(healthy_since=5.0, checked=1), CheckState(healthy_since=7.0, checked=1)
    assert combine({"http": http, "etcdKey": key}) == Health(7.0)
    assert combine({"http": CheckState(), "etcdKey": key}).reason == "http check not run yet"
    failing = CheckState(failed_in_row=3, last_error="HTTP 503", checked=4)
    assert combine({"http": failing}) == Health(None, "http check failing: HTTP 503")


def test_running_and_checks_together() -> None:
    assert healthy_since(None, Health(1.0)) is None  # not running: not healthy
    assert healthy_since(3.0, None) == 3.0  # no checks: running is healthy
    assert healthy_since(3.0, Health(8.0)) == 8.0
    assert healthy_since(9.0, Health(8.0)) == 9.0  # restarted after the check passed
    assert healthy_since(3.0, Health(None, "x")) is None


def test_targets_expand_templates_and_wait_for_a_machine() -> None:
    health = HealthPolicy(
        etcd_key="/services/web/${KAYLEE_ID}",
        http=HttpCheck("http://${MACHINE_IP}:${PORT}/h/${KAYLEE_ID}", 5.0, 1.0, 2),
    )
    target = target_for("k2:web:abc123:s1:1.service", "web", health, VARS)
    assert target is not None
    assert target.url == "http://10.0.0.7:8080/h/k2_web_abc123_s1_1"
    assert target.etcd_key == "/services/web/k2_web_abc123_s1_1"
    assert (target.interval, target.timeout, target.failures) == (5.0, 1.0, 2)
    assert target_for("x", "web", health, {**VARS, "MACHINE_IP": ""}) is None
    assert target_for("x", "web", HealthPolicy(), VARS) is None
    only_key = target_for("x", "web", HealthPolicy(etcd_key="/s/${KAYLEE_ID}"), {"KAYLEE_ID": "i"})
    assert only_key is not None and only_key.failures == 1 and not only_key.url


def test_one_directory_read_serves_a_units_keys() -> None:
    keys = ["/services/web/k2_web_a_1", "/services/web/k2_web_b_2"]
    assert common_directory(keys) == "/services/web/"
    assert common_directory(keys[:1]) == "/services/web/"
    assert common_directory(["/a/x", "/b/y"]) == "/"
    assert common_directory([]) == "/"
