"""Which environment variable fills each option: one rule for both programs.

An operator writes one EnvironmentFile (``kaylee_sync/systemd/kaylee-sync.env.example``) and expects
it to mean the same to the daemon, ``kaylee server``, ``kaylee-sync status`` and
``kaylee ls``. click's ``auto_envvar_prefix`` cannot promise that: it names a variable
after the command and the option's *Python* name, so ``kaylee ls --fleet-driver`` read
``KAYLEE_LS_FLEET_DRIVER`` and ``plan --format`` read ``KAYLEE_PLAN_FMT``. Instead:

- an option shared by several commands declares its fixed variable(s) where it is
  declared (``KAYLEE_ETCD_ENDPOINTS``, ``KAYLEE_FLEET_DRIVER``, ``KAYLEE_LEASE_TTL`` …),
  followed by the ecosystem's own variable when there is one (``ETCDCTL_ENDPOINTS``,
  ``FLEETCTL_DRIVER``): click reads the first that is set, so a flag wins over
  ``KAYLEE_*``, which wins over the ecosystem's variable;
- every other option gets ``KAYLEE_<OPTION>`` on a program's top level and
  ``KAYLEE_<COMMAND>_<OPTION>`` on a subcommand, named after its *long flag*
  (``--format`` → ``KAYLEE_PLAN_FORMAT``, ``--for`` → ``KAYLEE_SUSPEND_FOR``).

:func:`name_variables` applies the rule once, after a program's commands are registered,
and makes ``--help`` show each variable. docs/cli.md documents the rule and the shared
names; tests/test_cli_env.py walks every option of both programs against that page.
"""

from __future__ import annotations

import click

PREFIX = "KAYLEE"


def variable_name(option: click.Option, command: str | None) -> str:
    """The rule's variable for an option without a fixed one (``command`` None: top level)."""
    long = max(option.opts, key=len).lstrip("-").replace("-", "_").upper()
    parts = [PREFIX, *([command.replace("-", "_").upper()] if command else []), long]
    return "_".join(parts)


def name_variables(group: click.Group) -> None:
    """Give every option of ``group`` and of its subcommands its variable (see above)."""
    _name(group, None)
    for name, command in group.commands.items():
        _name(command, name)


def _name(command: click.Command, name: str | None) -> None:
    for param in command.params:
        if not isinstance(param, click.Option) or not param.expose_value:
            continue  # --help and --version: nothing to configure
        if not param.envvar:
            param.envvar = variable_name(param, name)
        param.show_envvar = True
