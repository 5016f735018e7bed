"""The fleet flags (driver, endpoints, prefixes) and the client they describe.

The original's ``server`` flags (``--fleet-prefix``, ``--unit-prefix``) keep their names
and defaults; ``--fleet-driver`` picks fleet's etcd registry (the original's way, the
default) or fleetd's HTTP API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from kaylee_sync.cli.common import unit_prefix_option
from kaylee_sync.cli.values import Seconds
from kaylee_sync.election import ElectionSettings
from kaylee_sync.errors import UsageError
from kaylee_sync.fleet.connect import DEFAULT_API_ENDPOINT, FleetSettings, connect
from kaylee_sync.fleet.model import DEFAULT_KEY_PREFIX
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.settings import EtcdSettings, check_endpoint, with_scheme

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_FLEET_PREFIX = DEFAULT_KEY_PREFIX
#: ``--fleet-prefix``'s variables, wherever the option appears
FLEET_PREFIX_VARS = ["KAYLEE_FLEET_PREFIX", "FLEETCTL_ETCD_KEY_PREFIX"]


def fleet_options(func: F) -> F:
    """fleet's flags, each read from one fixed ``KAYLEE_FLEET_*`` variable, then fleetctl's.

    fleetctl's ``FLEETCTL_ENDPOINT`` is the endpoint of whichever driver it uses (fleetd's
    API, or the etcd holding the registry), so it backs both endpoint flags; only the
    chosen driver reads its own. Note that fleetctl's default driver is ``api`` and ours
    is ``etcd`` (the original's way): set ``FLEETCTL_DRIVER`` as well.
    """
    options = [
        click.option(
            "--fleet-driver",
            envvar=["KAYLEE_FLEET_DRIVER", "FLEETCTL_DRIVER"],
            type=click.Choice(["etcd", "api"], case_sensitive=False),  # fleetctl says "API"
            default=FleetSettings.driver,
            show_default=True,
            help="etcd: fleet's registry in etcd (v2 API), as the original; api: fleetd's API.",
        ),
        click.option(
            "--fleet-endpoints",
            envvar=["KAYLEE_FLEET_ENDPOINTS", "FLEETCTL_ENDPOINT"],
            help="etcd endpoints of fleet's registry (etcd driver); default: --etcd-endpoints.",
        ),
        click.option(
            "--fleet-endpoint",
            envvar=["KAYLEE_FLEET_ENDPOINT", "FLEETCTL_ENDPOINT"],
            default=DEFAULT_API_ENDPOINT,
            callback=_fleet_api_endpoint,
            show_default=True,
            help="fleetd's API (api driver): unix:///path or http(s)://host:port.",
        ),
        click.option(
            "--fleet-prefix",
            envvar=FLEET_PREFIX_VARS,
            default=DEFAULT_FLEET_PREFIX,
            show_default=True,
            help="Keyspace for fleet data in etcd.",
        ),
        unit_prefix_option("Prefix for units in fleet."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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
            envvar="KAYLEE_LEASE_TTL",
            type=click.IntRange(min=2, max=3600),
            default=ElectionSettings.lease_ttl,
            show_default=True,
            help="Seconds the leader's etcd lease lives; a standby takes over within this.",
        ),
        click.option(
            "--stable",
            envvar="KAYLEE_STABLE",
            type=Seconds(min=0),
            default=SchedulerSettings.stable,
            show_default=True,
            help="Seconds a new replica must run before an old one is retired.",
        ),
        click.option(
            "--rollout-timeout",
            envvar="KAYLEE_ROLLOUT_TIMEOUT",
            type=Seconds(min=1),
            default=SchedulerSettings.rollout_timeout,
            show_default=True,
            help="Seconds a new replica may take to run stably before the rollout fails.",
        ),
        click.option(
            "--resync",
            envvar="KAYLEE_RESYNC",
            type=Seconds(min=1, max=86400),
            default=SchedulerSettings.resync,
            show_default=True,
            help="Seconds between full reconciliations when nothing changes.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def verbose_option(func: F) -> F:
    """``-v``/``--verbose``: debug logging, the same flag and variable in both programs."""
    return click.option(
        "-v", "--verbose", envvar="KAYLEE_VERBOSE", is_flag=True, help="Debug logging."
    )(func)


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
    """The FleetClient that ``fleet_options`` describe."""
    return connect(fleet_settings_from(params), etcd)


def fleet_settings_from(params: dict[str, Any]) -> FleetSettings:
    """The fleet options, checked once all are known: FLEETCTL_ENDPOINT fills both
    endpoint options, and is only an etcd endpoint when the driver is ``etcd``."""
    given = params["fleet_endpoints"] or ""
    endpoints = tuple(e.strip() for e in given.split(",") if e.strip())
    driver = params["fleet_driver"].lower()
    if driver == "etcd":
        for url in endpoints:  # scheme-less host:port is fleetctl's way (http or https)
            check_endpoint(with_scheme(url, tls=False), "fleet endpoint")
    return FleetSettings(
        driver=driver,
        endpoints=endpoints,
        api_endpoint=params["fleet_endpoint"],
        key_prefix=params["fleet_prefix"],
    )
