"""Benchmark: the leader's CPU for HTTP health checks of 2,500 instances every 10 s.

Health-gated rollouts check every instance of every unit with a ``health:`` section,
all the time (issue 13), so the checker's cost is paid for as long as the leader leads.
The target is under 5 % of one core for 2,500 instances at a 10 s interval (250 checks a
second).

The endpoints are served by a separate process (an asyncio server answering ``200 OK``
to every ``GET``), on 20 loopback addresses standing for 20 machines, so that only the
checker's work is measured. The prober runs as the daemon runs it (its own thread and
event loop, at most 64 checks in flight); one interval is let pass first, so that
connections are open, then the process's CPU time (``time.process_time``, every thread)
is divided by the wall time over the measured intervals. Every instance must have been
found healthy, or the benchmark stops: checks that fail fast cost less and prove nothing.

    python -m bench.health_check [--instances 2500] [--interval 10] [--intervals 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import threading
import time

from bench.common import Measurement, bench_main, progress
from kaylee_sync.health.checks import Target
from kaylee_sync.probe import Prober

TARGET = 0.05  # of one core
MACHINES = [f"127.0.0.{i}" for i in range(2, 22)]

_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer = transport, b""
        def data_received(self, data):
            self.buffer += data
            while b"\\r\\n\\r\\n" in self.buffer:
                _, self.buffer = self.buffer.split(b"\\r\\n\\r\\n", 1)
                self.transport.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
    async def main():
        loop = asyncio.get_running_loop()
        first = await loop.create_server(Answer, sys.argv[1], 0, backlog=4096)
        port = first.sockets[0].getsockname()[1]
        for ip in sys.argv[2:]:
            await loop.create_server(Answer, ip, port, backlog=4096)
        print(port, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
    """
)


def run(args: argparse.Namespace) -> list[Measurement]:
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, *MACHINES], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        targets = [
            Target(
                instance=f"k2:web{i % 100}:abc123:s:{i}.service",
                unit=f"web{i % 100}",
                url=f"http://{MACHINES[i % len(MACHINES)]}:{port}/health/k2_web_{i}",
                interval=args.interval,
                timeout=2.0,
            )
            for i in range(args.instances)
        ]
        by_unit: dict[str, list[Target]] = {}
        for t in targets:
            by_unit.setdefault(t.unit, []).append(t)
        with Prober(max_in_flight=64) as prober:
            for unit, group in by_unit.items():
                prober.set_targets(unit, group)
            progress(f"warming up: one interval of {args.interval:g} s")
            threading.Event().wait(args.interval * 1.2)
            cpu0, wall0, checks0 = time.process_time(), time.perf_counter(), prober.checks_run
            samples = []
            for i in range(args.intervals):
                progress(f"measuring interval {i + 1}/{args.intervals}")
                c, w = time.process_time(), time.perf_counter()
                threading.Event().wait(args.interval)
                samples.append((time.process_time() - c) / (time.perf_counter() - w))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            checks = prober.checks_run - checks0
            unhealthy = [
                t.instance for t in targets if not (prober.health(t.instance) or _NO).healthy
            ]
            if unhealthy:
                raise SystemExit(f"{len(unhealthy)} instances not healthy, e.g. {unhealthy[0]}")
    finally:
        server.kill()
        server.wait()
    return [
        Measurement(
            f"HTTP health checks, {args.instances} instances every {args.interval:g} s",
            tuple(samples),
            unit="core",
            target=TARGET,
            extra={
                "checks_per_s": round(checks / wall, 1),
                "cpu_per_check_us": round(cpu / max(checks, 1) * 1e6, 1),
            },
        )
    ]


class _NoHealth:
    healthy = False


_NO = _NoHealth()


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instances", type=int, default=2500, help="instances checked (default 2500)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between checks (10)")
    p.add_argument("--intervals", type=int, default=3, help="intervals measured (default 3)")


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.health_check")


if __name__ == "__main__":
    raise SystemExit(main())
