"""``kaylee-sync systemd-unit``: the systemd units and environment file that ship with it.

An operator who installed with pip or pipx has no checkout to copy ``systemd/`` from, so
the files live inside the package (``kaylee_sync/systemd/``, the one copy; the
repository has no other) and this command prints the one asked for, for the version
that is installed.
"""

from __future__ import annotations

from importlib import resources

import click

from kaylee_sync.errors import UsageError

UNITS = {False: "kaylee-sync.service", True: "kaylee-server.service"}
ENV_EXAMPLE = "kaylee-sync.env.example"


def shipped_file(name: str) -> str:
    """The text of a file in ``kaylee_sync/systemd/`` (as installed)."""
    return resources.files("kaylee_sync").joinpath("systemd", name).read_text(encoding="utf-8")


@click.command(name="systemd-unit")
@click.option("--server", is_flag=True, help="Print kaylee-server.service instead.")
@click.option("--env", is_flag=True, help="Print the environment file example instead.")
def systemd_unit(server: bool, env: bool) -> None:
    """Print kaylee-sync.service (or kaylee-server.service, or the environment file).

    \b
    Examples:
      kaylee-sync systemd-unit | sudo install -m 0644 /dev/stdin \\
          /etc/systemd/system/kaylee-sync.service
      kaylee-sync systemd-unit --env | sudo install -D -m 0600 /dev/stdin \\
          /etc/kaylee-sync/kaylee-sync.env
      kaylee-sync systemd-unit --server        # the scheduler alone ('kaylee server')
    """
    if server and env:
        raise UsageError("--server and --env are exclusive: one file at a time")
    click.echo(shipped_file(ENV_EXAMPLE if env else UNITS[server]), nl=False)
