"""Every host's discovered inventory against its mapping, compared centrally: one row per host.

Pure: what each host printed (`netmap discover --json`) or why it printed nothing comes in;
rows go out. A host that could not be compared is a row of its own, never silently absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from netmap.model.fleet import Fleet
from netmap.model.inventory import Inventory
from netmap.model.inventory_json import inventory_from_json
from netmap.rules.check import ERROR, INFO, WARNING, Finding
from netmap.rules.drift import drift_report

# a row's status
NO_DRIFT, DRIFT, UNREACHABLE, FAILED, NO_MAPPING, BAD_OUTPUT = (
    "ok", "drift", "unreachable", "failed", "no-mapping", "bad-output")


@dataclass(frozen=True)
class HostRow:
    host: str
    status: str
    findings: tuple[Finding, ...] = ()
    problem: str | None = None
    inventory: Inventory | None = field(default=None, compare=False)
    # netmap's state document on that host ({} when it holds none), None when the host's
    # output did not bring it back (`discover --json` without --with-state)
    state: dict[str, Any] | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "status": self.status, "problem": self.problem,
                "findings": [f.as_dict() for f in self.findings]}


def read_inventory(host: str, stdout: str) -> HostRow:
    """A host's discover output as a row holding its inventory and, when it came along
    (`--with-state`), netmap's state there; else a bad-output row. The state's shape is
    the caller's to check (the state layer knows it)."""
    try:
        inventory = inventory_from_json(stdout)
    except ValueError as err:
        return HostRow(host, BAD_OUTPUT, problem=f"`netmap discover --json` printed "
                       f"something else: {err}")
    states = json.loads(stdout).get("netmap_state")
    if states is None:
        return HostRow(host, NO_DRIFT, inventory=inventory)
    if not isinstance(states, dict):
        return HostRow(host, BAD_OUTPUT, problem="netmap_state in `netmap discover --json` "
                       "is not an object keyed by host name")
    # a host whose netmap never made anything has no state document: nothing to vanish
    state = states.get(host, {"host": host, "resources": {}, "guests": {}})
    return HostRow(host, NO_DRIFT, inventory=inventory, state=state)


STATE_NOT_READ = Finding(
    "STATE_NOT_READ", INFO, None,
    "netmap's state on the host was not brought back, so its endpoints were not judged",
    "run `netmap discover --json --with-state` there (the default --command of fleet drift)")


def compare(fleet: Fleet, row: HostRow) -> HostRow:
    """A row with an inventory, compared with the host's mapping and, when the row brought
    it back, with netmap's state there (the ENDPOINT_ findings of `netmap drift`)."""
    if row.inventory is None:
        return row
    if row.host not in fleet.hosts:
        return HostRow(row.host, NO_MAPPING, problem=f"no mapping names {row.host}: "
                       f"`netmap fleet discover --write DIR` drafts one",
                       inventory=row.inventory, state=row.state)
    report = drift_report(fleet.hosts[row.host], row.inventory,
                          row.state if row.state is not None else (),
                          networks=fleet.networks, guests=fleet.guests)
    if row.state is not None:
        findings = report.findings
    else:  # without the state every netmap endpoint would look untracked
        findings = tuple(f for f in report.findings if not f.code.startswith("ENDPOINT_"))
        findings += (STATE_NOT_READ,)
    drifted = any(f.severity in (ERROR, WARNING) for f in findings)
    return HostRow(row.host, DRIFT if drifted else NO_DRIFT, findings,
                   inventory=row.inventory, state=row.state)
