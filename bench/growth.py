"""Benchmark: how the repository measurements grow with the number of units.

Runs :mod:`bench.repo_sync` (cold plan, full apply, full apply / floor, one-file sync) at
1,000, 10,000 and 50,000 unit files and prints each number beside the growth from one
size to the next. A step that costs what a commit changes stays flat as the repository
grows; one that still does work for every unit grows with it (×10 from 1,000 to 10,000,
×5 from 10,000 to 50,000). The one-file sync is the number issue 14 wants flat. A size
that cannot be measured (today: 50,000 units, whose single inventory value is over
etcd's request limit) is said so and left out of the table.

    python -m bench.growth [--sizes 1000,10000,50000] [--runs 1]
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys

from bench import repo_sync
from bench.common import Measurement, bench_main, progress
from kaylee_sync.errors import KayleeError


def run(args: argparse.Namespace) -> list[Measurement]:
    sizes = [int(s) for s in args.sizes.split(",")]
    by_size: dict[int, list[Measurement]] = {}
    for units in sizes:
        progress(f"growth: {units:,} units")
        options = argparse.Namespace(units=units, runs=args.runs, profile=False, parse_workers=None)
        try:
            by_size[units] = repo_sync.run(options)
        except (KayleeError, SystemExit) as exc:  # e.g. an inventory over etcd's limit
            progress(f"growth: {units:,} units could not be measured: {exc}")
    measured = [n for n in sizes if n in by_size]
    if measured:
        table(measured, by_size)
    return [m for units in measured for m in by_size[units]]


def table(sizes: list[int], by_size: dict[int, list[Measurement]]) -> None:
    """One row a measurement: its median at each size and the growth between sizes."""
    header = ["measurement", *(f"{n:,}" for n in sizes)]
    header += [f"×{b / a:g} units" for a, b in itertools.pairwise(sizes)]
    rows = [header]
    for i, first in enumerate(by_size[sizes[0]]):
        medians = [by_size[n][i].median for n in sizes]
        unit = first.unit
        shown = [f"{m * 1000:.0f} ms" if unit == "s" else f"{m:.2f} {unit}" for m in medians]
        growth = [f"×{b / a:.1f}" for a, b in itertools.pairwise(medians)]
        rows.append([_name(first.name), *shown, *growth])
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    print("\ngrowth with the number of units (medians):", file=sys.stderr)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)), file=sys.stderr)


def _name(name: str) -> str:
    """The measurement's name without its size ("cold plan (10,000 units)" → "cold plan")."""
    return re.sub(r" ?\([\d,]+ units,? ?", " (", name).replace(" ()", "").strip()


def configure(p: argparse.ArgumentParser) -> None:
    p.set_defaults(runs=1)
    p.add_argument(
        "--sizes", default="1000,10000,50000", help="unit counts (default 1000,10000,50000)"
    )


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.growth")


if __name__ == "__main__":
    sys.exit(main())
