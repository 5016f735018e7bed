"""Parsing a large batch of unit files in worker processes: a cold read on every core.

A new leader, ``kaylee-sync plan`` or ``--once`` parses every file of the commit; 10,000
files are ~1.6 s of CPU in one process (``bench/repo_sync``), nearly all of it libyaml
and the checks, under the GIL. :func:`parse_batch` sends chunks of the batch to worker
processes and parses chunks itself meanwhile; what it returns is what parsing each file
in-process returns, file for file and in order.

Decisions:

* A worker is a fresh interpreter running :mod:`.parseworker` with this process's
  ``sys.path``, minus the current directory (the daemon's may be a checkout of the unit
  repository, which must not be imported from: ``-P``, and no relative entries). Not
  ``fork``: the daemon has threads (grpc's, the listener's), and a forked child may
  inherit a lock another thread held. Not multiprocessing's ``spawn`` or ``forkserver``
  either: both import the parent's ``__main__`` in the child — for the daemon the whole
  CLI, ~0.5 s here — where this worker imports the parser alone (~0.15 s).
* The parent never waits for a worker while it has work of its own: it keeps every
  worker two chunks ahead and parses the next chunk itself, so a worker that is slow to
  start costs nothing but the CPU it uses. Pipes are written without blocking, through
  one selector, so a worker writing a long answer and the parent writing the next
  request cannot wait on each other.
* Trust: a worker runs the same code as the parent on the same untrusted bytes, with
  every limit (size, depth, alias budget). Its answers are unpickled by an Unpickler
  that can build the result classes and nothing else, and each answer must name the
  files it was asked about. A worker that does not start, dies, answers anything else
  or stays silent for ``stall_timeout`` seconds while it has work is killed, and its
  unanswered chunks are parsed in-process: a file is never lost or judged differently.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import selectors
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kaylee_sync
from kaylee_sync.errors import Issue
from kaylee_sync.plan.model import DesiredUnit, FileProblem
from kaylee_sync.spec.model import App, EnvVar, UnitSpec, Volume

log = logging.getLogger(__name__)

Result = DesiredUnit | FileProblem
File = tuple[str, str, bytes]  # (path, blob id, contents)
Parse = Callable[[str, str, bytes], Result]

WORKER_MODULE = "kaylee_sync.source.parseworker"
_DEPTH = 2  # chunks queued per worker: one to parse, one waiting in the pipe
_POLL_EVERY = 8  # files the parent parses between looks at the pipes (~1.5 ms)
_MAX_FRAME = 1 << 30  # an answer larger than this is not an answer
_READ = 1 << 20
# What an answer may contain: the result classes, by module and name; nothing callable.
_RESULT_CLASSES = {
    (cls.__module__, cls.__qualname__): cls
    for cls in (DesiredUnit, FileProblem, Issue, UnitSpec, App, EnvVar, Volume)
}


@dataclass(frozen=True)
class BatchSettings:
    """When and how a batch of unit files is parsed in worker processes."""

    min_files: int = 500
    """Fewer files than this are parsed in-process. A file costs ~170 µs, so 500 are
    ~85 ms: below that, the worker's start (~0.15 s of CPU) outweighs what it saves."""

    workers: int | None = None
    """Worker processes. None (default): one fewer than the CPUs this process may run
    on, at most 8, since the parent parses too (1 on 2 cores) — and none while the
    machine is busy (``max_load``); 0: never start any."""

    max_load: float | None = None
    """With ``workers`` None, no worker is started while the 1-minute load average is
    at or above this (``make -l``'s rule); None (default): the number of CPUs. A worker
    costs ~0.4 s of CPU for 10,000 files (its start, pickling the results); with no idle
    core it only adds that (measured: a cold plan 2.6 s alone, 3.1 s with a worker, at
    load 2.6-3.9 on 2 cores)."""

    chunk_files: int = 100
    """Files sent at a time (~17 ms of parsing): the work spreads evenly and a worker
    that fails leaves little to redo."""

    chunk_bytes: int = 4 << 20
    """A chunk also ends once it holds this many bytes of files (files may be 1 MiB)."""

    stall_timeout: float = 30.0
    """Seconds a worker with work queued may stay silent before it is killed and its
    chunks parsed in-process. A chunk takes milliseconds, a start ~0.15 s; 30 s leaves
    room for a machine under heavy load and bounds what a hung worker costs a sync."""

    worker_command: tuple[str, ...] = ()
    """The worker's command line before its argument (the unit prefix); () (default):
    this interpreter running :mod:`.parseworker`. Tests start broken workers with it."""


DEFAULT_BATCH = BatchSettings()


@dataclass(frozen=True)
class BatchStats:
    """What one :func:`parse_batch` did: for logs, metrics and tests."""

    files: int
    in_workers: int  # files whose results came from a worker
    workers: int  # worker processes started
    failures: tuple[str, ...]  # why a worker was given up, one line each
    seconds: float


