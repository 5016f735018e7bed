"""``--watch``: show a command's output again and again, as ``watch kaylee ls`` would.

Argo CD and Flux users keep a terminal open on their sync state; ``watch(1)`` is not on
every host and re-runs the whole program (a new etcd connection) each time. This keeps
one connection, redraws on a terminal (a header with the time, then the output) and
prints frame after frame otherwise, so the output can be piped. An error while looking
(etcd unreachable for a moment) is shown in the frame and the watch goes on. Ctrl-C ends
it with exit code 130.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import click

from kaylee_sync.errors import KayleeError

INTERRUPTED_EXIT = 130


def watch_option(func: Callable[..., object]) -> Callable[..., object]:
    func = click.option(
        "--every",
        type=click.FloatRange(min=0.1),
        default=2.0,
        show_default=True,
        metavar="SECONDS",
        help="With --watch: seconds between looks.",
    )(func)
    return click.option("--watch", is_flag=True, help="Show it again every few seconds.")(func)


def repeat(
    show: Callable[[], None],
    every: float,
    title: str,
    *,
    header: bool = True,
    stop: threading.Event | None = None,
) -> None:
    """Call ``show`` every ``every`` seconds until Ctrl-C (exit 130) or ``stop`` is set."""
    stop = stop or threading.Event()
    tty = sys.stdout.isatty()
    try:
        while True:
            if tty:
                click.clear()
            if header:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
                click.echo(f"Every {every:g} s: {title}    {stamp}")
            try:
                show()
            except KayleeError as exc:
                click.echo(f"error: {exc}")
            if not tty:
                click.echo()
            sys.stdout.flush()
            if stop.wait(every):
                return
    except KeyboardInterrupt:
        raise click.exceptions.Exit(INTERRUPTED_EXIT) from None
