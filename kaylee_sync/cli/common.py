"""What both command lines share: one error handler, the etcd options, output helpers.

Commands raise project errors (``kaylee_sync.errors``); :class:`KayleeGroup` turns a
``KayleeError`` into a one-line message on stderr and exit code 1, and anything else
into exit code 70 (EX_SOFTWARE) with the traceback — a bug, not a user mistake.
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
from kaylee_sync.settings import EtcdSettings

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

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
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


def etcd_options(func: F) -> F:
    """The original Kaylee's global etcd flags, plus TLS, auth and a timeout.

    Each reads one fixed ``KAYLEE_ETCD_*`` variable, whatever command it is on, so one
    EnvironmentFile serves the daemon, ``kaylee-sync status`` and ``kaylee ls`` alike.
    """
    options = [
        click.option(
            "--etcd-endpoints",
            envvar=["KAYLEE_ETCD_ENDPOINTS", "ETCDCTL_ENDPOINT"],
            default=EtcdSettings.DEFAULT_ENDPOINTS,
            show_default=True,
            help="A comma-delimited list of etcd endpoints "
            "(env KAYLEE_ETCD_ENDPOINTS or ETCDCTL_ENDPOINT).",
        ),
        click.option(
            "--etcd-prefix",
            envvar="KAYLEE_ETCD_PREFIX",
            default="/kaylee2",
            show_default=True,
            help="A keyspace for unit data in etcd.",
        ),
        click.option(
            "--etcd-ca-file",
            envvar="KAYLEE_ETCD_CA_FILE",
            type=click.Path(dir_okay=False),
            help="CA bundle (TLS).",
        ),
        click.option(
            "--etcd-cert-file",
            envvar="KAYLEE_ETCD_CERT_FILE",
            type=click.Path(dir_okay=False),
            help="Client certificate (TLS).",
        ),
        click.option(
            "--etcd-key-file",
            envvar="KAYLEE_ETCD_KEY_FILE",
            type=click.Path(dir_okay=False),
            help="Client private key (TLS).",
        ),
        click.option(
            "--etcd-username", envvar=["KAYLEE_ETCD_USERNAME", "ETCDCTL_USER"], help="etcd user."
        ),
        click.option(
            "--etcd-password",
            envvar="KAYLEE_ETCD_PASSWORD",
            help="etcd password; prefer the environment variable KAYLEE_ETCD_PASSWORD.",
        ),
        click.option(
            "--etcd-timeout",
            envvar="KAYLEE_ETCD_TIMEOUT",
            type=Seconds(min=0.1, max=3600),
            default=5.0,
            show_default=True,
            help="Seconds to wait for etcd before giving up.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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
    return EtcdSettings.from_endpoints_string(
        params["etcd_endpoints"],
        prefix=params["etcd_prefix"],
        ca_file=params["etcd_ca_file"],
        cert_file=params["etcd_cert_file"],
        key_file=params["etcd_key_file"],
        username=params["etcd_username"],
        password=params["etcd_password"],
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
