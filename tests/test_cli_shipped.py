"""``kaylee-sync systemd-unit`` prints the files that ship inside the package.

The files live only in ``kaylee_sync/systemd/`` (no second copy to drift); the wheel
carries them through pyproject's package-data, which must match every one of them. CI
(.ci/run) also installs the built wheel alone and runs this command from it.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaylee_sync.cli.sync import cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "kaylee_sync" / "systemd"


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ([], "kaylee-sync.service"),
        (["--server"], "kaylee-server.service"),
        (["--env"], "kaylee-sync.env.example"),
    ],
)
def test_systemd_unit_prints_the_shipped_file(args: list[str], name: str) -> None:
    result = CliRunner().invoke(cli, ["systemd-unit", *args])
    assert result.exit_code == 0, result.output
    assert result.stdout == (SHIPPED / name).read_text(encoding="utf-8")


def test_systemd_unit_prints_one_file_at_a_time() -> None:
    result = CliRunner().invoke(cli, ["systemd-unit", "--server", "--env"])
    assert result.exit_code == 1
    assert "exclusive" in result.output


def test_package_data_ships_every_file_of_the_systemd_directory() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["kaylee_sync"]
    files = sorted(p.name for p in SHIPPED.iterdir())
    assert len(files) == 3
    for name in files:
        assert any(fnmatch.fnmatch(f"systemd/{name}", g) for g in globs), name
    assert not (ROOT / "systemd").exists()  # one copy only