def parse_batch(
    files: Iterable[File], parse: Parse, unit_prefix: str, settings: BatchSettings = DEFAULT_BATCH
) -> tuple[list[Result], BatchStats]:
    """``[parse(*file) for file in files]``, computed partly in worker processes.

    ``parse`` is the in-process parse (the parent's share and every fallback); the
    workers run :func:`kaylee_sync.source.units.parse_file` with ``unit_prefix``, which
    must be the same function. ``files`` is consumed as it is needed (a stream of blobs).
    """
    started = time.perf_counter()
    pool = _Pool(unit_prefix, settings)
    try:
        answers = pool.run(_chunks(files, settings), parse)
    finally:
        pool.close()
    results = [result for answer in answers for result in answer]
    stats = BatchStats(
        len(results), pool.in_workers, pool.started, tuple(pool.failures),
        time.perf_counter() - started,
    )  # fmt: skip
    log.debug(
        "parsed %d unit files in %.2f s, %d of them in %d worker processes",
        stats.files, stats.seconds, stats.in_workers, stats.workers,
    )  # fmt: skip
    return results, stats


def worker_count(settings: BatchSettings) -> int:
    if settings.workers is not None:
        return max(settings.workers, 0)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not known here: assume an idle machine
        load = 0.0
    if load >= (settings.max_load if settings.max_load is not None else cpus):
        return 0
    return max(0, min(cpus - 1, 8))


def _worker_command() -> list[str]:
    """This interpreter, importing what this process imports: its ``sys.path`` (made
    absolute by ``site`` at start-up) without the entries that mean "the current
    directory", so the worker's working directory is never searched."""
    paths = [str(Path(kaylee_sync.__file__).resolve().parent.parent)]
    paths += [path for path in sys.path if os.path.isabs(path) and path not in paths]
    bootstrap = (
        f"import sys; sys.path[:] = {paths!r}; "
        f"from {WORKER_MODULE} import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-P", "-c", bootstrap]


