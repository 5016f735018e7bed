"""Signed commits only (``--verify-signatures``), with real git signing and the session etcd.

SSH keys are made in each test with ssh-keygen and commits signed with ``git commit -S``;
OpenPGP keys are made with gpg in a throw-away home when gpg is installed. The rule
under test: a commit syncs only if it and every commit since the last synced one carry
a good signature from an allowed key; a refused commit changes nothing in etcd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from kaylee_sync.cli.sync import cli
from kaylee_sync.errors import UsageError
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.source.signatures import CommitRefused, SignaturePolicy, verify_commits
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.status import read_status
from kaylee_sync.sync.syncer import Syncer, SyncSettings
from tests.gitrepo import GitRepo, unit_yaml
from tests.polling import wait_for
from tests.test_gitops_daemon import running


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str  # "ssh-ed25519 AAAA…"
    fingerprint: str  # "SHA256:…", as git reports it


def ssh_key(directory: Path, name: str) -> SshKey:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
    )
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path)], check=True, capture_output=True, text=True
    )
    public = " ".join((directory / f"{name}.pub").read_text().split()[:2])
    return SshKey(path, public, listed.stdout.split()[1])


def signed(repo: GitRepo, key: SshKey, message: str = "signed change") -> str:
    repo.git("add", "-A")
    repo.git(
        "-c", "gpg.format=ssh", "-c", f"user.signingkey={key.private}",
        "commit", "-q", "-S", "--allow-empty", "-m", message,
    )  # fmt: skip
    return repo.head()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.mkdir()
    return path


@pytest.fixture
def alice(keys_dir: Path) -> SshKey:
    return ssh_key(keys_dir, "alice")


@pytest.fixture
def mallory(keys_dir: Path) -> SshKey:
    return ssh_key(keys_dir, "mallory")


@pytest.fixture
def allowed(keys_dir: Path, alice: SshKey) -> Path:
    """An allowed-signers file naming alice's key only."""
    path = keys_dir / "allowed_signers"
    path.write_text(f"alice@example.invalid {alice.public}\n")
    return path


@pytest.fixture
def repo(tmp_path: Path, alice: SshKey) -> GitRepo:
    r = GitRepo(tmp_path / "repo")
    r.write("units/web.yaml", unit_yaml("web", "example.com/web:1"))
    signed(r, alice, "first unit")
    return r


@pytest.fixture
def source(repo: GitRepo) -> Iterator[GitSource]:
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as opened:
        yield opened


@pytest.fixture
def syncer(source: GitSource, store: Store, allowed: Path) -> Syncer:
    return Syncer(source, store, SyncSettings(signatures=SignaturePolicy(allowed)))


def snapshot(store: Store) -> dict[str, tuple[bytes, int]]:
    """Every unit and the inventory, with their mod revisions: "nothing changed" is equality."""
    found = {s.key: (s.value, s.mod_revision) for s in store.get_prefix(keys.UNITS)}
    inventory = store.get(keys.INVENTORY)
    if inventory is not None:
        found[keys.INVENTORY] = (inventory.value, inventory.mod_revision)
    return found


def test_an_unsigned_commit_after_a_signed_one_is_refused_and_nothing_changes(
    repo: GitRepo, syncer: Syncer, store: Store, alice: SshKey, caplog: pytest.LogCaptureFixture
) -> None:
    good = repo.head()
    assert syncer.sync_once().ok
    before = snapshot(store)
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:666"))
    bad = repo.commit("unsigned change")

    result = syncer.sync_once()

    assert not result.ok and result.stage == "signature"
    assert f"commit {bad[:12]}: no signature (key: none)" in result.error
    assert snapshot(store) == before  # no unit, no inventory written
    status = read_status(store)
    assert status is not None and status.last_success is not None
    assert status.attempt.commit == bad and bad[:12] in status.attempt.error
    assert status.last_success.commit == good
    assert f"{bad[:12]}: no signature (key: none)" in caplog.text


def test_a_signed_commit_on_top_of_an_unsigned_one_is_still_refused_naming_the_unsigned_one(
    repo: GitRepo, syncer: Syncer, store: Store, alice: SshKey
) -> None:
    assert syncer.sync_once().ok
    before = snapshot(store)
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:666"))
    unsigned = repo.commit("sneaked in")
    repo.write("units/api.yaml", unit_yaml("api"))
    signed(repo, alice, "looks innocent")

    result = syncer.sync_once()

    assert not result.ok and f"commit {unsigned[:12]}: no signature" in result.error
    assert snapshot(store) == before


