"""The fleet flags (driver, endpoints, prefixes) and the client they describe.

The original's ``server`` flags (``--fleet-prefix``, ``--unit-prefix``) keep their names
and defaults; ``--fleet-driver`` picks fleet's etcd registry (the original's way, the
default) or fleetd's HTTP API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from kaylee_sync.cli.values import Seconds
from kaylee_sync.election import ElectionSettings
from kaylee_sync.errors import UsageError
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.settings import EtcdSettings, check_endpoint

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_FLEET_PREFIX = "/_coreos.com/fleet/"
DEFAULT_API_ENDPOINT = "unix:///var/run/fleet.sock"


def fleet_options(func: F) -> F:
    options = [
        click.option(
            "--fleet-driver",
            type=click.Choice(["etcd", "api"]),
            default="etcd",
            show_default=True,
            help="etcd: fleet's registry in etcd (v2 API), as the original; api: fleetd's API.",
        ),
        click.option(
            "--fleet-endpoints",
            callback=_fleet_endpoints,
            help="etcd endpoints of fleet's registry (etcd driver); default: --etcd-endpoints.",
        ),
        click.option(
            "--fleet-endpoint",
            default=DEFAULT_API_ENDPOINT,
            callback=_fleet_api_endpoint,
            show_default=True,
            help="fleetd's API (api driver): unix:///path or http(s)://host:port.",
        ),
        click.option(
            "--fleet-prefix",
            default=DEFAULT_FLEET_PREFIX,
            show_default=True,
            help="Keyspace for fleet data in etcd.",
        ),
        click.option(
            "--unit-prefix", default="k2", show_default=True, help="Prefix for units in fleet."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _fleet_endpoints(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Checked as --etcd-endpoints are, at parse time: a bad URL is a one-line usage error
    instead of a fleet client retrying it for seconds and failing deep in a sync."""
    if value is None:
        return None
    urls = [part.strip() for part in value.split(",") if part.strip()]
    try:
        if not urls:
            raise UsageError("no endpoint given")
        return ",".join(check_endpoint(url, "fleet endpoint") for url in urls)
    except UsageError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _fleet_api_endpoint(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    """fleetd's API: a unix socket path or an http(s) URL, checked at parse time."""
    if value.startswith("unix://"):
        if len(value) > len("unix://") and value.isprintable():
            return value
        raise click.BadParameter("expected unix:///path/to/fleet.sock", ctx, param)
    try:
        return check_endpoint(value, "fleet API endpoint")
    except UsageError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def scheduler_options(func: F) -> F:
    """The leader's and scheduler's timings, shared by ``kaylee server`` and the daemon."""
    options = [
        click.option(
            "--lease-ttl",
            type=click.IntRange(min=2, max=3600),
            default=10,
            show_default=True,
            help="Seconds the leader's etcd lease lives; a standby takes over within this.",
        ),
        click.option(
            "--stable",
            type=Seconds(min=0),
            default=10.0,
            show_default=True,
            help="Seconds a new replica must run before an old one is retired.",
        ),
        click.option(
            "--rollout-timeout",
            type=Seconds(min=1),
            default=300.0,
            show_default=True,
            help="Seconds a new replica may take to run stably before the rollout fails.",
        ),
        click.option(
            "--resync",
            type=Seconds(min=1, max=86400),
            default=60.0,
            show_default=True,
            help="Seconds between full reconciliations when nothing changes.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def scheduler_settings_from(params: dict[str, Any]) -> tuple[SchedulerSettings, ElectionSettings]:
    """The settings :func:`scheduler_options` (and ``--unit-prefix``) describe."""
    scheduler = SchedulerSettings(
        unit_prefix=params["unit_prefix"],
        stable=params["stable"],
        rollout_timeout=params["rollout_timeout"],
        resync=params["resync"],
    )
    return scheduler, ElectionSettings.for_ttl(params["lease_ttl"])


def fleet_client(etcd: EtcdSettings, params: dict[str, Any]) -> FleetClient:
    """The FleetClient that ``fleet_options`` describe (TLS and auth as for etcd v3)."""
    if params["fleet_driver"] == "api":
        from kaylee_sync.fleet.api import ApiDriver

        return ApiDriver(params["fleet_endpoint"])
    from kaylee_sync.fleet.etcd2 import Etcd2Client
    from kaylee_sync.fleet.registry import RegistryDriver

    endpoints = params["fleet_endpoints"] or ",".join(etcd.endpoints)
    client = Etcd2Client(
        endpoints,
        ca_cert=etcd.ca_file,
        cert=etcd.cert_file,
        key=etcd.key_file,
        username=etcd.username,
        password=etcd.password,
        timeout=etcd.timeout,
    )
    return RegistryDriver(client, params["fleet_prefix"])
