"""Trials of the scheduler on an operator's bad day: paused leaders, a frozen etcd, kill -9.

Each trial runs two real ``kaylee server`` processes against one etcd and the fleet
simulator (4 machines, 4 units: three replica units and one non-replica unit), starts
a rollout and then does one bad thing to it:

- ``pause``: SIGSTOP the leader for longer than its lease, let the standby take over
  and act (and, every other trial, commit again meanwhile), then SIGCONT the old
  leader. With ``--moment write`` the pause lands just after the leader sent a fleet
  write, so its very next step is another write (the case strace caught in issue 10);
  with ``--moment random`` at a random moment of the rollout.
- ``freeze``: SIGSTOP etcd itself for 30 s mid-rollout; fleet's unit states (30 s TTL)
  expire meanwhile, so the leader elected afterwards sees no state at all at first.
- ``kill``: SIGKILL the leader mid-rollout; the standby must finish.
- ``restart``: SIGKILL etcd mid-rollout and start it again 5 s later on the same data;
  measured: seconds from etcd answering again to a leader acting (its log says
  "elected leader" or "leading again"), then convergence as above.

What is observed, from outside the processes wherever possible:

- **stale writes**: each server reaches fleet through its own recording HTTP proxy
  (the registry's etcd v2 API, or fleetd's API), so every fleet write is seen with the
  time it arrived. Any write from the old leader arriving after it was resumed is stale
  (its lease deadline had passed long before). v3 writes (rollout reports) are taken
  from the old leader's debug log ("sending … (fenced on master)", logged after the
  lease check, right before the transaction is sent): one logged after the resume
  counts as stale even though etcd's compare on ``master`` would refuse it.
- **floor**: a sampler reads what the simulated machines really run (their systemd, not
  etcd) every 100 ms; a replica unit must never run fewer instances than its replicas.
- **convergence**: every unit at its desired count and spec hash, running, nothing
  else of ours in fleet, no duplicate instance, and no registry debris.

``python -m tests.safety_trials --kind pause --trials 30 --driver etcd`` prints one line
per trial and a summary; the test suite runs one short trial (tests/test_scheduler_safety.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx

from kaylee_sync.embedded_etcd import EmbeddedEtcd
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.render import parse_unit_name
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.spec import App, UnitSpec, spec_hash6, to_json
from kaylee_sync.store import Store

T = TypeVar("T")
LEASE_TTL = 3
SPECS = (
    UnitSpec(name="web", replicas=3, apps=(App("docker://web:1"),)),
    UnitSpec(name="api", replicas=2, apps=(App("docker://api:1"),)),
    UnitSpec(name="worker", replicas=2, apps=(App("docker://worker:1"),)),
    UnitSpec(name="db", apps=(App("docker://db:1"),)),
)
# New versions start slowly, so that a rollout is under way when the trouble comes.
BEHAVIOURS = {"docker://*:2": "start_delay=0.6", "docker://*:3": "start_delay=0.3"}
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG .*sending (\S+ \S+)")
_ELECTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*(elected leader|leading again)")


def version(spec: UnitSpec, n: int) -> UnitSpec:
    return dataclasses.replace(spec, apps=(App(f"docker://{spec.name}:{n}"),))


def wait(what: str, predicate: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def kaylee() -> str:
    script = Path(sys.executable).parent / "kaylee"
    return str(script) if script.exists() else "kaylee"


@dataclasses.dataclass(frozen=True)
class Write:
    at: float  # time.time() when the proxy received it
    method: str
    path: str


class RecordingProxy:
    """An HTTP/1.1 reverse proxy that records every write; it can SIGSTOP the sender
    right after receiving a write (``arm``), before forwarding it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = httpx.Client(base_url=upstream, timeout=30.0)
        self.writes: list[Write] = []
        self.pause_pid: int | None = None
        self.paused_at: float | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command != "GET":
                    proxy._on_write(Write(time.time(), self.command, self.path))
                headers = {k: v for k, v in self.headers.items() if k.lower() == "content-type"}
                try:
                    resp = proxy.upstream.request(
                        self.command, self.path, content=body, headers=headers
                    )
                except httpx.HTTPError:
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(resp.status_code)
                for name in ("Content-Type", "X-Etcd-Index"):
                    if name in resp.headers:
                        self.send_header(name, resp.headers[name])
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _on_write(self, write: Write) -> None:
        with self._lock:
            self.writes.append(write)
            if self.pause_pid is not None:
                os.kill(self.pause_pid, signal.SIGSTOP)
                self.paused_at = time.time()
                self.pause_pid = None

    def arm(self, pid: int) -> None:
        with self._lock:
            self.pause_pid = pid

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.upstream.close()


