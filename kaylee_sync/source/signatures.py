"""Signed commits only: every commit a sync would bring in must carry an allowed signature.

With ``--verify-signatures`` a commit is deployed only if it, **and every commit between
the last synced commit and it**, carries a good signature from an allowed key. Checking
only the head (as Argo CD's first mechanism did) lets an unsigned commit ride in under a
signed one; so the set checked is ``git log <head> ^<last synced>`` plus the head itself
(a branch reset to an older, never-checked commit is checked too). Without a last synced
commit (first sync) that is the head alone; after a force-push to an unrelated history it
is every commit of the new history, because none of them is reachable from the old one.

Git verifies, never this module: SSH signatures against ``gpg.ssh.allowedSignersFile``
(principal and key must match a line of ``--allowed-signers``), OpenPGP signatures by
gpg against a private, throw-away GnuPG home into which only ``--gpg-keyring`` is
imported (with ``trust-model always``: being in that file *is* being allowed). The
user's own keyring, agent and git configuration never take part, so an operator's
personal trust settings cannot widen what the daemon accepts.

Fail closed: anything but git's ``G`` (good signature, allowed key) refuses the commit —
no signature, an unknown key, a bad or expired signature, a missing gpg — and a git
failure refuses it too (:class:`CommitRefused` is a :class:`SourceError`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from kaylee_sync.errors import UsageError
from kaylee_sync.source.credentials import _extra_config
from kaylee_sync.source.errors import SourceError
from kaylee_sync.source.gitcmd import GitCommands

# %G? (git log's signature verdict) → why anything but G is refused
_REASONS = {
    "N": "no signature",
    "U": "signed by a key that is not allowed",
    "B": "bad signature (the commit was altered after signing, or the key does not match)",
    "X": "the signature has expired",
    "Y": "signed by an expired key",
    "R": "signed by a revoked key",
    "E": "the signature cannot be checked (unknown key, or no gpg to check it)",
}
_FORMAT = "%H%x00%G?%x00%GK%x00"
_CHUNK = 500  # commits per git log: far below any command-line limit
_MEMO = 10_000  # commits remembered as verified (a few hundred KiB)
Verdict = tuple[str, str, str]  # commit, %G?, key

# (digest of the key files, commit) of every commit that passed: a poll that finds the
# head already checked costs a rev-list, not an ssh-keygen or gpg run per commit.
_VERIFIED: OrderedDict[tuple[str, str], None] = OrderedDict()
_VERIFIED_LOCK = threading.Lock()
_GPG_TIMEOUT = 60.0


@dataclass(frozen=True)
class SignaturePolicy:
    """Which keys may sign the commits that get deployed (``--verify-signatures``)."""

    allowed_signers: Path | None = None
    """ssh-keygen's allowed-signers file (``<principal> <key type> <key>`` a line), for
    SSH-signed commits; git re-reads it at every check, so an edit needs no restart."""

    gpg_keyring: Path | None = None
    """Exported OpenPGP public keys (``gpg --export``, armored or not), for GnuPG-signed
    commits; every key in it is allowed. Read again at every check."""

    def __post_init__(self) -> None:
        if self.allowed_signers is None and self.gpg_keyring is None:
            raise UsageError(
                "--verify-signatures needs --allowed-signers FILE and/or --gpg-keyring FILE"
            )
        for flag, path in (
            ("--allowed-signers", self.allowed_signers),
            ("--gpg-keyring", self.gpg_keyring),
        ):
            if path is not None and not os.access(path, os.R_OK):
                raise UsageError(f"{flag} {path}: not a readable file")


@dataclass(frozen=True)
class Refusal:
    """The first commit (oldest first) that failed the check, and how many others did."""

    commit: str
    key: str  # the signing key's fingerprint / id as git reports it; "" when unsigned
    reason: str
    others: int = 0  # further refused commits in the same range

    def __str__(self) -> str:
        text = (
            f"signature check refused commit {self.commit[:12]}: {self.reason} "
            f"(key: {self.key or 'none'})"
        )
        if self.others:
            text += f"; {self.others} more commit(s) in the range also refused"
        return text


class CommitRefused(SourceError):
    """A commit to be deployed has no good signature from an allowed key."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(str(refusal))


