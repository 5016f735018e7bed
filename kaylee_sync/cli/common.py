"""What both command lines share: one error handler, the etcd options, output helpers.

Commands raise project errors (``kaylee_sync.errors``); :class:`KayleeGroup` turns a
``KayleeError`` into a one-line message on stderr and exit code 1, and anything else
into exit code 70 (EX_SOFTWARE) with the traceback — a bug, not a user mistake.

It is also the one place where click's own usage errors (a mistyped flag, a bad choice,
a bad ``KAYLEE_*`` value) get their exit code: click uses 2, which ``plan`` reports as
"there are changes", so a CI job would pass on a typo. They exit 1, as every other user
error does. docs/cli.md has the table of every exit code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from kaylee_sync.cli.values import Seconds
from kaylee_sync.errors import KayleeError
from kaylee_sync.render import DEFAULT_UNIT_PREFIX
from kaylee_sync.secrets import register_secret
from kaylee_sync.settings import EtcdSettings

USAGE_EXIT = 1  # a bad flag, choice or KAYLEE_* value: never a code a command reports
INTERNAL_ERROR_EXIT = 70
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a killed writer
log = logging.getLogger("kaylee_sync")

F = TypeVar("F", bound=Callable[..., Any])


class KayleeGroup(click.Group):
    """A click group whose commands report project errors in one line, never a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Python hands undecodable argv and environment bytes over as lone surrogates,
        # which every later encode (etcd keys, JSON, output) rejects with a traceback:
        # refuse them here, once, before any option is converted.
        for arg in args:
            if not _is_utf8(arg):
                raise click.UsageError(f"argument {ascii(arg)[:80]} is not valid UTF-8", ctx)
        for name, value in os.environ.items():
            if name.startswith(("KAYLEE_", "ETCDCTL_")) and not _is_utf8(value):
                raise click.UsageError(f"environment variable {name} is not valid UTF-8", ctx)
        return super().parse_args(ctx, args)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # The group's own options (and environment variables) are parsed here.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _usage_error(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's name, options or variables
            raise _usage_error(exc) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KayleeError as exc:
            click.echo(f"error: {printable(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            # The reader went away (``kaylee-sync render … | head``): not a bug. Point
            # stdout at /dev/null so the interpreter's final flush cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(BROKEN_PIPE_EXIT)
        except Exception:
            click.echo("internal error (a bug in kaylee-sync; please report it):", err=True)
            click.echo(traceback.format_exc(), err=True)
            ctx.exit(INTERNAL_ERROR_EXIT)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\x1b``): a message that quotes a value
    (a file name, a branch) must not move the cursor, recolour or clear the terminal."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


def _usage_error(exc: click.UsageError) -> click.UsageError:
    """Give click's usage error our exit code, and name the variable a bad value came from."""
    # click declares exit_code a class variable; this instance gets its own.
    exc.__dict__["exit_code"] = USAGE_EXIT
    if isinstance(exc, click.BadParameter) and exc.ctx is not None and exc.param is not None:
        source = exc.ctx.get_parameter_source(exc.param.name or "")
        variable = _set_variable(exc.param)
        if source is click.core.ParameterSource.ENVIRONMENT and variable:
            names = "/".join(getattr(exc.param, "opts", [])[-1:]) or exc.param.name
            exc.param_hint = f"{names!r} (from the environment variable {variable})"
    return exc


def _set_variable(param: click.Parameter) -> str | None:
    """The first non-empty variable of ``param``, the one click read its value from."""
    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
    return next((name for name in names if os.environ.get(name)), None)


