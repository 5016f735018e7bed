"""Submitting many fleet units at once: several in flight, one fence for all of them.

``fleetctl start`` of a thousand units is a thousand chains of three writes (unit
body, job object, target state). Within a chain the order is fleet's and must stay
(an object never points at a body not yet written, the target state comes last), but
chains of different units are independent, so a few of them are kept in flight on
the etcd client's connection pool: while one waits for etcd's commit, another is
being formatted. Every write still passes through the driver's throttle (one token per
attempt) and its write guard.

Fencing with several writers: a write guard that refuses once must refuse every write
that comes after, in every worker — a lease renewed a moment later must not let a
half-stopped batch go on. :class:`Latch` wraps the guard: its checks are serialised,
and the first refusal trips it for the rest of the batch, so no write of the batch is
sent after a check has failed, and units not yet begun are not begun.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from kaylee_sync.errors import FleetError, FleetFenced

#: chains in flight at once. On 2 cores our CPU and etcd's share them; more workers only
#: add GIL hand-offs (1,000 units, limit lifted, on the loaded CI machine: 8 in flight
#: took 1.9-2.2 s, 4 took 2.4-2.7 s, 16 took 2.1-2.5 s).
DEFAULT_WORKERS = 8


class Latch:
    """A write guard that stays shut once it has refused (for one batch)."""

    def __init__(self, guard: Callable[[str], None] | None) -> None:
        self.guard = guard
        self.refusal: str | None = None
        self._lock = threading.Lock()

    @property
    def tripped(self) -> bool:
        return self.refusal is not None

    def __call__(self, what: str) -> None:
        # Serialised, so that "after" means something: a check that begins after a
        # refusal sees it, whichever worker made it.
        with self._lock:
            if self.refusal is not None:
                raise FleetFenced(f"not sending {what}: {self.refusal}")
            if self.guard is None:
                return
            try:
                self.guard(what)
            except BaseException as exc:
                self.refusal = str(exc) or type(exc).__name__
                raise


def run_all(
    names: Sequence[str],
    create: Callable[[str], None],
    latch: Latch,
    workers: int = DEFAULT_WORKERS,
) -> dict[str, FleetError]:
    """``create(name)`` for every name, ``workers`` at a time; the failures by name.

    One unit's failure does not stop the others (as in the scheduler: the next pass
    retries it). A refusal of the guard does: what has not begun is not begun, and
    FleetFenced is raised once every worker has stopped — never while a write of this
    batch could still be sent.
    """
    failed: dict[str, FleetError] = {}
    done: set[str] = set()
    lock = threading.Lock()

    def one(name: str) -> None:
        if latch.tripped:
            return
        try:
            create(name)
        except FleetError as exc:
            with lock:
                failed[name] = exc
        else:
            with lock:
                done.add(name)

    if workers <= 1:
        for name in names:
            one(name)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet-submit") as pool:
            for future in [pool.submit(one, name) for name in names]:
                future.result()  # only programming errors: FleetErrors are collected
    if latch.tripped:
        refused = next((n for n in names if isinstance(failed.get(n), FleetFenced)), "?")
        untouched = len(names) - len(done) - len(failed)
        raise FleetFenced(
            f"fleet unit {refused} and the rest of its batch not submitted, the write "
            f"guard refused: {latch.refusal} ({len(done)} submitted, {len(failed)} cut "
            f"short or failed, {untouched} not begun)"
        )
    return {name: failed[name] for name in names if name in failed}
