"""fleet driven through fleetd's HTTP API v1, the way fleetctl does by default.

Where operators do not want a second writer in fleet's etcd keyspace (or fleet's etcd is
not reachable from kaylee-sync), fleetd's API is the supported door: usually a unix
socket, ``unix:///var/run/fleet.sock``, sometimes TCP. fleetd validates what we send
and writes the registry itself. Status codes and ``{"error": {"code", "message"}}``
bodies are mapped to the project's errors here, at the edge.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from kaylee_sync.errors import FleetConflict, FleetError, FleetNotFound, FleetUnavailable
from kaylee_sync.fleet.guarded import guarded_transport
from kaylee_sync.fleet.model import INACTIVE, LAUNCHED, Debris, FleetUnit, Machine, UnitState
from kaylee_sync.fleet.model import check_state as _check_state
from kaylee_sync.fleet.throttle import Throttle
from kaylee_sync.unitfile import UnitFileError, UnitOption, parse, serialize

DEFAULT_ENDPOINT = "unix:///var/run/fleet.sock"


class ApiError(FleetError):
    """fleetd refused a request (4xx other than 404); ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _canonical(options: Sequence[UnitOption]) -> tuple[UnitOption, ...] | None:
    """The options as fleetd will report them back (it re-parses the stored text)."""
    try:
        return parse(serialize(options))
    except UnitFileError:
        return None


