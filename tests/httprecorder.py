"""A real HTTP server on 127.0.0.1 (ephemeral port) that records every request it gets.

It plays a Git host's status API or a webhook receiver: answers are scripted (a status
code per request, 201 once the script runs out), and ``hold()`` makes it a slow receiver
that answers nobody until ``release()`` — so a test can prove that the code under test
went on without waiting for it.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.polling import wait_for


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    answered: int

    def json(self) -> Any:
        return json.loads(self.body)


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.answers: deque[int] = deque()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self.arrived = 0  # requests received, answered or not (a held one counts)
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with recorder._lock:
                    recorder.arrived += 1
                recorder._released.wait(60)
                with recorder._lock:
                    code = recorder.answers.popleft() if recorder.answers else 201
                    recorder.requests.append(
                        Recorded(
                            "POST",
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            code,
                        )
                    )
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reads self.requests

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def answered(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def wait_for(self, count: int, what: str = "", timeout: float = 10.0) -> list[Recorded]:
        """The requests, once at least ``count`` were answered."""
        return wait_for(
            lambda: (lambda r: r if len(r) >= count else None)(self.answered()),
            timeout,
            what or f"{count} request(s)",
        )

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def recording() -> Iterator[Recorder]:
    recorder = Recorder()
    try:
        yield recorder
    finally:
        recorder.close()
