"""Git commands that talk to the remote: one deadline each, in a process group we can kill.

A fetch can hang for as long as the remote keeps the connection open without answering.
GitPython's ``kill_after_timeout`` kills git itself, but git runs the transport as a
child (``git-remote-http``, ``ssh``) that keeps the output pipes open, so reading them
went on until the remote gave up. And nothing could stop a fetch early: SIGTERM only
set ``should_exit`` while the main thread sat in it. So these commands are started
here, with :mod:`subprocess`:

- each in a session of its own (``start_new_session``): its process group holds git and
  every helper it starts, and killing the group closes the pipes at once;
- with one deadline for the whole command (``timeout``), not per read;
- stopped by :meth:`NetworkCommands.cancel` from any thread, which also refuses every
  command started afterwards: it is called once, when the process shuts down.

The group is sent SIGTERM first, so that git removes its ``.lock`` files (its signal
handlers do), and SIGKILL :data:`KILL_GRACE` seconds later if anything is left.
An ``OSError`` from starting git (``EMFILE`` when the process is out of file
descriptors, ``ENOMEM``) is a :class:`SourceUnavailable` like any other failed fetch:
the caller records it and tries again later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

from kaylee_sync.source.errors import SourceUnavailable
from kaylee_sync.source.gitcmd import reason

#: seconds between SIGTERM and SIGKILL to a command's process group
KILL_GRACE = 2.0


class NetworkCommands:
    """Runs git's network commands for one repository, one at a time, cancellably."""

    def __init__(self, git_dir: str, display: str) -> None:
        self.git_dir = git_dir
        self.display = display
        self._guard = threading.Lock()  # guards _proc and _cancelled, never held long
        self._proc: subprocess.Popen[bytes] | None = None
        self._cancelled = False

    def run(
        self, args: Sequence[str], *, env: Mapping[str, str], timeout: float, limit: float
    ) -> str:
        """``git args…`` in the repository, killed after ``timeout`` seconds; its stdout.

        SourceUnavailable on any failure; a timeout is reported as ``limit`` (the whole
        operation's budget, of which ``timeout`` is what is left).
        """
        verb = args[0]
        # Plain ASCII English from git, as GitPython asks for: reason() reads its stderr.
        full_env = {**os.environ, "LANGUAGE": "C", "LC_ALL": "C", **env}
        with self._guard:
            if self._cancelled:
                raise SourceUnavailable(f"cannot {verb} {self.display}: shutting down")
            try:
                proc = subprocess.Popen(
                    ["git", *args],
                    cwd=self.git_dir,
                    env=full_env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SourceUnavailable(
                    f"cannot {verb} {self.display}: cannot start git: {exc.strerror or exc}"
                ) from exc
            self._proc = proc
        try:
            out, err = proc.communicate(timeout=max(timeout, 0.001))
        except subprocess.TimeoutExpired as exc:
            self._stop(proc)
            proc.communicate()
            raise SourceUnavailable(
                f"cannot {verb} {self.display}: no answer within {limit:g} s"
            ) from exc
        finally:
            with self._guard:
                self._proc = None
        if proc.returncode != 0:
            # The cause says which command and how it ended; never its stderr, which
            # reason() has already redacted into the message.
            cause = subprocess.CalledProcessError(proc.returncode, ["git", *args])
            why = (
                "stopped (shutting down)"
                if self._cancelled
                else reason(err.decode("utf-8", "replace"))
            )
            raise SourceUnavailable(f"cannot {verb} {self.display}: {why}") from cause
        return out.decode("utf-8", "replace")

    def cancel(self) -> None:
        """Stop the command in progress (if any) and refuse every later one. Thread-safe,
        and quick: the group gets SIGTERM now, SIGKILL from a timer thread if it lingers."""
        with self._guard:
            self._cancelled = True
            proc = self._proc
        if proc is not None:
            self._stop(proc, wait=False)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _stop(self, proc: subprocess.Popen[bytes], *, wait: bool = True) -> None:
        _signal_group(proc, signal.SIGTERM)
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(KILL_GRACE)
            _signal_group(proc, signal.SIGKILL)
        else:
            timer = threading.Timer(KILL_GRACE, _signal_group, (proc, signal.SIGKILL))
            timer.daemon = True
            timer.start()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The group outlives git when a helper is still running, so it is signalled even
    # after git itself exited; the group id is git's pid, which cannot be reused while
    # Popen has not reaped git (returncode still None).
    if proc.returncode is not None and sig == signal.SIGTERM:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(proc.pid, sig)