def verify_commits(
    commands: GitCommands, policy: SignaturePolicy, base: str | None, head: str
) -> int:
    """Check ``head`` and every commit reachable from it but not from ``base``.

    ``base`` is the last synced commit (None or "" before the first sync; a commit this
    repository does not hold counts as None: everything reachable is new). Returns how
    many commits git checked now — a commit that passed before with the very same key
    files is not checked again — and raises :class:`CommitRefused` naming the oldest
    bad one.
    """
    if not base:
        revisions = ["--no-walk", head]  # first sync: the head is all there is to deploy
    elif commands.rev_parse(base):
        revisions = [head, f"^{base}"]
    else:
        revisions = [head]  # the old history is gone: nothing tells what is new
    listed = commands.run("rev-list", *revisions, "--").split()  # newest first
    if head not in listed:
        listed.append(head)  # head is an ancestor of base (a reset): it is checked too
    digest = _key_digest(policy)
    with _VERIFIED_LOCK:
        unknown = [c for c in listed if (digest, c) not in _VERIFIED]
    verdicts = _check(commands, policy, unknown)
    bad = [(c, k, _REASONS.get(v, f"unknown verdict {v!r}")) for c, v, k in verdicts if v != "G"]
    if bad:
        commit, key, reason = bad[-1]  # newest first: the last is the oldest
        raise CommitRefused(Refusal(commit, key, reason, len(bad) - 1))
    with _VERIFIED_LOCK:
        for commit in unknown:
            _VERIFIED[(digest, commit)] = None
        while len(_VERIFIED) > _MEMO:
            _VERIFIED.popitem(last=False)
    return len(unknown)


def forget_verified() -> None:
    """Empty the memo of commits that passed (benchmarks measure the first check)."""
    with _VERIFIED_LOCK:
        _VERIFIED.clear()


def _check(commands: GitCommands, policy: SignaturePolicy, commits: list[str]) -> list[Verdict]:
    """git's verdict on each of ``commits``, in their order."""
    verdicts: list[Verdict] = []
    if not commits:
        return verdicts
    with tempfile.TemporaryDirectory(prefix="kaylee-sync-verify-") as scratch:
        env = _environment(policy, Path(scratch))
        for i in range(0, len(commits), _CHUNK):
            chunk = commits[i : i + _CHUNK]
            out = commands.run(
                "log", "--no-walk=unsorted", f"--format={_FORMAT}", *chunk, "--", env=env
            )
            verdicts += _parse(out)
    return verdicts


def _key_digest(policy: SignaturePolicy) -> str:
    """A digest of the key files' contents: a verdict holds only for the keys it was made
    with, so removing a key takes effect at the next check."""
    digest = hashlib.sha256()
    for flag, path in (
        ("--allowed-signers", policy.allowed_signers),
        ("--gpg-keyring", policy.gpg_keyring),
    ):
        try:
            digest.update(path.read_bytes() if path is not None else b"")
        except OSError as exc:
            raise SourceError(f"cannot read {flag} {path}: {exc.strerror}") from exc
        digest.update(b"\0")
    return digest.hexdigest()


def _parse(out: str) -> list[Verdict]:
    """``(commit, verdict, key)`` per commit of ``git log --format=_FORMAT``."""
    fields = [f.strip() for f in out.split("\0")]
    return [(fields[i], fields[i + 1], fields[i + 2]) for i in range(0, len(fields) - 2, 3)]


def _environment(policy: SignaturePolicy, scratch: Path) -> dict[str, str]:
    """git's environment for one check: our allowed signers and GnuPG home, nobody else's."""
    signers = policy.allowed_signers
    if signers is None:  # SSH signatures must still be refused, not crash git
        signers = scratch / "no-allowed-signers"
        signers.touch()
    home = scratch / "gnupg"
    home.mkdir(mode=0o700)
    (home / "gpg.conf").write_text("trust-model always\nno-autostart\n")
    if policy.gpg_keyring is not None:
        _import_keyring(home, policy.gpg_keyring)
    return {
        "GNUPGHOME": str(home),
        **_extra_config(
            {
                "gpg.ssh.allowedSignersFile": str(Path(signers).absolute()),
                "gpg.program": "gpg",
                "gpg.ssh.program": "ssh-keygen",
                "log.showSignature": "false",
            }
        ),
    }


def _import_keyring(home: Path, keyring: Path) -> None:
    try:
        done = subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--quiet", "--import", str(keyring)],
            capture_output=True,
            text=True,
            timeout=_GPG_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"cannot import --gpg-keyring {keyring}: {exc}") from exc
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["gpg failed"])[-1]
        raise SourceError(f"cannot import --gpg-keyring {keyring}: {why}")