def etcd_options(func: F) -> F:
    """The original Kaylee's global etcd flags, plus TLS, auth and a timeout.

    Each reads one fixed ``KAYLEE_ETCD_*`` variable, whatever command it is on, so one
    EnvironmentFile serves the daemon, ``kaylee-sync status`` and ``kaylee ls`` alike;
    then etcdctl's own variables (v3 names first, then the original Kaylee's
    ``ETCDCTL_ENDPOINT``), so a shell set up for etcdctl works as it is.
    """
    file_type = click.Path(dir_okay=False)
    options = [
        click.option(
            "--etcd-endpoints",
            envvar=["KAYLEE_ETCD_ENDPOINTS", "ETCDCTL_ENDPOINTS", "ETCDCTL_ENDPOINT"],
            default=EtcdSettings.DEFAULT_ENDPOINTS,
            show_default=True,
            help="A comma-delimited list of etcd endpoints (URLs, or host:port).",
        ),
        click.option(
            "--etcd-prefix",
            envvar="KAYLEE_ETCD_PREFIX",
            default=EtcdSettings.prefix,
            show_default=True,
            help="A keyspace for unit data in etcd.",
        ),
        click.option(
            "--etcd-ca-file",
            envvar=["KAYLEE_ETCD_CA_FILE", "ETCDCTL_CACERT"],
            type=file_type,
            help="CA bundle (TLS).",
        ),
        click.option(
            "--etcd-cert-file",
            envvar=["KAYLEE_ETCD_CERT_FILE", "ETCDCTL_CERT"],
            type=file_type,
            help="Client certificate (TLS).",
        ),
        click.option(
            "--etcd-key-file",
            envvar=["KAYLEE_ETCD_KEY_FILE", "ETCDCTL_KEY"],
            type=file_type,
            help="Client private key (TLS).",
        ),
        click.option(
            "--etcd-username",
            envvar=["KAYLEE_ETCD_USERNAME", "ETCDCTL_USER"],
            help="etcd user (etcdctl's USER[:PASSWORD] is accepted).",
        ),
        click.option(
            "--etcd-password",
            envvar=["KAYLEE_ETCD_PASSWORD", "ETCDCTL_PASSWORD"],
            help="etcd password; prefer the environment variable KAYLEE_ETCD_PASSWORD.",
        ),
        click.option(
            "--etcd-timeout",
            envvar="KAYLEE_ETCD_TIMEOUT",
            type=Seconds(min=0.1, max=3600),
            default=EtcdSettings.timeout,
            show_default=True,
            help="Seconds to wait for etcd before giving up.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def unit_prefix_option(help: str = "Prefix of the fleet unit names.") -> Callable[[F], F]:
    """``--unit-prefix``: one option, one variable, in every command that names fleet units."""
    return click.option(
        "--unit-prefix",
        envvar="KAYLEE_UNIT_PREFIX",
        default=DEFAULT_UNIT_PREFIX,
        show_default=True,
        help=help,
    )


def format_option(
    *choices: str, help: str = "text for people, json for tools."
) -> Callable[[F], F]:
    """``--format`` with ``choices`` (the first is the default), as every command spells it."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(list(choices)),
        default=choices[0],
        show_default=True,
        help=help,
    )


def etcd_settings_from(params: dict[str, Any]) -> EtcdSettings:
    """Build EtcdSettings from the values of :func:`etcd_options`."""
    username, password = params["etcd_username"], params["etcd_password"]
    if username and ":" in username:
        # etcdctl's --user (and ETCDCTL_USER) is USER[:PASSWORD]; a password given on its
        # own (flag, KAYLEE_ETCD_PASSWORD, ETCDCTL_PASSWORD) wins over the embedded one.
        username, embedded = username.split(":", 1)
        register_secret(embedded)
        password = password or embedded
    return EtcdSettings.from_endpoints_string(
        params["etcd_endpoints"],
        prefix=params["etcd_prefix"],
        ca_file=params["etcd_ca_file"],
        cert_file=params["etcd_cert_file"],
        key_file=params["etcd_key_file"],
        username=username,
        password=password,
        timeout=params["etcd_timeout"],
    )


def echo_json(data: Any) -> None:
    """Stable JSON output: sorted keys, one document, a trailing newline."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
