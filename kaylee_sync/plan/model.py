"""The data a plan is made of: what a commit wants, what etcd holds, and the difference.

These are plain frozen dataclasses so that every layer can share them without I/O:
``source`` builds a :class:`DesiredState` from a commit, ``sync`` reads an
:class:`ActualState` from etcd (or ``plan --against`` builds one from another commit),
:func:`kaylee_sync.plan.compute.make_plan` turns the two into a :class:`Plan`, and
``sync`` applies it. Nothing here knows where the data came from.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum

from kaylee_sync.errors import Issue
from kaylee_sync.plan.diffs import Diff
from kaylee_sync.spec.model import UnitSpec


@dataclass(frozen=True)
class DesiredUnit:
    """A valid unit file at a commit."""

    name: str
    path: str  # repo-relative, "/"-separated, e.g. "units/web.yaml"
    blob: str  # the git blob id (hex); for --worktree files "worktree:<sha1 of content>"
    spec: UnitSpec
    value: str  # the canonical JSON stored in etcd (kaylee_sync.spec.to_json(spec))
    policy: str = ""  # the rollout policy's stored JSON (policy/<name>); "" = the default


@dataclass(frozen=True)
class FileProblem:
    """A file in the unit path that cannot be deployed, with every issue found in it.

    ``name`` is the unit the file declared when that much could be read (None when the
    file did not even parse); the planner also maps the path to a unit via the inventory.
    """

    path: str
    blob: str | None
    issues: tuple[Issue, ...]
    name: str | None = None


@dataclass(frozen=True)
class DesiredState:
    """Every unit file below the unit path at one commit."""

    repo: str  # display form of the repository: credentials already removed
    branch: str
    path: str  # the unit path inside the repo ("" = the whole tree)
    commit: str  # full hex sha ("" for a worktree state with no commit)
    units: dict[str, DesiredUnit] = field(default_factory=dict)  # by unit name
    problems: tuple[FileProblem, ...] = ()  # sorted by path
    committed_at: float | None = None  # commit time (unix seconds), for the lag metric


@dataclass(frozen=True)
class InventoryEntry:
    path: str
    blob: str


@dataclass(frozen=True)
class InventoryKeys:
    """How an inventory read from etcd is stored there: the format and, for each of its
    keys (``sync/inventory`` and its shards ``sync/owned/<xx>``), the mod revision read.
    Apply guards its writes with them; see :mod:`kaylee_sync.sync.inventory`."""

    version: int = 0  # 0: not from etcd; 1: one value; 2: a header and shards
    revisions: Mapping[str, int] = field(default_factory=dict)
    # the units each shard listed when read (by shard, "00" to "ff"); None: not known
    listed: Mapping[str, Collection[str]] | None = None


@dataclass(frozen=True)
class Inventory:
    """``sync/inventory``: which units Git owns, and from which file/blob each came."""

    repo: str
    branch: str
    path: str
    commit: str
    units: dict[str, InventoryEntry] = field(default_factory=dict)
    # where it was read from; not part of what it says (equal inventories say the same)
    stored: InventoryKeys = field(default_factory=InventoryKeys, compare=False, repr=False)


@dataclass(frozen=True)
class ActualUnit:
    """``units/<name>`` as read from etcd."""

    name: str
    value: str
    mod_revision: int  # 0 when the state did not come from etcd (plan --against)
    policy: str = ""  # policy/<name> ("" = none: the default policy)
    policy_revision: int = 0  # its mod revision; 0 = absent
    reverted: str = ""  # "<name>@<hash6>" when its last rollout failed and was reverted


@dataclass(frozen=True)
class Suspension:
    """``sync/suspended/<name>``: Git sync leaves the unit alone."""

    name: str
    who: str
    reason: str
    since: float  # unix seconds
    until: float | None = None  # unix seconds; None = until resumed
    mod_revision: int = 0

    def expired(self, now: float) -> bool:
        return self.until is not None and now >= self.until


@dataclass(frozen=True)
class PruneHold:
    """``sync/prune-hold``: deletions the prune guard refused, held until released.

    A refusal outlives the sync that made it: the units stay owned, and every later
    commit is judged against ``baseline``, the number of managed units when the guard
    first refused. It never grows, so units a commit adds after the refusal cannot make
    the held deletions look small (see :mod:`kaylee_sync.plan.prune`).
    """

    since: float  # unix seconds of the first refusal
    first_commit: str  # the commit first refused
    commit: str  # the last commit refused (a new one is logged once)
    baseline: int  # managed units when the guard first refused: never grows
    held: int  # units whose deletion the last refusal held back
    reason: str  # the last refusal, one line
    mod_revision: int = field(default=0, compare=False)  # of the key; 0 = not from etcd


@dataclass(frozen=True)
class ActualState:
    """What etcd holds (or, for ``plan --against``, what another commit would put there)."""

    units: dict[str, ActualUnit] = field(default_factory=dict)
    inventory: Inventory | None = None
    inventory_revision: int = 0  # mod revision of sync/inventory; 0 = absent
    suspended: dict[str, Suspension] = field(default_factory=dict)
    prune_hold: PruneHold | None = None  # sync/prune-hold, if a refusal is in force
    state_index: str = ""  # fingerprint of the keys read (see sync); "" for --against
    source: str = "etcd"  # "etcd" or a description such as "origin/main (1a2b3c4)"
    # policy/<name> of units that are not in etcd (deleted by hand): (value, mod revision)
    orphan_policies: dict[str, tuple[str, int]] = field(default_factory=dict)


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNCHANGED = "unchanged"
    SUSPENDED = "suspended"  # Git differs (or not) but the unit is suspended: left alone
    INVALID = "invalid"  # the unit's file is invalid: its etcd entry is left as it is
    POLICY = "policy"  # only the rollout policy changes (policy/<name>): nothing restarts
    PRUNE_REFUSED = "prune-refused"  # would be deleted, but a prune guard refused


CHANGES = frozenset({Action.CREATE, Action.UPDATE, Action.DELETE, Action.POLICY})


@dataclass(frozen=True)
class FleetEffect:
    """What the scheduler will do in fleet because of one entry."""

    summary: str  # one line, e.g. "rolling replacement of 4 replicas, one at a time"
    old_units: tuple[str, ...] = ()  # fleet unit names that go away
    new_units: tuple[str, ...] = ()  # fleet unit names that appear


@dataclass(frozen=True, eq=False)
class PlanEntry:
    name: str
    action: Action
    path: str | None  # the unit's file (None for a delete of a file that is gone)
    reason: str  # one line: why this action ("new file", "drift: changed in etcd by hand", …)
    old_value: str | None  # JSON in etcd now (None: absent)
    new_value: str | None  # JSON the commit wants (None: delete / invalid)
    mod_revision: int  # of units/<name> when read; 0 = absent (the apply guard)
    # the unified diff of old vs new JSON, pretty-printed: its text, or what makes it
    # when first read (``diff``); "" when none
    diff_source: str | Diff
    effect: FleetEffect | None
    issues: tuple[Issue, ...] = ()  # for INVALID
    # The rollout policy (policy/<name>), written with the spec in the same transaction.
    old_policy: str = ""  # in etcd now ("" = none)
    new_policy: str = ""  # what the commit wants ("" = none)
    policy_revision: int = 0  # of policy/<name> when read; 0 = absent (the apply guard)

    @functools.cached_property
    def diff(self) -> str:
        """The unified diff of old vs new JSON, pretty-printed; "" when none."""
        source = self.diff_source
        return source if isinstance(source, str) else source.text()

    def __eq__(self, other: object) -> bool:
        # every field, with the diff compared as text: a plan read back from JSON holds
        # only the text, and must equal the plan it was written from
        if not isinstance(other, PlanEntry):
            return NotImplemented
        mine = [getattr(self, f.name) for f in _ENTRY_FIELDS] + [self.diff]
        theirs = [getattr(other, f.name) for f in _ENTRY_FIELDS] + [other.diff]
        return mine == theirs

    def __hash__(self) -> int:
        return hash((self.name, self.action, self.old_value, self.new_value))

    @property
    def policy_changes(self) -> bool:
        return self.action in (Action.CREATE, Action.UPDATE, Action.POLICY, Action.DELETE) and (
            self.old_policy != self.new_policy
        )


# the fields an entry is compared by, besides its diff's text
_ENTRY_FIELDS = tuple(f for f in dataclasses.fields(PlanEntry) if f.name != "diff_source")


@dataclass(frozen=True)
class PlanIndex:
    """A plan's entries found quickly: by name, and the few that are not UNCHANGED.

    A plan of 10,000 units usually has a handful of entries that matter; counting them
    or listing the changes should not walk all 10,000 each time (a sync does it several
    times). ``recomputed`` names the entries an incremental plan decided anew (None: it
    decided all of them); every other entry is UNCHANGED and the same as in the plan
    before it, with an inventory entry that does not change either.
    """

    by_name: dict[str, PlanEntry]
    notable: tuple[PlanEntry, ...]  # the entries that are not UNCHANGED, by name
    recomputed: frozenset[str] | None = None
    # each entry's place in Plan.entries, handed on while the names stay (None: not known)
    positions: dict[str, int] | None = None
    # the units the inventory lists that were in etcd when the plan was made (None: not
    # known); the next incremental plan corrects it for the names it decides anew
    managed: AbstractSet[str] | None = None

    @classmethod
    def of(
        cls, entries: tuple[PlanEntry, ...], managed: AbstractSet[str] | None = None
    ) -> PlanIndex:
        notable = tuple(e for e in entries if e.action != Action.UNCHANGED)
        return cls({e.name: e for e in entries}, notable, managed=managed)


@dataclass(frozen=True)
class Plan:
    desired: DesiredState
    against: str  # "etcd" or the --against description
    entries: tuple[PlanEntry, ...]  # sorted by name
    problems: tuple[FileProblem, ...]  # every invalid file (also those naming no unit)
    prune_refused: str = ""  # why deletions were refused ("" = they were not)
    prune_hold: PruneHold | None = None  # the hold in force once applied (None: none)
    prune_overridden: str = ""  # the refusal --allow-prune lifted ("" = none)
    prune_released: str = ""  # why the hold in force ends with this plan ("" = it does not)
    state_index: str = ""  # ActualState.state_index the plan was made against
    inventory_revision: int = 0
    expired_suspensions: tuple[str, ...] = ()  # names whose suspension has run out
    # how the planner found the entries (built on first use if the planner did not say)
    known: PlanIndex | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def index(self) -> PlanIndex:
        return self.known if self.known is not None else PlanIndex.of(self.entries)

    @functools.cached_property
    def positions(self) -> dict[str, int]:
        """Each entry's place in ``entries``: an incremental plan with the same names puts
        its few new entries in their places instead of looking all of them up."""
        known = self.index.positions
        return known if known is not None else {e.name: i for i, e in enumerate(self.entries)}

    @property
    def changes(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.index.notable if e.action in CHANGES)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def count(self, action: Action) -> int:
        notable = self.index.notable
        if action == Action.UNCHANGED:
            return len(self.entries) - len(notable)
        return sum(1 for e in notable if e.action == action)
