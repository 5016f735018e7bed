"""``kaylee-sync status --watch`` and ``kaylee ls --watch``, as real processes.

Each test starts the program with ``--watch``, changes etcd under it, waits until a later
frame shows the change, then interrupts it as Ctrl-C would: exit code 130.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kaylee_sync.spec import App, UnitSpec, to_json
from kaylee_sync.store import Store
from kaylee_sync.sync.suspend import suspend

from .polling import wait_for

BIN = Path(sys.executable).parent


class Watched:
    """A running ``--watch`` process whose stdout lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        self.reader = threading.Thread(
            target=lambda: [self.lines.put(x) for x in stdout], daemon=True
        )
        self.reader.start()

    def has(self, text: str) -> bool:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return any(text in line for line in self.seen)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        self.reader.join(10)  # the reader has seen the end of stdout
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


def test_status_watch_shows_a_new_suspension_and_ctrl_c_exits_130(
    store: Store, etcd_endpoint: str, etcd_prefix: str
) -> None:
    watched = Watched(
        [str(BIN / "kaylee-sync"), "status", "--watch", "--every", "0.2",
         "--etcd-endpoints", etcd_endpoint, "--etcd-prefix", etcd_prefix]
    )  # fmt: skip
    try:
        wait_for(lambda: watched.has("last attempt:  never synced"), 30, "a first frame")
        assert not watched.has("suspended:     web")
        suspend(store, "web", who="test", reason="watching", until=None, now=time.time())
        wait_for(lambda: watched.has("suspended:     web"), 30, "a frame with the suspension")
        assert watched.has("Every 0.2 s: kaylee-sync status")
    finally:
        code = watched.interrupt()
    assert code == 130
    assert not watched.has("Traceback")


def test_ls_watch_shows_a_new_unit(store: Store, etcd_endpoint: str, etcd_prefix: str) -> None:
    env = {**os.environ, "KAYLEE_ETCD_ENDPOINTS": etcd_endpoint, "KAYLEE_ETCD_PREFIX": etcd_prefix}
    args = [str(BIN / "kaylee"), "ls", "--no-fleet", "--watch", "--every", "0.2"]
    watched = Watched(args, env)  # the etcd options from the environment, as an operator's
    try:
        wait_for(lambda: watched.has("UNIT"), 30, "a first frame")
        assert not watched.has("watched-unit")
        spec = UnitSpec(name="watched-unit", apps=(App(image="docker://nginx"),))
        store.put_unit("watched-unit", to_json(spec))
        wait_for(lambda: watched.has("watched-unit"), 30, "a frame with the new unit")
    finally:
        code = watched.interrupt()
    assert code == 130