@dataclasses.dataclass
class Outcome:
    kind: str
    driver: str
    stale_fleet: int = 0
    stale_reports: int = 0
    floor_breaches: int = 0
    duplicates: int = 0
    converged: bool = False
    detail: str = ""
    seconds: float = 0.0
    elected_after: float | None = None  # restart: etcd answering -> a leader acting

    @property
    def ok(self) -> bool:
        clean = not (self.stale_fleet or self.stale_reports or self.floor_breaches)
        return clean and not self.duplicates and self.converged


class Cluster:
    """Two servers, each behind its own proxy, the simulator, and a sampler."""

    def __init__(self, etcd: str, driver: str, logs: Path, machine_ttl: int = 30) -> None:
        self.etcd, self.driver, self.logs = etcd, driver, logs
        self.prefix = f"/trial-{uuid.uuid4().hex[:10]}/kaylee2"
        self.fleet_prefix = self.prefix + "/fleet/"
        self.stack = ExitStack()
        self.sim = self.stack.enter_context(
            SimulatedCluster(
                etcd, self.fleet_prefix, machines=[{} for _ in range(4)], engine_interval=0.1,
                agent_interval=0.1, behaviours=BEHAVIOURS, default_start_delay=0.1,
                machine_ttl=machine_ttl,
            )
        )  # fmt: skip
        self.store = self.stack.enter_context(
            Store(EtcdSettings(endpoints=(etcd,), prefix=self.prefix, timeout=2.0))
        )
        self.v2 = self.stack.enter_context(Etcd2Client(etcd, timeout=2.0))
        self.registry = RegistryDriver(self.v2, self.fleet_prefix)
        self.upstream = etcd if driver == "etcd" else self.sim.serve_api().url
        self.servers: list[subprocess.Popen[bytes]] = []
        self.proxies: list[RecordingProxy] = []
        self.floors = {s.name: s.replicas for s in SPECS if s.replicas}
        self.breaches: list[str] = []
        self.duplicates: list[str] = []
        self._sampling = threading.Event()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def start_server(self) -> subprocess.Popen[bytes]:
        proxy = RecordingProxy(self.upstream)
        self.proxies.append(proxy)
        fleet = (
            ["--fleet-driver", "etcd", "--fleet-endpoints", proxy.url]
            if self.driver == "etcd"
            else ["--fleet-driver", "api", "--fleet-endpoint", proxy.url]
        )
        args = [
            kaylee(), "--etcd-endpoints", self.etcd, "--etcd-prefix", self.prefix,
            "--etcd-timeout", "2", "server", *fleet, "--fleet-prefix", self.fleet_prefix,
            "--lease-ttl", str(LEASE_TTL), "--stable", "0.5", "--resync", "2", "-v",
        ]  # fmt: skip
        log = self.logs / f"{self.prefix.split('/')[1]}-server{len(self.servers)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.servers.append(proc)
        wait("server start", lambda: b"waiting to become leader" in log.read_bytes(), 90)
        return proc

    def log_path(self, index: int) -> Path:
        return self.logs / f"{self.prefix.split('/')[1]}-server{index}.log"

    def leader_index(self) -> int | None:
        holder = self.store.leader()
        if holder is None:
            return None
        pid = int(holder.split(":")[1])
        return next((i for i, p in enumerate(self.servers) if p.pid == pid), None)

    def put(self, n: int) -> list[UnitSpec]:
        specs = [version(s, n) for s in SPECS]
        for spec in specs:
            self.store.put_unit(spec.name, to_json(spec))
        return specs

    # -- what runs ------------------------------------------------------------------

    def really_running(self) -> dict[str, int]:
        """Kaylee unit -> instances the simulated machines' systemd runs (ground truth)."""
        counts: dict[str, int] = {}
        for agent in list(self.sim.agents.values()):
            for name, (_, _, sub) in agent.units().items():
                parsed = parse_unit_name(name)
                if parsed is not None and sub == "running":
                    counts[parsed.unit] = counts.get(parsed.unit, 0) + 1
        return counts

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            if not self._sampling.is_set():
                continue
            counts = self.really_running()
            for unit, floor in self.floors.items():
                if counts.get(unit, 0) < floor:
                    self.breaches.append(f"{unit}: {counts.get(unit, 0)}/{floor} running")
            try:
                names = [u.name for u in self.registry.units()]
            except Exception:
                continue
            instances = [(p.unit, p.hash6, p.index) for n in names if (p := parse_unit_name(n))]
            if len(instances) != len(set(instances)):
                self.duplicates.append(str(sorted(names)))

    def converged(self, specs: list[UnitSpec]) -> str:
        """ "" when converged, else what is still wrong."""
        running = self.sim.running_units()
        units = [u.name for u in self.registry.units()]
        wanted = {s.name: s for s in specs}
        ours = [(n, p) for n in units if (p := parse_unit_name(n)) is not None]
        for spec in specs:
            mine = [(n, p) for n, p in ours if p.unit == spec.name]
            good = [n for n, p in mine if p.hash6 == spec_hash6(spec) and n in running]
            indexes = {p.index for _, p in mine}
            if (
                len(mine) != spec.instance_count
                or len(good) != len(mine)
                or len(indexes) != len(mine)
            ):
                return f"{spec.name}: {sorted(n for n, _ in mine)} ({len(good)} good)"
        orphans = [n for n, p in ours if p.unit not in wanted]
        if orphans:
            return f"orphans {orphans}"
        debris = self.registry.debris("k2")
        if self.driver == "api":  # fleetd hides unit bodies; fleet itself never deletes them
            debris = [d for d in debris if d.kind != "body"]
        return f"debris {[d.key for d in debris]}" if debris else ""

    def logged(self, index: int, pattern: re.Pattern[str], after: float) -> list[tuple[float, str]]:
        """(time, group 2) of the server's log lines matching ``pattern`` after ``after``."""
        out = []
        for line in self.log_path(index).read_text(errors="replace").splitlines():
            m = pattern.match(line)
            if m:
                at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if at > after:
                    out.append((at, m.group(2)))
        return out

    def stale_reports(self, index: int, after: float) -> list[str]:
        return [what for _, what in self.logged(index, _LOG_TIME, after)]

    def close(self) -> None:
        self._stop.set()
        for proc in self.servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.servers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proxy in self.proxies:
            proxy.close()
        self.stack.close()


