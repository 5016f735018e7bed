"""The inventory: the record of which units Git owns, stored so that a change costs what it changes.

Ownership is the whole point of the inventory: only units listed in it are ever pruned, so
a unit created with ``kaylee run`` outside Git is never deleted by sync, and an invalid
file still maps to the unit it used to deploy. :func:`next_inventory` therefore never
drops a unit that Git still claims, even when this sync leaves it alone.

Format 2 (written since 2026-12-05): a small *header* and 256 *shards*, compact JSON with
sorted keys (equal inventories are equal bytes)::

    sync/inventory    {"v":2,"repo":"…","branch":"main","path":"units","commit":"<40 hex>"}
    sync/owned/<xx>   {"v":2,"path":"units","units":{"api":"<blob>","odd":"<blob>"},
                       "paths":{"odd":"units/t/odd.yml"}}

A unit lives in the shard named by the first two hex digits of the SHA-1 of its name
(:func:`shard_of`), so a commit that changes one file rewrites the header and one shard
of about ``units / 256`` entries (40 at 10,000 units, 2.6 KB) instead of the whole
inventory (1.1 MB at 10,000 units, and refused by etcd beyond about 15,000). A shard
that would be empty is deleted.

- ``units`` maps each unit to the *full* blob id. Blobs are not abbreviated: the planner
  compares them with the ids ``source`` reports (and ``--worktree`` blobs are not even
  hex), so an abbreviation would have to be understood by every reader.
- A unit's file is ``<path>/<name>.yaml`` unless ``paths`` says otherwise; each shard
  carries the ``path`` its shorthand is relative to, so a shard is read the same
  whatever the header says. The decoded :class:`Inventory` always carries full paths.
- The shards are the inventory only under a format-2 header. Format 1 — the whole
  inventory in ``sync/inventory`` (``{"v":1,…,"units":{…},"paths":{…}}``) — is still
  read, and the first apply rewrites it as format 2: shards first, the header last, so
  until the header changes a reader still sees the format-1 inventory whole (shards
  left by an apply that stopped half way are ignored, then overwritten).
- An unknown version, a malformed header or shard, or a unit in the wrong shard stop
  sync rather than being read as "owns nothing". Shards without a header (an operator
  deleted it) still say which units Git owns; the next apply writes the header again.

Which keys an apply writes, and in what order, is :func:`inventory_writes`; why that
order keeps ownership safe when an apply stops half way is in :mod:`.apply`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from kaylee_sync.bounds import load_json
from kaylee_sync.errors import StoreError
from kaylee_sync.plan.model import Action, Inventory, InventoryEntry, InventoryKeys, Plan
from kaylee_sync.store import Compare, Op, StoredValue, keys

FORMAT_VERSION = 2  # what apply writes
ONE_VALUE = 1  # the format written until 2026-12-05, still read

# Entries whose unit Git still claims although this sync does not write it: the old
# inventory entry is kept so that ownership survives (a fixed file, a lifted prune guard
# or a resumed suspension then finds the unit still managed).
_KEPT = frozenset({Action.INVALID, Action.PRUNE_REFUSED, Action.SUSPENDED})

_REBUILD = (
    f"restore it, or delete {keys.INVENTORY} and {keys.OWNED} (etcdctl del --prefix) to let "
    "sync rebuild it"
)


@functools.lru_cache(maxsize=1 << 17)  # asked several times per unit by one apply
def shard_of(name: str) -> str:
    """The shard a unit is listed in: two hex digits, ``00`` to ``ff``."""
    return hashlib.sha1(name.encode("utf-8")).hexdigest()[:2]


def default_path(unit_path: str, name: str) -> str:
    """The file a unit is expected in: ``<unit path>/<name>.yaml`` (``<name>.yaml`` at the top)."""
    base = unit_path.strip("/")
    return f"{base}/{name}.yaml" if base else f"{name}.yaml"


# -- encoding ------------------------------------------------------------------------------


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _listing(path: str, entries: Iterable[tuple[str, InventoryEntry]]) -> dict[str, Any]:
    """``units`` and, for files not at their default place, ``paths``."""
    units: dict[str, str] = {}
    paths: dict[str, str] = {}
    for name, entry in sorted(entries):
        units[name] = entry.blob
        if entry.path != default_path(path, name):
            paths[name] = entry.path
    return {"units": units, "paths": paths} if paths else {"units": units}


def encode_header(inv: Inventory) -> str:
    return _dump(
        {
            "v": FORMAT_VERSION,
            "repo": inv.repo,
            "branch": inv.branch,
            "path": inv.path,
            "commit": inv.commit,
        }
    )


def encode_shard(path: str, entries: Iterable[tuple[str, InventoryEntry]]) -> str:
    return _dump({"v": FORMAT_VERSION, "path": path, **_listing(path, entries)})


def encode_one_value(inv: Inventory) -> str:
    """Format 1: the whole inventory as one value (read still; written only by tests)."""
    doc: dict[str, Any] = {
        "v": ONE_VALUE,
        "repo": inv.repo,
        "branch": inv.branch,
        "path": inv.path,
        "commit": inv.commit,
    }
    return _dump({**doc, **_listing(inv.path, inv.units.items())})


def _shards(inv: Inventory, only: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Unit names by shard (all of them, or those in the shards ``only``)."""
    wanted = None if only is None else set(only)
    found: dict[str, list[str]] = {}
    for name in inv.units:
        shard = shard_of(name)
        if wanted is None or shard in wanted:
            found.setdefault(shard, []).append(name)
    return found


