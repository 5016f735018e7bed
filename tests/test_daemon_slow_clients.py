"""A daemon whose port is open to the world keeps working while slow clients hold it.

A real ``kaylee-sync`` process, with an open-file limit of 1024 (systemd's default
soft limit) set before it starts, and 2,000 slow clients (a slowloris that reconnects
whatever the daemon drops) on its listener. With one thread and one descriptor per
connection and no bound, the clients took every descriptor and the next git fetch
crashed the daemon. Now: probes and the webhook are answered, a pushed commit reaches
etcd, the process never exits, and nothing in its log is a traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from bench.slowloris import Slowloris
from kaylee_sync.store import Store
from tests.gitrepo import two_units, unit_yaml
from tests.gitrepo import unit_json as spec
from tests.polling import wait_for
from tests.test_gitops_daemon import image_of

SECRET = "slow-clients-secret-5b1e"
NOFILE = 1024
SLOW_CLIENTS = 2000
# Runs the daemon with a lower open-file limit (no preexec_fn: the test has threads).
LAUNCH = (
    "import os, resource, sys; "
    "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def kaylee_sync() -> str:
    script = Path(sys.executable).parent / "kaylee-sync"
    return str(script) if script.exists() else "kaylee-sync"


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": "sha256=" + digest}


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_the_daemon_syncs_and_answers_while_2000_slow_clients_hold_its_port(
    tmp_path: Path, etcd_args: list[str], store: Store
) -> None:
    repo = two_units(tmp_path / "repo")
    (tmp_path / "secret").write_text(SECRET)
    log_path = tmp_path / "daemon.log"
    args = [
        kaylee_sync(), *etcd_args,
        "--repo", f"file://{repo.path}", "--path", "units",
        "--cache-dir", str(tmp_path / "cache"),
        "--listen", "127.0.0.1:0",
        "--webhook-secret-file", str(tmp_path / "secret"),
        "--interval", "3600",  # only the webhook brings a push in
        "--no-scheduler",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(NOFILE), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> re.Match[str] | None:
            assert proc.poll() is None, log_path.read_text()
            return re.search(r"HTTP listener on http://127\.0\.0\.1:(\d+)", log_path.read_text())

        found = wait_for(listening, timeout=60, what="the listener's address in the log")
        port = int(found.group(1))
        wait_for(lambda: image_of(store, "web"), timeout=60, what="the first sync")
        url = f"http://127.0.0.1:{port}"

        with Slowloris(("127.0.0.1", port), SLOW_CLIENTS) as slow:
            wait_for(lambda: slow.connects >= SLOW_CLIENTS, timeout=60, what="slow clients")
            with httpx.Client(base_url=url, timeout=30) as client:
                for n in range(2, 5):
                    assert client.get("/healthz").status_code == 200
                    repo.write("units/web.yaml", unit_yaml("web", f"example.com/web:{n}"))
                    repo.commit(f"web {n}")
                    body = b'{"ref": "refs/heads/main"}'
                    hook = client.post("/hooks/git", content=body, headers=signed(body))
                    assert hook.status_code == 202
                    want = spec("web", f"example.com/web:{n}")
                    wait_for(lambda want=want: image_of(store, "web") == want, timeout=60)  # type: ignore[misc]
                    assert proc.poll() is None
                    assert open_files(proc.pid) < NOFILE
            assert slow.held > 0  # the clients were there all along
        assert proc.poll() is None, "the daemon exited"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text()
    assert "Traceback" not in output, output[-5000:]
    assert "Too many open files" not in output