class ApiDriver:
    """A FleetClient over fleetd's HTTP API v1 at ``endpoint`` (unix:// or http(s)://)."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 10.0,
        throttle: Throttle | None = None,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        self.throttle = throttle or Throttle()
        self._guard: Callable[[str], None] | None = None
        self._socket: str | None = None
        if parts.scheme == "unix":
            socket_path = self._socket = parts.path or parts.netloc
            self.endpoint = f"unix://{socket_path}"
            transport = guarded_transport(self._check_write, uds=socket_path)
            # the host is only a placeholder for the Host header: the socket decides
            self._http = httpx.Client(transport=transport, base_url="http://fleet", timeout=timeout)
        elif parts.scheme in ("http", "https"):
            netloc = parts.netloc.rsplit("@", 1)[-1]  # fleetd has no auth: drop userinfo
            self.endpoint = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
            verify: ssl.SSLContext | bool = True
            if ca_cert or cert:
                verify = ssl.create_default_context(cafile=ca_cert)
                if cert:
                    verify.load_cert_chain(cert, key)
            transport = guarded_transport(self._check_write, verify=verify)
            self._http = httpx.Client(base_url=self.endpoint, transport=transport, timeout=timeout)
        else:
            raise ValueError(f"fleet API endpoint must be unix://, http:// or https://: {endpoint}")

    def __repr__(self) -> str:
        return f"ApiDriver({self.endpoint!r})"

    def _check_write(self, what: str) -> None:
        if self._guard is not None:
            self._guard(what)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        """One call to ``/fleet/v1/<path>``; the decoded JSON body (None if empty)."""
        what = f"{method} {path}"

        def call() -> Any:
            if self._socket is not None and not os.path.exists(self._socket):
                # also spares httpcore's unix connect, which leaks its socket on failure
                raise FleetUnavailable(f"fleet API {self.endpoint}: {what}: no such socket")
            headers = {"Content-Type": "application/json"} if body is not None else {}
            content = json.dumps(body).encode() if body is not None else None
            if method != "GET":
                self._check_write(what)
            try:
                resp = self._http.request(
                    method, "/fleet/v1/" + path, params=params, content=content, headers=headers
                )
            except httpx.HTTPError as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise FleetUnavailable(f"fleet API {self.endpoint}: {what}: {reason}") from exc
            return _decode(resp, f"fleet API {self.endpoint}: {what}")

        return self.throttle.call(what, call, write=method != "GET")

    def _pages(self, path: str, field: str) -> list[dict[str, Any]]:
        """Every object of every page; anything that is not a JSON object is skipped."""
        items: list[dict[str, Any]] = []
        params: dict[str, str] = {}
        while True:
            page = self._request("GET", path, params=params) or {}
            if not isinstance(page, dict):
                raise FleetUnavailable(f"fleet API {self.endpoint}: GET {path}: not a JSON object")
            listed = page.get(field)
            if isinstance(listed, list):
                items.extend(i for i in listed if isinstance(i, dict))
            token = page.get("nextPageToken")
            if not token:
                return items
            params = {"nextPageToken": str(token)}

    # -- reading --------------------------------------------------------------------

    def units(self) -> list[FleetUnit]:
        return sorted((_unit(u) for u in self._pages("units", "units")), key=lambda u: u.name)

    def unit(self, name: str) -> FleetUnit | None:
        try:
            raw = self._request("GET", "units/" + _segment(name))
            return _unit(raw if isinstance(raw, dict) else {"name": name})
        except FleetNotFound:
            return None

    def unit_states(self) -> list[UnitState]:
        states = [
            UnitState(
                name=str(s.get("name", "")),
                hash=str(s.get("hash", "")),
                machine_id=str(s.get("machineID", "")),
                load_state=str(s.get("systemdLoadState", "")),
                active_state=str(s.get("systemdActiveState", "")),
                sub_state=str(s.get("systemdSubState", "")),
            )
            for s in self._pages("state", "states")
        ]
        return sorted(states, key=lambda s: (s.name, s.machine_id))

    def snapshot(self) -> tuple[list[FleetUnit], list[UnitState]]:
        return self.units(), self.unit_states()  # two endpoints: nothing to share

    def machines(self) -> list[Machine]:
        machines = [
            Machine(
                id=str(m.get("id", "")),
                public_ip=str(m.get("primaryIP", "")),
                metadata=_str_map(m.get("metadata")),
            )
            for m in self._pages("machines", "machines")
        ]
        return sorted(machines, key=lambda m: m.id)

    # -- writing --------------------------------------------------------------------
    #
    # Fencing: the throttle's guard checks the leader lease right before each request
    # is sent. fleet's API has no conditional requests (no ETag, no precondition), so the
    # strongest it allows is read-compare-write: each write first re-reads the unit and
    # refuses (FleetConflict) if it is not what the caller saw. That narrows a stale
    # writer's window to one round trip but cannot close it, unlike the registry
    # driver's compare-and-swap (docs/architecture.md, "Fencing fleet writes").

    def set_write_guard(self, guard: Callable[[str], None] | None) -> None:
        self.throttle.guard = guard  # before each attempt, retries included
        self._guard = guard  # and once more right before the request

    def create_unit(
        self,
        name: str,
        options: Sequence[UnitOption],
        desired_state: str = LAUNCHED,
        *,
        fresh: bool = False,
    ) -> None:
        _check_state(desired_state)
        current = self.unit(name)
        if fresh and current is not None:
            raise FleetConflict(f"fleet unit {name} appeared since it was read")
        same = current is not None and current.options == _canonical(options)
        if same and current is not None and current.desired_state == desired_state:
            return  # fleetd would rewrite target-state anyway: keep every agent asleep
        body: dict[str, Any] = {"name": name, "desiredState": desired_state}
        if not same:
            body["options"] = [
                {"section": o.section, "name": o.name, "value": o.value} for o in options
            ]
        self._request("PUT", "units/" + _segment(name), body=body)

    def _recheck(self, name: str, seen: FleetUnit | None) -> FleetUnit:
        current = self.unit(name)
        if current is None:
            if seen is not None:
                raise FleetConflict(f"fleet unit {name} was destroyed since it was read")
            raise FleetNotFound(f"fleet unit {name} does not exist")
        if seen is not None and (
            current.desired_state != seen.desired_state or current.options != seen.options
        ):
            raise FleetConflict(f"fleet unit {name} changed since it was read")
        return current

    def set_target_state(self, name: str, state: str, *, seen: FleetUnit | None = None) -> None:
        _check_state(state)
        current = self._recheck(name, seen)
        if current.desired_state != state:
            body = {"name": name, "desiredState": state}
            self._request("PUT", "units/" + _segment(name), body=body)

    def destroy_unit(self, name: str, *, seen: FleetUnit | None = None) -> None:
        if seen is not None:
            self._recheck(name, seen)
        self._request("DELETE", "units/" + _segment(name))

    def debris(self, unit_prefix: str) -> list[Debris]:
        return []  # fleetd hides jobs without an object and unit bodies: nothing to see

    def clean(self, item: Debris) -> None:
        raise FleetError(f"the fleet API cannot remove {item.key}")


def _segment(name: str) -> str:
    return quote(name, safe=":@")


def _str_map(raw: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _unit(raw: Mapping[str, Any]) -> FleetUnit:
    options = raw.get("options")
    return FleetUnit(
        name=str(raw.get("name", "")),
        options=tuple(
            UnitOption(str(o.get("section", "")), str(o.get("name", "")), str(o.get("value", "")))
            for o in (options if isinstance(options, list) else ())
            if isinstance(o, dict)
        ),
        desired_state=str(raw.get("desiredState") or INACTIVE),
        current_state=str(raw.get("currentState") or INACTIVE),
        machine_id=str(raw.get("machineID") or ""),
    )


def _decode(resp: httpx.Response, what: str) -> Any:
    try:
        body = resp.json() if resp.content else None
    except ValueError:
        body = None
    if resp.status_code < 300:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    message = str(error.get("message") or "") if isinstance(error, dict) else ""
    text = f"{what}: HTTP {resp.status_code}" + (f": {message}" if message else "")
    text = text.replace("\n", " ")
    if resp.status_code == 404:
        raise FleetNotFound(text)
    if resp.status_code >= 500:  # 503 until fleetd reaches etcd; 500 when etcd fails it
        raise FleetUnavailable(text)
    raise ApiError(text, resp.status_code)