def test_rewriting_the_unsigned_commit_as_a_signed_one_syncs(
    repo: GitRepo, syncer: Syncer, store: Store, alice: SshKey
) -> None:
    good = repo.head()
    assert syncer.sync_once().ok
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    repo.commit("unsigned change")
    assert not syncer.sync_once().ok
    repo.git("reset", "-q", "--soft", good)  # the fix: the same change, signed this time
    fixed = signed(repo, alice, "signed change")

    result = syncer.sync_once()

    assert result.ok and result.commit == fixed
    inventory = read_actual(store).inventory
    assert inventory is not None and inventory.commit == fixed
    web = store.get_unit("web")
    assert web is not None and b"example.com/web:2" in web.value


def test_a_commit_signed_by_a_key_that_is_not_allowed_is_refused_naming_the_key(
    repo: GitRepo, syncer: Syncer, store: Store, mallory: SshKey
) -> None:
    assert syncer.sync_once().ok
    before = snapshot(store)
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:666"))
    bad = signed(repo, mallory, "signed, but by whom")

    result = syncer.sync_once()

    assert not result.ok
    assert f"commit {bad[:12]}: signed by a key that is not allowed" in result.error
    assert f"(key: {mallory.fingerprint})" in result.error
    assert snapshot(store) == before


def test_the_first_sync_checks_the_head_only(
    tmp_path: Path, store: Store, allowed: Path, alice: SshKey
) -> None:
    repo = GitRepo(tmp_path / "old")
    repo.write("units/web.yaml", unit_yaml("web"))
    repo.commit("history from before signing")
    head = signed(repo, alice, "the first signed commit")
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as source:
        policy = SignaturePolicy(allowed)
        assert verify_commits(source.git_commands(), policy, None, head) == 1
        assert Syncer(source, store, SyncSettings(signatures=policy)).sync_once().ok


def test_an_unsigned_head_is_refused_at_the_first_sync(
    tmp_path: Path, store: Store, allowed: Path
) -> None:
    repo = GitRepo(tmp_path / "plain")
    repo.write("units/web.yaml", unit_yaml("web"))
    head = repo.commit("unsigned")
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as source:
        result = Syncer(
            source, store, SyncSettings(signatures=SignaturePolicy(allowed))
        ).sync_once()
    assert not result.ok and f"{head[:12]}: no signature" in result.error
    assert snapshot(store) == {}


def test_a_merge_brings_every_commit_of_the_merged_branch_under_the_check(
    repo: GitRepo, syncer: Syncer, store: Store, alice: SshKey
) -> None:
    assert syncer.sync_once().ok
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("units/api.yaml", unit_yaml("api"))
    unsigned = repo.commit("unsigned work on a branch")
    repo.git("checkout", "-q", "main")
    repo.git(
        "-c", "gpg.format=ssh", "-c", f"user.signingkey={alice.private}",
        "merge", "-q", "-S", "--no-ff", "-m", "signed merge", "feature",
    )  # fmt: skip

    result = syncer.sync_once()

    assert not result.ok and f"commit {unsigned[:12]}: no signature" in result.error


def test_a_force_push_to_an_unrelated_history_needs_every_new_commit_signed(
    repo: GitRepo, syncer: Syncer, store: Store, alice: SshKey
) -> None:
    assert syncer.sync_once().ok
    repo.git("checkout", "-q", "--orphan", "rewrite")
    repo.git("rm", "-q", "-r", "--cached", ".")
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:3"))
    unsigned_root = repo.commit("unsigned root of the new history")
    signed(repo, alice, "signed tip")
    repo.git("branch", "-q", "-M", "rewrite", "main")

    refused = syncer.sync_once()
    assert not refused.ok and f"commit {unsigned_root[:12]}: no signature" in refused.error

    repo.git("checkout", "-q", "--orphan", "clean")
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:4"))
    signed(repo, alice, "signed root")
    repo.write("units/api.yaml", unit_yaml("api"))
    tip = signed(repo, alice, "signed tip")
    repo.git("branch", "-q", "-M", "clean", "main")

    result = syncer.sync_once()
    assert result.ok and result.commit == tip