def _deploy(c: Cluster) -> subprocess.Popen[bytes]:
    first = c.start_server()
    wait("a leader", c.store.leader, 20)
    c.start_server()
    v1 = c.put(1)
    wait("version 1 to run", lambda: not c.converged(v1), 60)
    c._sampling.set()
    return first


def _rollout_started(c: Cluster) -> bool:
    return any(f":{spec_hash6(version(SPECS[0], 2))}:" in u.name for u in c.registry.units())


def pause_trial(c: Cluster, moment: str, second_commit: bool) -> Outcome:
    out = Outcome("pause", c.driver)
    old = _deploy(c)
    old_id = c.store.leader()
    proxy = c.proxies[0]
    if moment == "write":
        proxy.arm(old.pid)  # stopped right after its next fleet write reaches fleet
        c.put(2)
        wait("the leader to be paused at a write", lambda: proxy.paused_at, 20)
    else:
        c.put(2)
        time.sleep(random.uniform(0.0, 1.5))
        old.send_signal(signal.SIGSTOP)
    wait("the standby to lead", lambda: c.store.leader() not in (None, old_id), LEASE_TTL + 15)
    took_over = time.time()
    final = c.put(3) if second_commit else [version(s, 2) for s in SPECS]
    new_proxy = c.proxies[1]
    wait(
        "the new leader to write to fleet",
        lambda: any(w.at > took_over for w in new_proxy.writes),
        20,
    )
    resumed = time.time()
    old.send_signal(signal.SIGCONT)
    problem = _converge(c, final, 180)
    time.sleep(1.0)  # whatever the old leader still meant to send has been sent by now
    stale = [w for w in proxy.writes if w.at > resumed]
    out.stale_fleet = len(stale)
    out.stale_reports = len(c.stale_reports(0, resumed))
    out.detail = problem or (f"stale: {stale[:3]}" if stale else "")
    out.converged = not problem
    return out


def _mid_rollout(c: Cluster) -> tuple[subprocess.Popen[bytes], str | None, list[UnitSpec]]:
    """Version 1 running, version 2 committed and its first fleet unit created: the
    leader, its id and the final specs."""
    leader = _deploy(c)
    leader_id = c.store.leader()
    final = c.put(2)
    wait("the rollout to start", lambda: _rollout_started(c), 20)
    return leader, leader_id, final