def _chunks(files: Iterable[File], settings: BatchSettings) -> Iterator[list[File]]:
    chunk: list[File] = []
    size = 0
    for file in files:
        chunk.append(file)
        size += len(file[2])
        if len(chunk) >= settings.chunk_files or size >= settings.chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _ResultUnpickler(pickle.Unpickler):
    """Builds results and plain data only: any other class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        cls = _RESULT_CLASSES.get((module, name))
        if cls is None:
            raise pickle.UnpicklingError(f"an answer may not contain {module}.{name}")
        return cls


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(8, "big") + payload


class _Failed(Exception):
    """A worker is given up; the message says why."""


class _Worker:
    """One worker process, its two pipes (non-blocking) and the chunks it owes."""

    def __init__(self, proc: subprocess.Popen[bytes], now: float) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.requests, self.answers = proc.stdin, proc.stdout
        os.set_blocking(self.requests.fileno(), False)
        os.set_blocking(self.answers.fileno(), False)
        self.outbox = bytearray()  # requests not yet taken by the pipe
        self.inbox = bytearray()  # answer bytes not yet making a whole frame
        self.queued: deque[int] = deque()  # chunk indexes sent, oldest first
        self.heard = now  # when it last showed progress (or was given work while idle)

    def write(self) -> None:
        try:
            written = os.write(self.requests.fileno(), self.outbox)
        except BlockingIOError:
            return
        except OSError as exc:  # EPIPE: it is gone
            raise _Failed(f"stopped reading its requests ({exc.strerror or exc})") from exc
        del self.outbox[:written]

    def read(self) -> list[bytes]:
        """The whole answers that arrived, oldest first."""
        try:
            data = os.read(self.answers.fileno(), _READ)
        except BlockingIOError:
            return []
        except OSError as exc:
            raise _Failed(f"its answers cannot be read ({exc.strerror or exc})") from exc
        if not data:
            code = self.proc.poll()
            raise _Failed(f"ended (exit status {code})" if code is not None else "closed its pipe")
        self.inbox += data
        frames = []
        while len(self.inbox) >= 8:
            size = int.from_bytes(self.inbox[:8], "big")
            if size > _MAX_FRAME:
                raise _Failed(f"sent a frame of {size} bytes")
            if len(self.inbox) < 8 + size:
                break
            frames.append(bytes(self.inbox[8 : 8 + size]))
            del self.inbox[: 8 + size]
        return frames

    def stop(self) -> None:
        for pipe in (self.requests, self.answers):
            pipe.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class _Pool:
    """The workers of one batch; :meth:`run` hands out chunks and collects answers."""

    def __init__(self, unit_prefix: str, settings: BatchSettings) -> None:
        self.settings = settings
        self.selector = selectors.DefaultSelector()
        self.live: list[_Worker] = []
        self.chunks: dict[int, list[File]] = {}  # sent and not answered yet
        self.orphans: list[int] = []  # chunks of workers given up: parsed in-process
        self.failures: list[str] = []
        self.in_workers = 0
        self.started = 0
        command = list(settings.worker_command) or _worker_command()
        if not command[0]:  # an embedded interpreter with no executable to start
            return
        for _ in range(worker_count(settings)):
            try:
                proc = subprocess.Popen(
                    [*command, unit_prefix],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            except OSError as exc:
                self.failures.append(f"a worker could not start: {exc.strerror or exc}")
                log.warning("unit files are parsed in-process: %s", self.failures[-1])
                break
            worker = _Worker(proc, time.monotonic())
            self.selector.register(worker.answers, selectors.EVENT_READ, worker)
            self.live.append(worker)
            self.started += 1

    def run(self, chunks: Iterator[list[File]], parse: Parse) -> list[list[Result]]:
        answers: dict[int, list[Result]] = {}
        count = 0
        exhausted = False
        while True:
            for worker in list(self.live):
                while not exhausted and worker in self.live and len(worker.queued) < _DEPTH:
                    chunk = next(chunks, None)
                    if chunk is None:
                        exhausted = True
                    else:
                        self._send(worker, count, chunk)
                        count += 1
            if not exhausted:  # every worker has work queued: take the next chunk here
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                else:
                    answers[count] = self._parse_here(chunk, parse, answers)
                    count += 1
                    continue
            if self.orphans:
                index = self.orphans.pop()
                answers[index] = self._parse_here(self.chunks.pop(index), parse, answers)
                continue
            if not any(worker.queued for worker in self.live):
                break
            self._poll(self._wait(), answers)
        return [answers[index] for index in range(count)]

    def _parse_here(
        self, chunk: list[File], parse: Parse, answers: dict[int, list[Result]]
    ) -> list[Result]:
        """``chunk`` parsed in this process, tending the pipes every few files: an answer
        (~120 KB a chunk) is larger than a pipe holds (64 KB), so a worker would wait
        for the parent to read it, idle, if the parent read only between its chunks."""
        results = []
        for i, file in enumerate(chunk, 1):
            results.append(parse(*file))
            if i % _POLL_EVERY == 0:
                self._poll(0, answers)
        self._poll(0, answers)
        return results

    def _send(self, worker: _Worker, index: int, chunk: list[File]) -> None:
        self.chunks[index] = chunk
        if not worker.queued:
            worker.heard = time.monotonic()
        worker.queued.append(index)
        worker.outbox += _frame(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
        self._flush(worker)

    def _flush(self, worker: _Worker) -> None:
        try:
            worker.write()
        except _Failed as exc:
            self._give_up(worker, str(exc))
            return
        key = self.selector.get_map().get(worker.requests)
        if worker.outbox and key is None:
            self.selector.register(worker.requests, selectors.EVENT_WRITE, worker)
        elif not worker.outbox and key is not None:
            self.selector.unregister(worker.requests)

    def _wait(self) -> float:
        """Seconds until the first busy worker's silence runs out."""
        now = time.monotonic()
        limit = self.settings.stall_timeout
        return max(0.0, min(w.heard + limit - now for w in self.live if w.queued))

    def _poll(self, timeout: float, answers: dict[int, list[Result]]) -> None:
        for key, events in self.selector.select(timeout):
            worker: _Worker = key.data
            if worker not in self.live:
                continue  # given up earlier in this round
            if events & selectors.EVENT_WRITE:
                self._flush(worker)
            elif events & selectors.EVENT_READ:
                try:
                    for frame in worker.read():
                        worker.heard = time.monotonic()
                        if not worker.queued:
                            raise _Failed("answered a question it was not asked")
                        index = worker.queued[0]
                        answers[index] = self._answer(frame, self.chunks[index])
                        self.in_workers += len(answers[index])
                        del self.chunks[index]
                        worker.queued.popleft()
                except _Failed as exc:
                    self._give_up(worker, str(exc))
        now = time.monotonic()
        for worker in list(self.live):
            if worker.queued and now - worker.heard > self.settings.stall_timeout:
                limit = self.settings.stall_timeout
                self._give_up(worker, f"said nothing for {limit:g} s with work queued")

    def _answer(self, frame: bytes, chunk: list[File]) -> list[Result]:
        """The results in ``frame`` if they answer ``chunk`` exactly; else _Failed."""
        try:
            results = _ResultUnpickler(io.BytesIO(frame)).load()
        except Exception as exc:  # any garbage: the frame is not an answer
            raise _Failed(f"sent an answer that cannot be read ({exc})") from exc
        if (
            not isinstance(results, list)
            or len(results) != len(chunk)
            or not all(
                isinstance(result, DesiredUnit | FileProblem)
                and (result.path, result.blob) == (path, blob)
                for result, (path, blob, _) in zip(results, chunk, strict=True)
            )
        ):
            raise _Failed("sent an answer to a question it was not asked")
        return results

    def _give_up(self, worker: _Worker, why: str) -> None:
        message = f"parse worker {worker.proc.pid} {why}; its files are parsed in-process"
        log.warning("%s", message)
        self.failures.append(message)
        self.live.remove(worker)
        self.orphans += worker.queued  # the chunk that failed its check is re-queued too
        worker.queued.clear()
        self._stop(worker)

    def _stop(self, worker: _Worker) -> None:
        for pipe in (worker.requests, worker.answers):
            if pipe in self.selector.get_map():
                self.selector.unregister(pipe)
        worker.stop()

    def close(self) -> None:
        for worker in self.live:
            self._stop(worker)
        self.live.clear()
        self.selector.close()
