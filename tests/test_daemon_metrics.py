"""The daemon's metrics, read back the way Prometheus reads them: by scraping /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kaylee_sync.daemon.fleetmeter import MeteredFleet
from kaylee_sync.daemon.http import HttpServer
from kaylee_sync.daemon.metrics import ERROR_STAGES, UNIT_STATES, Metrics
from kaylee_sync.daemon.triggers import SyncQueue
from kaylee_sync.errors import FleetNotFound
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.unitfile import parse

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Scrape = Callable[[], Samples]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def scrape(metrics: Metrics) -> Iterator[Scrape]:
    server = HttpServer(
        "127.0.0.1:0",
        queue=SyncQueue(),
        metrics=metrics,
        health=lambda: (True, ""),
        ready=lambda: (True, ""),
        webhook_secret=None,
    )
    server.start()
    client = httpx.Client(base_url=server.url, timeout=5)

    def get() -> Samples:
        response = client.get("/metrics")
        assert response.status_code == 200
        samples: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    yield get
    client.close()
    server.stop()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_series_exists_at_zero_before_anything_happens(scrape: Scrape) -> None:
    samples = scrape()
    for state in UNIT_STATES:
        assert value(samples, "kaylee_sync_units", state=state) == 0
    for stage in ERROR_STAGES:
        assert value(samples, "kaylee_sync_errors_total", stage=stage) == 0
    for result in ("ok", "partial", "error"):
        assert value(samples, "kaylee_sync_syncs_total", result=result) == 0
    assert value(samples, "kaylee_sync_rollouts", phase="rolling") == 0
    assert value(samples, "kaylee_sync_leader") == 0
    assert value(samples, "kaylee_sync_prunes_refused_total") == 0
    assert value(samples, "kaylee_sync_invalid_files") == 0
    assert value(samples, "kaylee_sync_sync_duration_seconds_count") == 0
    # process metrics come with our own registry too
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


def test_a_sync_records_commit_time_lag_duration_and_the_plan(
    metrics: Metrics, scrape: Scrape
) -> None:
    metrics.observe_sync(0.1, "start", None, {}, 0, False)  # the commit synced at start
    metrics.observe_sync(
        0.42,
        "0123456789abcdef0123456789abcdef01234567",
        3.5,
        {"create": 2, "update": 1, "unchanged": 7},
        0,
        False,
        now=1_700_000_000.0,
    )
    samples = scrape()
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert value(samples, "kaylee_sync_last_synced_commit_info", commit=commit) == 1
    assert value(samples, "kaylee_sync_last_success_timestamp_seconds") == 1_700_000_000.0
    assert value(samples, "kaylee_sync_commit_lag_seconds") == 3.5
    assert value(samples, "kaylee_sync_sync_duration_seconds_count") == 2
    assert value(samples, "kaylee_sync_sync_duration_seconds_sum") == pytest.approx(0.52)
    assert value(samples, "kaylee_sync_sync_duration_seconds_bucket", le="0.5") == 2
    assert value(samples, "kaylee_sync_sync_duration_seconds_bucket", le="0.25") == 1
    assert value(samples, "kaylee_sync_units", state="create") == 2
    assert value(samples, "kaylee_sync_units", state="update") == 1
    assert value(samples, "kaylee_sync_units", state="unchanged") == 7
    assert value(samples, "kaylee_sync_units", state="delete") == 0
    assert value(samples, "kaylee_sync_syncs_total", result="ok") == 2


def test_the_next_sync_replaces_commit_and_counts(metrics: Metrics, scrape: Scrape) -> None:
    metrics.observe_sync(0.1, "start", None, {}, 0, False)  # the commit synced at start
    metrics.observe_sync(0.1, "aaaa", 1.0, {"create": 5}, 0, False)
    metrics.observe_sync(0.1, "bbbb", None, {"unchanged": 5}, 0, False)
    samples = scrape()
    info = [labels for name, labels in samples if name == "kaylee_sync_last_synced_commit_info"]
    assert info == [(("commit", "bbbb"),)]
    assert value(samples, "kaylee_sync_units", state="create") == 0
    assert value(samples, "kaylee_sync_units", state="unchanged") == 5
    assert value(samples, "kaylee_sync_commit_lag_seconds") == 1.0  # None: left as it was
    assert value(samples, "kaylee_sync_syncs_total", result="ok") == 3


def test_invalid_files_and_a_refused_prune_make_a_partial_sync(
    metrics: Metrics, scrape: Scrape
) -> None:
    counts = {"invalid": 2, "prune-refused": 3, "unchanged": 4}
    metrics.observe_sync(0.2, "cccc", 2.0, counts, 2, True)
    metrics.observe_sync(0.2, "cccc", 2.0, counts, 2, True)
    samples = scrape()
    assert value(samples, "kaylee_sync_invalid_files") == 2
    assert value(samples, "kaylee_sync_prunes_refused_total") == 2
    assert value(samples, "kaylee_sync_units", state="prune-refused") == 3
    assert value(samples, "kaylee_sync_syncs_total", result="partial") == 2
    assert value(samples, "kaylee_sync_syncs_total", result="ok") == 0


def test_errors_are_counted_by_stage_and_unknown_stages_are_other(
    metrics: Metrics, scrape: Scrape
) -> None:
    metrics.error("git")
    metrics.error("git")
    metrics.error("etcd")
    metrics.error("something new")
    metrics.sync_failed(1.5, "fleet")
    samples = scrape()
    assert value(samples, "kaylee_sync_errors_total", stage="git") == 2
    assert value(samples, "kaylee_sync_errors_total", stage="etcd") == 1
    assert value(samples, "kaylee_sync_errors_total", stage="fleet") == 1
    assert value(samples, "kaylee_sync_errors_total", stage="other") == 1
    assert value(samples, "kaylee_sync_syncs_total", result="error") == 1
    assert value(samples, "kaylee_sync_sync_duration_seconds_count") == 1
    assert ("kaylee_sync_errors_total", (("stage", "something new"),)) not in samples


def test_leadership_is_a_zero_or_one_gauge(metrics: Metrics, scrape: Scrape) -> None:
    metrics.set_leader(True)
    assert value(scrape(), "kaylee_sync_leader") == 1
    metrics.set_leader(False)
    assert value(scrape(), "kaylee_sync_leader") == 0


def test_rollouts_by_phase_keep_absent_phases_at_zero(metrics: Metrics, scrape: Scrape) -> None:
    metrics.set_rollouts({"rolling": 2, "steady": 10, "brand-new-phase": 1})
    samples = scrape()
    assert value(samples, "kaylee_sync_rollouts", phase="rolling") == 2
    assert value(samples, "kaylee_sync_rollouts", phase="steady") == 10
    assert value(samples, "kaylee_sync_rollouts", phase="brand-new-phase") == 1
    metrics.set_rollouts({"steady": 12})
    samples = scrape()
    assert value(samples, "kaylee_sync_rollouts", phase="rolling") == 0
    assert value(samples, "kaylee_sync_rollouts", phase="brand-new-phase") == 0
    assert value(samples, "kaylee_sync_rollouts", phase="steady") == 12


def test_two_instances_do_not_share_or_collide() -> None:
    first, second = Metrics(), Metrics()
    first.set_leader(True)
    assert first.registry.get_sample_value("kaylee_sync_leader") == 1
    assert second.registry.get_sample_value("kaylee_sync_leader") == 0


def test_build_info_names_the_version_and_no_created_series(scrape: Scrape) -> None:
    from kaylee_sync import __version__

    samples = scrape()
    assert value(samples, "kaylee_sync_build_info", version=__version__) == 1
    assert not [name for name, _ in samples if name.endswith("_created")]


def test_commit_lag_is_only_measured_for_commits_first_seen_while_running(
    metrics: Metrics, scrape: Scrape
) -> None:
    metrics.observe_sync(0.1, "old", 86_400.0, {"unchanged": 3}, 0, False)  # synced at start
    assert value(scrape(), "kaylee_sync_commit_lag_seconds") == 0
    metrics.observe_sync(0.1, "old", None, {"unchanged": 3}, 0, False)
    assert value(scrape(), "kaylee_sync_commit_lag_seconds") == 0
    metrics.observe_sync(0.1, "pushed", 2.5, {"update": 1}, 0, False)
    assert value(scrape(), "kaylee_sync_commit_lag_seconds") == 2.5


def test_unit_rollout_phase_has_one_series_per_unit_and_drops_gone_units(
    metrics: Metrics, scrape: Scrape
) -> None:
    metrics.set_unit_phases({"web": "rolling", "db": "steady"})
    samples = scrape()
    assert value(samples, "kaylee_sync_unit_rollout_phase", unit="web", phase="rolling") == 1
    assert value(samples, "kaylee_sync_unit_rollout_phase", unit="db", phase="steady") == 1
    metrics.set_unit_phases({"web": "steady"})
    series = sorted(labels for name, labels in scrape() if name == "kaylee_sync_unit_rollout_phase")
    assert series == [(("phase", "steady"), ("unit", "web"))]


def test_fleet_writes_and_errors_are_counted_at_the_driver(
    metrics: Metrics, scrape: Scrape, client: Etcd2Client, prefix: str
) -> None:
    fleet = MeteredFleet(RegistryDriver(client, prefix + "/fleet/"), metrics)
    for op in ("create_unit", "set_target_state", "destroy_unit"):
        assert value(scrape(), "kaylee_sync_fleet_writes_total", op=op) == 0
    fleet.create_unit("k2:web:abcdef:0:1.service", parse("[Service]\nExecStart=/bin/true\n"))
    fleet.set_target_state("k2:web:abcdef:0:1.service", "loaded")
    fleet.destroy_unit("k2:web:abcdef:0:1.service")
    with pytest.raises(FleetNotFound):
        fleet.destroy_unit("k2:web:abcdef:0:1.service")
    assert fleet.units() == []
    samples = scrape()
    assert value(samples, "kaylee_sync_fleet_writes_total", op="create_unit") == 1
    assert value(samples, "kaylee_sync_fleet_writes_total", op="set_target_state") == 1
    assert value(samples, "kaylee_sync_fleet_writes_total", op="destroy_unit") == 1
    assert value(samples, "kaylee_sync_fleet_errors_total", op="destroy_unit") == 1
    assert value(samples, "kaylee_sync_fleet_errors_total", op="read") == 0
