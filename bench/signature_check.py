"""Benchmark: what ``--verify-signatures`` adds to a sync.

Every sync checks the head and every commit since the last synced one (one ``git log``
with ``%G?``, which runs ``ssh-keygen`` or ``gpg`` once per signed commit), so the cost
that matters is a new head's (one commit). Target: under 0.25 s on the shared 2-core
machine. A commit that passed is remembered (with a digest of the key files), so a poll
that finds the same head costs a ``git rev-list``. A push of 100 commits at once and an
OpenPGP head check (the keyring is imported at every check) are measured for context.

    python -m bench.signature_check [--runs 7] [--range 100]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import git

from bench.common import Measurement, bench_main, progress, timed
from kaylee_sync.source.gitcmd import GitCommands
from kaylee_sync.source.signatures import (
    CommitRefused,
    SignaturePolicy,
    forget_verified,
    verify_commits,
)

TARGET = 0.25  # seconds for the poll's check of one commit
ENV = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env={**os.environ, **ENV, **(env or {})},
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip()


def _signed_commits(repo: Path, key: Path, count: int) -> None:
    for i in range(count):
        (repo / "units").mkdir(exist_ok=True)
        (repo / "units" / "web.yaml").write_text(f"name: web\napps:\n  - image: web:{i}\n")
        _git(repo, "add", "-A")
        _git(repo, "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}",
             "commit", "-q", "-S", "--allow-empty", "-m", f"change {i}")  # fmt: skip


def run(args: argparse.Namespace) -> list[Measurement]:
    with tempfile.TemporaryDirectory(prefix="kbench-") as scratch:
        root = Path(scratch)
        key = root / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        signers = root / "allowed"
        signers.write_text(f"bench@example.invalid {(root / 'key.pub').read_text()}")
        repo = root / "repo"
        repo.mkdir()
        _git(repo, "init", "-q", "-b", "main")
        progress(f"making {args.range + 1} signed commits")
        _signed_commits(repo, key, 1)
        base = _git(repo, "rev-parse", "HEAD")
        _signed_commits(repo, key, args.range)
        head = _git(repo, "rev-parse", "HEAD")
        commands = GitCommands(git.Repo(repo), "bench")
        policy = SignaturePolicy(allowed_signers=signers)

        def cold(base: str) -> float:
            forget_verified()
            return timed(lambda: verify_commits(commands, policy, base, head))[1].wall

        first = tuple(cold(head) for _ in range(args.runs))
        again = tuple(
            timed(lambda: verify_commits(commands, policy, head, head))[1].wall
            for _ in range(args.runs)
        )
        pushed = tuple(cold(base) for _ in range(args.runs))
        results = [
            Measurement("verify a new head, ssh", first, target=TARGET),
            Measurement("verify the same head again (poll)", again),
            Measurement(
                f"verify {args.range} new commits, ssh",
                pushed,
                extra={"per_commit_ms": round(1000 * min(pushed) / args.range, 1)},
            ),
        ]
        if shutil.which("gpg") is not None:
            results.append(_gpg(root, commands, head, args.runs))
        commands.repo.close()
        return results


def _gpg(root: Path, commands: GitCommands, head: str, runs: int) -> Measurement:
    """The head check with a one-key OpenPGP keyring (the import is part of every check)."""
    home = Path(tempfile.mkdtemp(prefix="kbgpg-"))
    try:
        subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key",
             "Bench <bench@example.invalid>", "ed25519", "sign", "never"],
            check=True, capture_output=True,
        )  # fmt: skip
        keyring = root / "signers.asc"
        exported = subprocess.run(
            ["gpg", "--homedir", str(home), "--armor", "--export"], check=True, capture_output=True
        )
        keyring.write_bytes(exported.stdout)
        policy = SignaturePolicy(gpg_keyring=keyring)
        # The head is SSH-signed, so this keyring refuses it: the cost of the check (the
        # keyring's import, git and gpg) is what is measured, not its verdict.
        walls = []
        for _ in range(runs):
            forget_verified()
            walls.append(timed(lambda: _refused(commands, policy, head))[1].wall)
        return Measurement("verify a new head, openpgp keyring", tuple(walls))
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def _refused(commands: GitCommands, policy: SignaturePolicy, head: str) -> None:
    with contextlib.suppress(CommitRefused):
        verify_commits(commands, policy, head, head)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--range", type=int, default=100, help="commits pushed at once (default 100)")


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.signature_check")


if __name__ == "__main__":
    raise SystemExit(main())