def test_a_last_synced_commit_the_repository_no_longer_has_means_all_history_is_new(
    repo: GitRepo, source: GitSource, allowed: Path, alice: SshKey
) -> None:
    gone = "1" * 40
    head = signed(repo, alice, "second signed commit")
    policy = SignaturePolicy(allowed)
    assert verify_commits(source.git_commands(), policy, gone, head) == 2
    repo.git("commit", "-q", "--allow-empty", "-m", "unsigned")
    signed(repo, alice, "third")
    with pytest.raises(CommitRefused, match="no signature"):
        verify_commits(source.git_commands(), policy, gone, repo.head())


def test_a_branch_reset_to_an_older_unsigned_commit_is_refused(
    tmp_path: Path, store: Store, allowed: Path, alice: SshKey
) -> None:
    repo = GitRepo(tmp_path / "old")
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:old"))
    old = repo.commit("unsigned, from before signing")
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:new"))
    signed(repo, alice)
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as source:
        syncer = Syncer(source, store, SyncSettings(signatures=SignaturePolicy(allowed)))
        assert syncer.sync_once().ok
        before = snapshot(store)
        repo.git("reset", "-q", "--hard", old)
        result = syncer.sync_once()
    assert not result.ok and f"commit {old[:12]}: no signature" in result.error
    assert snapshot(store) == before


def test_an_edited_allowed_signers_file_is_read_at_the_next_check(
    repo: GitRepo, syncer: Syncer, allowed: Path, mallory: SshKey
) -> None:
    signed(repo, mallory, "by mallory")
    assert not syncer.sync_once().ok
    allowed.write_text(allowed.read_text() + f"mallory@example.invalid {mallory.public}\n")
    assert syncer.sync_once().ok


def test_removing_a_key_refuses_a_head_that_passed_with_it(
    repo: GitRepo, syncer: Syncer, store: Store, allowed: Path
) -> None:
    assert syncer.sync_once().ok
    assert syncer.sync_once().ok  # the same head again: remembered as verified
    allowed.write_text("")  # alice's key withdrawn

    result = syncer.sync_once()

    assert not result.ok and "signed by a key that is not allowed" in result.error


def test_the_daemon_reports_a_refused_commit_in_metrics_readiness_and_status(
    tmp_path: Path, store: Store, allowed: Path
) -> None:
    repo = GitRepo(tmp_path / "plain")
    repo.write("units/web.yaml", unit_yaml("web"))
    head = repo.commit("unsigned")
    sync = SyncSettings(signatures=SignaturePolicy(allowed))
    with (
        GitSource(SourceSettings(repo=str(repo.path), path="units")) as source,
        running(source, store, listen="127.0.0.1:0", sync=sync) as daemon,
    ):
        wait_for(lambda: daemon.last_result, 20, "the first sync")
        assert daemon.http is not None
        ready = httpx.get(daemon.http.url + "/readyz", timeout=5)
        metrics = httpx.get(daemon.http.url + "/metrics", timeout=5).text
    assert 'kaylee_sync_errors_total{stage="signature"} 1.0' in metrics
    assert ready.status_code == 503 and f"{head[:12]}: no signature (key: none)" in ready.text
    assert snapshot(store) == {}


def test_a_policy_without_keys_or_with_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs --allowed-signers FILE and/or --gpg-keyring"):
        SignaturePolicy()
    with pytest.raises(UsageError, match=r"--gpg-keyring .*missing\.asc: not a readable file"):
        SignaturePolicy(gpg_keyring=tmp_path / "missing.asc")


# -- OpenPGP -------------------------------------------------------------------------------


