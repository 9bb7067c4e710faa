"""The placement answer computed the plain way, as the oracle netmap's own is held to:
every host checked on the graph of the whole fleet (netmap.query.placement.hosts_for_fleet
builds the graph of the candidates alone and answers the others from the load's index)."""

from __future__ import annotations

from collections import Counter

from netmap.query import graph as g
from netmap.query.placement import Candidate
from netmap.rules.check import check_migration, unbound_finding


def hosts_for(graph: g.FleetGraph, guest_name: str, *, strict: bool = False,
              include_current: bool = False) -> list[Candidate]:
    """Every host but the guest's own (unless include_current), compatible ones first
    (fewest warnings, then the least loaded), then the others with their first blocking
    reason."""
    fleet = g.fleet_of(graph)
    guest = fleet.guests[guest_name]
    able: set[str] | None = None
    for network in {nic.network for nic in guest.nics}:
        bound = g.hosts_binding(graph, network)
        able = bound if able is None else able & bound
    if able is None:  # a guest without NICs fits anywhere, as far as the network goes
        able = set(fleet.hosts)
    load = Counter(other.host for other in fleet.guests.values())
    out = []
    for host in fleet.hosts:
        if host == guest.host and not include_current:
            continue
        if host in able:
            report = check_migration(graph, guest.name, host, strict=strict)
            errors = report.errors
            out.append(Candidate(host, not errors, len(report.warnings), load[host], report,
                                 errors[0] if errors else None))
        else:
            nic = next(n for n in guest.nics if n.network not in fleet.hosts[host].bindings)
            out.append(Candidate(host, False, 0, load[host], None,
                                 unbound_finding(fleet.networks[nic.network], nic,
                                                 fleet.hosts[host])))
    out.sort(key=lambda c: (not c.compatible, c.warnings, c.guests, c.host))
    return out
