"""Defaults are defined once: in the settings dataclasses, which the options read.

Each option below turns into one field of a settings object; its default on every
command that has it must be that field's default, so that a command line that says
nothing and a library caller that says nothing get the same behaviour.
"""

from __future__ import annotations

import pytest

from kaylee_sync.daemon.daemon import DaemonSettings
from kaylee_sync.daemon.service import ServiceSettings
from kaylee_sync.election import ElectionSettings
from kaylee_sync.feedback import FeedbackSettings
from kaylee_sync.feedback.outbox import OutboxSettings
from kaylee_sync.fleet.connect import FleetSettings
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.source import GitCredentials
from tests.test_docs import commands

FEEDBACK = FeedbackSettings()
# option name -> the default every command that has the option must show
FIELDS: dict[str, object] = {
    "etcd_prefix": EtcdSettings().prefix,
    "etcd_timeout": EtcdSettings().timeout,
    "fleet_driver": FleetSettings().driver,
    "lease_ttl": ElectionSettings().lease_ttl,
    "stable": SchedulerSettings().stable,
    "rollout_timeout": SchedulerSettings().rollout_timeout,
    "resync": SchedulerSettings().resync,
    "https_username": GitCredentials().https_username,
    "interval": DaemonSettings().interval,
    "notify_queue": OutboxSettings().capacity,
}
# --listen differs by program: the daemon's port and kaylee server's
LISTEN = {"kaylee-sync": DaemonSettings().listen, "kaylee server": ServiceSettings().listen}


def options() -> list[tuple[str, str, object]]:
    """(command, option name, default) of every option that has a settings field."""
    return [
        (path, param.name or "", param.default)
        for path, command in commands()
        for param in command.params
        if param.name in FIELDS or (param.name == "listen" and path in LISTEN)
    ]


@pytest.mark.parametrize(("path", "name", "default"), options())
def test_an_options_default_is_its_settings_default(path: str, name: str, default: object) -> None:
    want = LISTEN[path] if name == "listen" else FIELDS[name]
    assert default == want, f"{path} --{name.replace('_', '-')}: default {default!r}, not {want!r}"


def test_every_field_is_an_option_somewhere() -> None:
    seen = {name for _, name, _ in options()}
    assert seen == {*FIELDS, "listen"}


def test_the_commit_status_rate_is_the_feedback_default() -> None:
    (default,) = {d for _, n, d in _all("commit_status_rate")}
    assert FEEDBACK.status_outbox.rate is not None
    assert default == FEEDBACK.status_outbox.rate * 60  # the option says posts per minute


def _all(name: str) -> list[tuple[str, str, object]]:
    return [
        (path, name, param.default)
        for path, command in commands()
        for param in command.params
        if param.name == name
    ]