def encode_inventory(inv: Inventory) -> dict[str, str]:
    """Format 2: every key of ``inv`` and its value (the header and the non-empty shards)."""
    values = {keys.INVENTORY: encode_header(inv)}
    for shard, names in sorted(_shards(inv).items()):
        values[keys.owned_key(shard)] = encode_shard(inv.path, ((n, inv.units[n]) for n in names))
    return values


# -- decoding ------------------------------------------------------------------------------


class _Malformed(Exception):
    pass


def _parse(value: bytes, key: str, parse: Any) -> Any:
    try:
        doc = load_json(value)  # ValueError for bytes that are not UTF-8 JSON
        return parse(doc)
    except (ValueError, _Malformed) as exc:
        why = exc.args[0]
        raise StoreError(
            f"{key} is not a valid inventory ({why}); sync stops rather than lose track of "
            f"which units Git owns — {_REBUILD}"
        ) from None


class ShardCache:
    """The shards as parsed, by key and mod revision, and the units they list together:
    a shard is parsed again only once it changed (a sync that changes one unit rewrites
    one shard, so reading the inventory again costs one shard, not 256)."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[int, dict[str, InventoryEntry]]] = {}
        self._units: dict[str, InventoryEntry] = {}
        self.changed: set[str] = set()  # units whose entries the last call changed

    def units(self, shards: Sequence[StoredValue]) -> dict[str, InventoryEntry]:
        """Every unit the ``shards`` (all of them, as read together) list (a new dict)."""
        present = set()
        self.changed = set()
        for stored in shards:
            present.add(stored.key)
            seen = self._parsed.get(stored.key)
            if seen is not None and seen[0] == stored.mod_revision:
                continue
            shard = stored.key[len(keys.OWNED) :]
            entries = _parse(stored.value, stored.key, lambda d, s=shard: _shard(d, s))
            before = seen[1] if seen is not None else {}
            self._forget(seen)
            self._units.update(entries)  # a unit is in one shard only (``_shard`` checks)
            self.changed.difference_update(n for n in before if before[n] == entries.get(n))
            self.changed.update(n for n in entries if before.get(n) != entries[n])
            self._parsed[stored.key] = (stored.mod_revision, entries)
        for key in [k for k in self._parsed if k not in present]:
            self._forget(self._parsed.pop(key))
        return self._units.copy()

    def listed(self) -> dict[str, Collection[str]]:
        """The units each shard lists (by shard, ``00`` to ``ff``), as last parsed."""
        return {key[len(keys.OWNED) :]: parsed[1].keys() for key, parsed in self._parsed.items()}

    def _forget(self, seen: tuple[int, dict[str, InventoryEntry]] | None) -> None:
        for name in seen[1] if seen is not None else ():
            self._units.pop(name, None)
            self.changed.add(name)


def assemble(
    header: StoredValue | None,
    shards: Sequence[StoredValue],
    cache: ShardCache | None = None,
) -> Inventory | None:
    """The inventory that ``sync/inventory`` and the ``sync/owned/`` keys read together
    (at one revision) say, carrying where it was read from (:class:`InventoryKeys`);
    None if there is none (no header and no shard). StoreError naming the key if one of
    them is malformed: never lenient, since an inventory read as empty would make every
    managed unit look unmanaged (nothing pruned, ownership lost at the next write).
    ``cache`` keeps the parsed shards for the next call (a reader that reads again)."""
    revisions = {s.key: s.mod_revision for s in shards}
    if header is None:
        if not shards:
            return None
        # Only an operator removes the header (apply writes it before the first shard):
        # the shards still say which units Git owns, and the next apply writes a header.
        base = Inventory(repo="", branch="", path="", commit="")
    else:
        revisions[keys.INVENTORY] = header.mod_revision
        versions = (ONE_VALUE, FORMAT_VERSION)
        raw, base = _parse(header.value, header.key, lambda d: (d, _header(d, versions)))
        if raw["v"] == ONE_VALUE:  # shards, if any, were left by a conversion that stopped
            one = _parse(header.value, header.key, lambda d: _one_value(base, d))
            return _with(one, one.units, InventoryKeys(ONE_VALUE, revisions))
    cache = cache if cache is not None else ShardCache()
    units = cache.units(shards)
    return _with(base, units, InventoryKeys(FORMAT_VERSION, revisions, cache.listed()))


def _with(inv: Inventory, units: dict[str, InventoryEntry], stored: InventoryKeys) -> Inventory:
    return Inventory(inv.repo, inv.branch, inv.path, inv.commit, units, stored=stored)


def _header(doc: object, versions: tuple[int, ...]) -> Inventory:
    if not isinstance(doc, dict):
        raise _Malformed("not a JSON object")
    if doc.get("v") not in versions:
        raise _Malformed(f"unknown format version {doc.get('v')!r}")
    repo, branch, path, commit = (_string(doc, f) for f in ("repo", "branch", "path", "commit"))
    return Inventory(repo=repo, branch=branch, path=path, commit=commit)


def _one_value(base: Inventory, doc: dict[str, Any]) -> Inventory:
    return _with(base, _entries(doc, base.path), InventoryKeys(ONE_VALUE))


def _shard(doc: object, shard: str) -> dict[str, InventoryEntry]:
    if not isinstance(doc, dict):
        raise _Malformed("not a JSON object")
    if doc.get("v") != FORMAT_VERSION:
        raise _Malformed(f"unknown format version {doc.get('v')!r}")
    entries = _entries(doc, _string(doc, "path"))
    for name in entries:
        if shard_of(name) != shard:
            raise _Malformed(f"units.{name} belongs in {keys.owned_key(shard_of(name))}")
    return entries


def _entries(doc: dict[str, Any], path: str) -> dict[str, InventoryEntry]:
    units = _string_map(doc, "units")
    paths = _string_map(doc, "paths") if "paths" in doc else {}
    strays = sorted(set(paths) - set(units))
    if strays:
        raise _Malformed(f"paths.{strays[0]} names no unit")
    return {
        name: InventoryEntry(path=paths.get(name, default_path(path, name)), blob=blob)
        for name, blob in units.items()
    }


def _string(doc: dict[str, Any], field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str):
        raise _Malformed(f"{field}: expected a string")
    return value


def _string_map(doc: dict[str, Any], field: str) -> dict[str, str]:
    value = doc.get(field)
    if not isinstance(value, dict):
        raise _Malformed(f"{field}: expected an object")
    for name, item in value.items():
        if not isinstance(item, str):
            raise _Malformed(f"{field}.{name}: expected a string")
    return value


# -- writing -------------------------------------------------------------------------------


def inventory_writes(
    target: Inventory,
    base: Inventory | None,
    written: Mapping[str, str | None],
    changed: Collection[str] | None = None,
) -> list[list[Op]]:
    """The writes that turn the stored inventory ``base`` into ``target``, in order, as
    groups of ops that must land together (for :meth:`Store.apply_batched`).

    ``written``: what this apply already wrote to inventory keys (key → value, None for
    a delete). Each op is guarded by what the key holds as far as this apply knows: the
    value it wrote, or else the mod revision ``base`` was read at (absent if unread).
    With a format-2 ``base``, only the shards whose entries change are written, then the
    header if it changes. Otherwise (no inventory yet, or format 1) every shard is
    written: with no inventory the header first (it then owns exactly the shards written
    so far, a subset of what is about to be created), from format 1 the header last
    (until then readers still see the format-1 value whole).

    ``changed``: the only units whose entries may differ between ``base`` and
    ``target`` (None: any may), so that a change of one unit costs one shard, not a
    comparison of every entry.
    """
    stored = base.stored if base is not None else InventoryKeys()
    guard = _guard(keys.INVENTORY, stored, written)
    header = Op.put(keys.INVENTORY, encode_header(target), guard=guard)
    if base is not None and stored.version == FORMAT_VERSION:
        # a shard's shorthand is relative to the path it carries, so a shard whose
        # entries stay is still right when the header's path changes
        names = target.units.keys() | base.units.keys() if changed is None else changed
        touched = {shard_of(n) for n in names if target.units.get(n) != base.units.get(n)}
        known = stored.listed if changed is not None else None
        ops = _shard_ops(target, sorted(touched), stored, written, _members(known, changed))
        same_header = encode_header(target) == encode_header(base)
        return [[op] for op in ops] + ([] if same_header else [[header]])
    owned = sorted(k[len(keys.OWNED) :] for k in stored.revisions if k.startswith(keys.OWNED))
    everything = sorted(set(_shards(target)) | set(owned))
    shards = [[op] for op in _shard_ops(target, everything, stored, written)]
    return [[header], *shards] if base is None else [*shards, [header]]


def _members(
    listed: Mapping[str, Collection[str]] | None, changed: Collection[str] | None
) -> Mapping[str, set[str]] | None:
    """For each shard, the units that may be in it: those it listed when read and the
    changed units that hash to it; None if what the shards listed is not known."""
    if listed is None or changed is None:
        return None
    members: dict[str, set[str]] = {}
    for name in changed:
        members.setdefault(shard_of(name), set()).add(name)
    for shard, names in listed.items():
        members.setdefault(shard, set()).update(names)
    return members


def _shard_ops(
    target: Inventory,
    shards: Sequence[str],
    stored: InventoryKeys,
    written: Mapping[str, str | None],
    members: Mapping[str, set[str]] | None = None,
) -> list[Op]:
    if members is None:
        names = _shards(target, shards)
    else:
        names = {}
        for shard in shards:
            found = sorted(n for n in members.get(shard, ()) if n in target.units)
            if found:
                names[shard] = found
    ops: list[Op] = []
    for shard in shards:
        key = keys.owned_key(shard)
        guard = _guard(key, stored, written)
        if shard in names:
            entries = ((n, target.units[n]) for n in names[shard])
            ops.append(Op.put(key, encode_shard(target.path, entries), guard=guard))
        elif (written[key] is not None) if key in written else (key in stored.revisions):
            ops.append(Op.delete(key, guard=guard))  # the shard is there and now empty
    return ops


def _guard(key: str, stored: InventoryKeys, written: Mapping[str, str | None]) -> Compare:
    if key in written:
        value = written[key]
        return Compare.missing(key) if value is None else Compare.value_equals(key, value)
    revision = stored.revisions.get(key, 0)
    return Compare.mod_revision_equals(key, revision) if revision > 0 else Compare.missing(key)


def next_inventory(plan: Plan, old: Inventory | None) -> Inventory:
    """The inventory to write once ``plan`` is applied.

    Every unit the commit defines (its file and blob), plus the old entries of units
    that Git still claims but this sync leaves alone: invalid files, refused prunes and
    suspended units whose file is gone. Units the plan deletes are dropped, and so are
    old entries for units that are neither desired nor kept (already gone from etcd).

    For an incremental plan only the units it decided anew are looked at: every other
    entry is UNCHANGED, so its unit is in the commit with the file and blob ``old``
    already lists (see :class:`~kaylee_sync.plan.model.PlanIndex`).
    """
    desired = plan.desired
    recomputed = plan.index.recomputed
    if recomputed is None or old is None:
        units = {n: InventoryEntry(path=u.path, blob=u.blob) for n, u in desired.units.items()}
        names: Iterable[str] = old.units if old is not None else ()
    else:
        units = old.units.copy()
        names = recomputed
    by_name = plan.index.by_name
    for name in names:
        unit = desired.units.get(name)
        entry = by_name.get(name)
        if unit is not None:
            units[name] = InventoryEntry(path=unit.path, blob=unit.blob)
        elif entry is not None and entry.action in _KEPT and old is not None and name in old.units:
            units[name] = old.units[name]
        else:
            units.pop(name, None)
    return Inventory(
        repo=desired.repo,
        branch=desired.branch,
        path=desired.path,
        commit=desired.commit,
        units=units,
    )
