"""``plan --against REF``: another commit stands in for etcd.

A pull-request job often cannot reach the cluster. Planning the PR's head against the
base branch instead answers the reviewer's question — "what will this change do?" — with
no etcd at all: the base commit's units play the part of etcd's entries, and all of them
count as managed (so a removed file shows as a delete, with the same prune guards).
"""

from __future__ import annotations

from kaylee_sync.plan.model import (
    ActualState,
    ActualUnit,
    DesiredState,
    Inventory,
    InventoryEntry,
)


def actual_from_desired(base: DesiredState, label: str) -> ActualState:
    """The ActualState a sync of ``base`` would have left behind (mod revisions 0)."""
    inventory = Inventory(
        repo=base.repo,
        branch=base.branch,
        path=base.path,
        commit=base.commit,
        units={n: InventoryEntry(u.path, u.blob) for n, u in base.units.items()},
    )
    units = {n: ActualUnit(n, u.value, 0, u.policy) for n, u in base.units.items()}
    return ActualState(units=units, inventory=inventory, source=label)
