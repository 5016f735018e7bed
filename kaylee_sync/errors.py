"""The project's exception tree, in one place (as httpx draws its own).

::

    KayleeError                 anything kaylee-sync reports to a user; exit code 1
    ├── SpecError               a unit file or JSON entry is invalid (carries every Issue)
    ├── UsageError              a bad flag, argument or combination of them
    ├── NotFoundError           a named unit (or other object) does not exist
    ├── SourceError             Git failed, or the repository is unusable (not a repo, bad path)
    │   └── SourceUnavailable   the remote could not be fetched (network, auth, timeout): transient
    ├── StoreError              etcd v3 (the /kaylee2 keyspace) failed
    │   ├── StoreUnavailable    no endpoint could be reached (transient: retry later)
    │   └── ConflictError       a compare-and-swap lost (someone else wrote first)
    └── FleetError              a fleet driver failed
        ├── FleetUnavailable    fleet (its etcd v2 registry or its API) cannot be reached
        ├── FleetNotFound       the fleet unit does not exist
        ├── FleetConflict       a conditional write was refused: fleet changed since it was read
        └── FleetFenced         a write was refused before it was sent: no live leader lease

Third-party exceptions (etcd3, grpc, httpx, GitPython, yaml) never escape the adapter
that called the library: they are wrapped in one of these with ``raise … from exc``.
Messages are one line, name the thing that failed and never contain credentials.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Issue:
    """One problem found in a unit file: where it is and what is wrong.

    ``line`` is 1-based, 0 when unknown (e.g. a JSON entry read from etcd);
    ``field`` is a dotted path such as ``apps[0].image`` ("" for the whole file).
    """

    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class KayleeError(Exception):
    """Base of every error kaylee-sync reports to a user (exit code 1, no traceback)."""

    exit_code = 1


class UsageError(KayleeError):
    """A bad flag, argument or combination of them."""


class SpecError(KayleeError):
    """A unit file (or a JSON entry) is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[Issue] | tuple[Issue, ...]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class NotFoundError(KayleeError):
    """A named unit (or other object) does not exist."""


class SourceError(KayleeError):
    """Git failed, or the repository cannot be used as a source of unit files."""


class SourceUnavailable(SourceError):
    """The remote could not be fetched (network, authentication, timeout); transient."""


class StoreError(KayleeError):
    """The etcd v3 store failed."""


class StoreUnavailable(StoreError):
    """No etcd endpoint could be reached; transient, a later attempt may succeed."""


class ConflictError(StoreError):
    """A compare-and-swap transaction lost: the data changed since it was read."""


class FleetError(KayleeError):
    """A fleet driver failed."""


class FleetUnavailable(FleetError):
    """fleet's registry or API cannot be reached; transient."""


class FleetNotFound(FleetError):
    """The named fleet unit does not exist."""


class FleetConflict(FleetError):
    """A conditional fleet write was refused: what it was based on changed since it was
    read (another writer, a destroy). Not a failure: the next pass reads again."""


class FleetFenced(FleetError):
    """A fleet write was refused before it was sent: this process no longer holds a live
    leader lease by its own clock, or it is stopping. Nothing was written."""
