"""Every host's discovered inventory against its mapping, compared centrally: one row per host.

Pure: what each host printed (`netmap discover --json`) or why it printed nothing comes in;
rows go out. A host that could not be compared is a row of its own, never silently absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netmap.model.fleet import Fleet
from netmap.model.inventory import Inventory
from netmap.model.inventory_json import inventory_from_json
from netmap.rules.check import ERROR, WARNING, Finding
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

    @property
    def compared(self) -> bool:
        return self.status in (NO_DRIFT, DRIFT)

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "status": self.status, "problem": self.problem,
                "findings": [f.as_dict() for f in self.findings]}


def read_inventory(host: str, stdout: str) -> HostRow:
    """A host's discover output as a row holding its inventory, or a bad-output row."""
    try:
        return HostRow(host, NO_DRIFT, inventory=inventory_from_json(stdout))
    except ValueError as err:
        return HostRow(host, BAD_OUTPUT, problem=f"`netmap discover --json` printed "
                       f"something else: {err}")


def compare(fleet: Fleet, row: HostRow) -> HostRow:
    """A row with an inventory, compared with the host's mapping. netmap's state lives on
    the host and is not brought back, so endpoint bookkeeping is not judged here."""
    if row.inventory is None:
        return row
    if row.host not in fleet.hosts:
        return HostRow(row.host, NO_MAPPING, problem=f"no mapping names {row.host}: "
                       f"`netmap fleet discover --write DIR` drafts one",
                       inventory=row.inventory)
    report = drift_report(fleet.hosts[row.host], row.inventory, (), networks=fleet.networks,
                          guests=fleet.guests)
    findings = tuple(f for f in report.findings if not f.code.startswith("ENDPOINT_"))
    drifted = any(f.severity in (ERROR, WARNING) for f in findings)
    return HostRow(row.host, DRIFT if drifted else NO_DRIFT, findings,
                   inventory=row.inventory)