def freeze_trial(c: Cluster, etcd: EmbeddedEtcd, seconds: float) -> Outcome:
    out = Outcome("freeze", c.driver)
    _, _, final = _mid_rollout(c)
    proc = etcd._proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    time.sleep(seconds)
    proc.send_signal(signal.SIGCONT)
    problem = _converge(c, final, 240)
    out.converged, out.detail = not problem, problem
    return out


def kill_trial(c: Cluster) -> Outcome:
    out = Outcome("kill", c.driver)
    old, old_id, final = _mid_rollout(c)
    time.sleep(random.uniform(0.0, 1.0))
    old.send_signal(signal.SIGKILL)
    wait("the standby to lead", lambda: c.store.leader() not in (None, old_id), LEASE_TTL + 15)
    problem = _converge(c, final, 180)
    out.converged, out.detail = not problem, problem
    return out


def restart_trial(c: Cluster, etcd: EmbeddedEtcd) -> Outcome:
    out = Outcome("restart", c.driver)
    _, _, final = _mid_rollout(c)
    proc = etcd._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    etcd._proc = None
    time.sleep(5.0)
    etcd.start()
    back = time.time()

    def acting() -> float | None:
        times = [at for i in range(2) for at, _ in c.logged(i, _ELECTED, back)]
        return min(times) if times else None

    out.elected_after = wait("a leader after the restart", acting, 60) - back
    problem = _converge(c, final, 180)
    out.converged, out.detail = not problem, problem
    return out


def _converge(c: Cluster, final: list[UnitSpec], timeout: float) -> str:
    try:
        wait("convergence", lambda: not c.converged(final), timeout)
    except TimeoutError:
        try:
            return c.converged(final) or "converged late"
        except Exception as exc:
            return f"unreadable: {exc}"
    return ""


def run_trial(
    etcd: EmbeddedEtcd, kind: str, driver: str, logs: Path, n: int, moment: str, freeze: float
) -> Outcome:
    started = time.monotonic()
    long_outage = kind in ("freeze", "restart")
    c = Cluster(etcd.endpoint, driver, logs, machine_ttl=300 if long_outage else 30)
    try:
        if kind == "pause":
            out = pause_trial(c, moment, second_commit=n % 2 == 1)
        elif kind == "freeze":
            out = freeze_trial(c, etcd, freeze)
        elif kind == "restart":
            out = restart_trial(c, etcd)
        else:
            out = kill_trial(c)
    except TimeoutError as exc:
        out = Outcome(kind, driver, detail=f"trial setup failed: {exc}")
    finally:
        c._sampling.clear()
        c.close()
    out.floor_breaches = len(c.breaches)
    out.duplicates = len(c.duplicates)
    if c.breaches:
        out.detail += f" floor: {c.breaches[:2]}"
    out.seconds = time.monotonic() - started
    return out


@contextmanager
def trial_etcd(logs: Path) -> Iterator[EmbeddedEtcd]:
    with EmbeddedEtcd(data_dir=logs / "etcd") as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=["pause", "freeze", "kill", "restart"], default="pause")
    p.add_argument("--driver", choices=["etcd", "api"], default="etcd")
    p.add_argument("--moment", choices=["write", "random", "mixed"], default="mixed")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--freeze", type=float, default=30.0, help="seconds etcd is frozen")
    p.add_argument("--logs", type=Path, default=None, help="keep the server logs here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kaylee-trials-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        failed = 0
        with trial_etcd(logs) as etcd:
            for n in range(args.trials):
                moment = args.moment if args.moment != "mixed" else ("write", "random")[n % 2]
                out = run_trial(etcd, args.kind, args.driver, logs, n, moment, args.freeze)
                failed += not out.ok
                print(
                    f"{args.kind} {args.driver} {moment if args.kind == 'pause' else ''} "
                    f"trial {n + 1}/{args.trials}: {'ok' if out.ok else 'FAILED'} "
                    f"stale_fleet={out.stale_fleet} stale_reports={out.stale_reports} "
                    f"floor_breaches={out.floor_breaches} duplicates={out.duplicates} "
                    f"converged={out.converged} {out.seconds:.1f}s "
                    + (f"elected_after={out.elected_after:.2f}s " if out.elected_after else "")
                    + out.detail,
                    flush=True,
                )
        print(f"{args.trials - failed}/{args.trials} trials ok", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