@pytest.fixture
def gpg_home() -> Iterator[Path]:
    """A GnuPG home with one signing key (a short path: gpg-agent's socket lives there)."""
    if shutil.which("gpg") is None:
        pytest.skip("gpg is not installed: OpenPGP signatures cannot be made or checked here")
    home = Path(tempfile.mkdtemp(prefix="kgpg-"))
    try:
        subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--quiet", "--passphrase", "",
             "--quick-gen-key", "Alice <alice@example.invalid>", "ed25519", "sign", "never"],
            check=True, capture_output=True,
        )  # fmt: skip
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def gpg_signed(repo: GitRepo, home: Path, message: str) -> str:
    saved = os.environ.get("GNUPGHOME")
    os.environ["GNUPGHOME"] = str(home)
    try:
        repo.git("add", "-A")
        repo.git(
            "-c", "user.signingkey=alice@example.invalid", "commit", "-q", "-S", "--allow-empty",
            "-m", message,
        )  # fmt: skip
    finally:
        if saved is None:
            del os.environ["GNUPGHOME"]
        else:
            os.environ["GNUPGHOME"] = saved
    return repo.head()


def test_an_openpgp_signed_commit_syncs_with_its_keyring_and_is_refused_without(
    tmp_path: Path, store: Store, gpg_home: Path, allowed: Path
) -> None:
    keyring = tmp_path / "allowed.asc"
    exported = subprocess.run(
        ["gpg", "--homedir", str(gpg_home), "--armor", "--export", "alice@example.invalid"],
        check=True, capture_output=True,
    )  # fmt: skip
    keyring.write_bytes(exported.stdout)
    repo = GitRepo(tmp_path / "repo")
    repo.write("units/web.yaml", unit_yaml("web"))
    head = gpg_signed(repo, gpg_home, "openpgp signed")
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as source:
        ssh_only = Syncer(source, store, SyncSettings(signatures=SignaturePolicy(allowed)))
        refused = ssh_only.sync_once()
        assert not refused.ok and f"{head[:12]}: the signature cannot be checked" in refused.error
        assert snapshot(store) == {}
        with_keyring = SignaturePolicy(allowed, gpg_keyring=keyring)
        assert Syncer(source, store, SyncSettings(signatures=with_keyring)).sync_once().ok


# -- the command line ----------------------------------------------------------------------


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_plan_and_apply_refuse_an_unsigned_commit_naming_it(
    repo: GitRepo, syncer: Syncer, allowed: Path, etcd_args: list[str], tmp_path: Path
) -> None:
    assert syncer.sync_once().ok
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:666"))
    bad = repo.commit("unsigned change")
    where = ["--repo", str(repo.path), "--path", "units", *etcd_args]
    verify = ["--verify-signatures", "--allowed-signers", str(allowed)]
    saved = tmp_path / "plan.json"

    refused = run("plan", *where, *verify)
    unchecked = run("plan", *where, "--out", str(saved))
    applied = run("apply", str(saved), *where, *verify)

    assert refused.exit_code == 1
    assert f"commit {bad[:12]}: no signature (key: none)" in refused.output
    assert "Traceback" not in refused.output
    assert unchecked.exit_code == 2  # without the flag it would deploy
    assert applied.exit_code == 1 and f"commit {bad[:12]}" in applied.output


def test_plan_shows_a_signed_commit_as_usual(
    repo: GitRepo, alice: SshKey, allowed: Path, etcd_args: list[str]
) -> None:
    result = run(
        "plan", "--repo", str(repo.path), "--path", "units", *etcd_args,
        "--verify-signatures", "--allowed-signers", str(allowed),
    )  # fmt: skip
    assert result.exit_code == 2 and "web" in result.output


def test_the_daemon_once_refuses_an_unsigned_commit_and_writes_no_unit(
    tmp_path: Path, allowed: Path, etcd_args: list[str], store: Store
) -> None:
    repo = GitRepo(tmp_path / "plain")
    repo.write("units/web.yaml", unit_yaml("web"))
    repo.commit("unsigned")
    env = {"KAYLEE_VERIFY_SIGNATURES": "1", "KAYLEE_ALLOWED_SIGNERS": str(allowed)}
    result = CliRunner().invoke(
        cli,
        ["--repo", str(repo.path), "--path", "units", *etcd_args, "--once", "--no-scheduler",
         "--listen", ""],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 1
    assert snapshot(store) == {}
    status = read_status(store)
    assert status is not None and "no signature (key: none)" in status.attempt.error


def test_a_key_file_without_verify_signatures_is_refused(repo: GitRepo, allowed: Path) -> None:
    result = run("plan", "--repo", str(repo.path), "--allowed-signers", str(allowed))
    assert result.exit_code == 1
    assert "--allowed-signers has no effect without --verify-signatures" in result.output
