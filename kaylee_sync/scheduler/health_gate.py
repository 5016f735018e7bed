"""What a scheduler pass needs for health-gated rollouts, read and kept in one place.

Per pass: the units' rollout policies (``policy/<name>``) and operators' requests
(``rollout/<name>``: pause, promote), each parsed once per mod revision; the check
targets handed to the prober (templates expanded with the instance's variables and its
machine's public IP, from fleet's registry); and, per unit, when each instance became
healthy — running in fleet (the scheduler's own timers) and passing its checks (the
prober's verdicts). The prober is reached through :class:`HealthSource` only, so the
scheduler does not depend on how checks are run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from kaylee_sync.errors import FleetError, SpecError
from kaylee_sync.fleet.model import FleetUnit
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.health.checks import Health, Target, healthy_since, target_for
from kaylee_sync.render import UnitName, kaylee_id
from kaylee_sync.scheduler.decide import Timers
from kaylee_sync.scheduler.gated import Control
from kaylee_sync.scheduler.records import Complaints
from kaylee_sync.spec.loader import parse_stored_policy
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.spec.policy import DEFAULT_POLICY, UnitPolicy
from kaylee_sync.store import Store, keys

log = logging.getLogger(__name__)


class HealthSource(Protocol):
    """The prober as the scheduler sees it (kaylee_sync.probe.Prober)."""

    def set_targets(self, unit: str, targets: Iterable[Target]) -> None: ...

    def health(self, instance: str) -> Health | None: ...


def decode_control(raw: bytes, key: str) -> Control:
    """``rollout/<name>``: ``{"paused": bool, "promote": "<hash6>"}``; ValueError if not."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    paused, promote = doc.get("paused", False), doc.get("promote", "")
    if not isinstance(paused, bool) or not isinstance(promote, str) or len(promote) > 64:
        raise ValueError("expected paused: true/false and promote: a spec hash")
    return Control(paused=paused, promote=promote)


def encode_control(control: Control) -> str:
    return json.dumps({"paused": control.paused, "promote": control.promote}, sort_keys=True)


class HealthGate:
    def __init__(
        self, store: Store, fleet: FleetClient, prober: HealthSource | None, complain: Complaints
    ) -> None:
        self.store, self.fleet, self.prober, self.complain = store, fleet, prober, complain
        self._policies: dict[str, tuple[int, UnitPolicy]] = {}
        self._controls: dict[str, Control] = {}
        self._checked: set[str] = set()  # units whose targets the prober has

    # -- reading -----------------------------------------------------------------------

    def read(self) -> None:
        """The policies and operator requests of every unit (two range reads)."""
        policies: dict[str, tuple[int, UnitPolicy]] = {}
        for stored in self.store.get_prefix(keys.POLICY):
            name = stored.key.removeprefix(keys.POLICY)
            cached = self._policies.get(name)
            if cached is not None and cached[0] == stored.mod_revision:
                policies[name] = cached
                continue
            try:
                policy = parse_stored_policy(stored.value, stored.key)
            except SpecError as exc:
                # A broken policy must not stop the unit: it rolls as without one.
                self.complain(stored.key, str(exc).splitlines()[0].removeprefix(stored.key + ": "))
                policy = DEFAULT_POLICY
            policies[name] = (stored.mod_revision, policy)
        self._policies = policies
        controls: dict[str, Control] = {}
        for stored in self.store.get_prefix(keys.CONTROL):
            try:
                controls[stored.key.removeprefix(keys.CONTROL)] = decode_control(
                    stored.value, stored.key
                )
            except (ValueError, UnicodeDecodeError) as exc:
                self.complain(stored.key, f"not a rollout request ({exc})")
        self._controls = controls

    def policy(self, name: str) -> UnitPolicy:
        entry = self._policies.get(name)
        return DEFAULT_POLICY if entry is None else entry[1]

    def control(self, name: str) -> Control:
        return self._controls.get(name, Control())

    def gated(self, name: str, spec: UnitSpec | None) -> bool:
        """Whether this unit rolls by its policy (a replica unit with a non-default one)."""
        return (
            spec is not None
            and spec.is_replica_unit
            and not spec.global_
            and not self.policy(name).is_default
        )

    # -- checks ------------------------------------------------------------------------

    def update_checks(
        self,
        specs: Mapping[str, UnitSpec],
        ours: Mapping[str, Sequence[tuple[UnitName, FleetUnit]]],
    ) -> None:
        """Hand the prober the targets of every instance of every unit with checks."""
        if self.prober is None:
            return
        wanted = {
            name
            for name, spec in specs.items()
            if self.gated(name, spec) and self.policy(name).health.checked
        }
        ips: dict[str, str] = {}
        if any(self.policy(n).health.http is not None for n in wanted):
            try:
                ips = {m.id: m.public_ip for m in self.fleet.machines()}
            except FleetError as exc:
                log.warning("health checks: fleet's machines could not be read: %s", exc)
        for name in sorted(wanted):
            spec, health = specs[name], self.policy(name).health
            env = {e.name: e.value for e in spec.env}
            targets = []
            for parsed, unit in ours.get(name, ()):
                variables = {
                    **env,
                    "KAYLEE_ID": kaylee_id(unit.name),
                    "KAYLEE_UNIT": name,
                    "KAYLEE_INDEX": str(parsed.index),
                    "MACHINE_ID": unit.machine_id,
                    "MACHINE_IP": ips.get(unit.machine_id, ""),
                }
                target = target_for(unit.name, name, health, variables)
                if target is not None:
                    targets.append(target)
            self.prober.set_targets(name, targets)
        for name in self._checked - wanted:
            self.prober.set_targets(name, ())
        self._checked = wanted

    def forget(self) -> None:
        """Stop every check (leadership lost)."""
        if self.prober is not None:
            for name in self._checked:
                self.prober.set_targets(name, ())
        self._checked = set()

    def healthy_since(
        self, name: str, units: Sequence[tuple[UnitName, FleetUnit]], timers: Timers
    ) -> tuple[dict[str, float], frozenset[str]]:
        """Fleet unit -> since when it is healthy (absent: not healthy now), and the fleet
        units known to fail their checks (not those whose checks have not run yet)."""
        checked = name in self._checked and self.prober is not None
        out: dict[str, float] = {}
        failing: set[str] = set()
        for _, unit in units:
            health = self.prober.health(unit.name) if checked and self.prober else None
            if checked and health is None:
                health = Health(None, "not checked yet (no machine address)", known=False)
            since = healthy_since(timers.running_since.get(unit.name), health)
            if since is not None:
                out[unit.name] = since
            elif health is not None and health.known:
                failing.add(unit.name)
        return out, frozenset(failing)
