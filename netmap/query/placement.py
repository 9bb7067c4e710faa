"""Placement: which hosts can take a guest, best first.

Only hosts that bind every network the guest needs can pass the check; the load's index
names them (network -> the hosts that bind it), so the full check runs on those alone, on
the graph of those hosts, and every other host gets its first blocking reason without
being read. (tests/placement_oracle.py computes the same answer the plain way, every host
checked on the graph of the whole fleet, and the tests hold this one to it.)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from netmap.model.fleet import (
    Fleet,
    Guest,
    guest_hosts,
    host_mapping_file,
    hosts_binding,
    read_ahead,
)
from netmap.query import graph as g
from netmap.rules.check import Finding, Report, check_migration, unbound_finding_at
from netmap.support.cpus import idle_cpu
from netmap.support.gcpause import gc_paused


@dataclass(frozen=True)
class Candidate:
    host: str
    compatible: bool
    warnings: int
    guests: int  # guests that run there now: fewer is better when all else is equal
    report: Report | None  # None when a network is not bound there (no full check run)
    blocking: Finding | None  # the first error, for hosts that cannot take the guest

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host, "compatible": self.compatible, "warnings": self.warnings,
            "guests": self.guests,
            "findings": [f.as_dict() for f in self.report.findings] if self.report else [],
            "blocking": self.blocking.as_dict() if self.blocking else None,
        }


def hosts_for_fleet(fleet: Fleet, guest_name: str, *, strict: bool = False,
                    include_current: bool = False, parallel: bool = False) -> list[Candidate]:
    """Every host but the guest's own (unless include_current), compatible ones first
    (fewest warnings, then the least loaded), then the others with the first reason each
    cannot take the guest.

    A host that does not bind every network of the guest is answered from its bindings;
    the graph (and the full check) is needed only for the others, plus the guest's own
    host as the source of the comparison, and only the guests placed on those (their MACs
    are still looked up fleet-wide).

    parallel=True (the command line, which may fork) has a child forked for half of the
    candidates check them when there are many and the load average leaves a CPU idle
    (_share_out; on a busy machine the child would only wait for a core).
    The answer is the same."""
    # Everything built here is garbage only at the end: a collection in between would
    # walk every object of the fleet again.
    with gc_paused():
        guest = fleet.guests[guest_name]
        # which hosts bind each network, from the load's index where it has one: the
        # hosts that cannot take the guest are answered without reading them
        binders = {nic.network: hosts_binding(fleet.hosts, nic.network) for nic in guest.nics}
        load = Counter(guest_hosts(fleet.guests).values())
        to_check = [name for name in fleet.hosts
                    if all(name in bound for bound in binders.values())
                    and (include_current or name != guest.host)]
        pending = set(to_check)
        theirs, elsewhere = _share_out(fleet, guest, to_check, strict, load) if parallel \
            else (None, [])
        away = set(elsewhere)
        checked = _checked(fleet, guest, [n for n in to_check if n not in away], strict, load)
        out: list[Candidate | str] = []  # a host's name stands for its check, filled below
        for host in fleet.hosts:
            if host in pending:
                out.append(host)
            elif include_current or host != guest.host:
                nic = next(n for n in guest.nics if host not in binders[n.network])
                out.append(Candidate(host, False, 0, load[host], None, unbound_finding_at(
                    fleet.networks[nic.network], nic, host,
                    host_mapping_file(fleet.hosts, host))))
        if theirs is not None:
            answer = theirs()
            checked.update(answer if answer is not None
                           else _checked(fleet, guest, elsewhere, strict, load))
        ranked = [checked[c] if isinstance(c, str) else c for c in out]
        ranked.sort(key=lambda c: (not c.compatible, c.warnings, c.guests, c.host))
        return ranked


def _checked(fleet: Fleet, guest: Guest, hosts: list[str], strict: bool,
             load: Counter[str | None]) -> dict[str, Candidate]:
    """The full check of `guest` against each of `hosts`, on the graph of those hosts."""
    # and the guest's own host, the source of the comparison (none for an unplaced guest)
    wanted = {*hosts, guest.host} if guest.host is not None else set(hosts)
    read_ahead(fleet.hosts, wanted)
    graph = g.build_graph_of(fleet, wanted, guest.name)
    out = {}
    for host in hosts:
        report = check_migration(graph, guest.name, host, strict=strict)
        errors = report.errors
        out[host] = Candidate(host, not errors, len(report.warnings), load[host], report,
                              errors[0] if errors else None)
    return out


def _share_out(fleet: Fleet, guest: Guest, to_check: list[str], strict: bool,
               load: Counter[str | None]) -> tuple[Callable[[], dict[str, Candidate] | None] | None,
                                            list[str]]:
    """With many to check and a CPU idle (netmap.support.cpus), a worker process forked
    now checks half of them (it runs slower on the memory it shares with us
    copy-on-write).
    Returns how to wait for its answer (None when it failed: check them here; the worker
    is gone once it is read) and its hosts, or (None, []) when nothing was handed out."""
    if (len(to_check) < PARALLEL_MIN_CANDIDATES or not idle_cpu()
            or threading.active_count() > 1):  # a forked child may inherit a held lock
        return None, []
    half = to_check[len(to_check) // 2:]
    global _FORKED_WITH
    # the worker is forked with the fleet in its memory: only names and answers are pickled
    _FORKED_WITH = (fleet, guest, strict, load)
    try:
        import multiprocessing  # here: most answers need no second process
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        future = pool.submit(_checked_in_worker, half)
    except (OSError, RuntimeError):
        return None, []
    finally:
        _FORKED_WITH = None

    def answer() -> dict[str, Candidate] | None:
        try:
            return future.result()
        except Exception:  # the worker failed or died: its half is checked here
            return None
        finally:
            pool.shutdown(wait=True)

    return answer, half


_FORKED_WITH: tuple[Fleet, Guest, bool, Counter[str | None]] | None = None


def _checked_in_worker(hosts: list[str]) -> dict[str, Candidate]:
    assert _FORKED_WITH is not None  # set by _share_out as it forked us
    fleet, guest, strict, load = _FORKED_WITH
    return _checked(fleet, guest, hosts, strict, load)


# Below this many hosts to check, a child costs more than it saves (fork, pickled answer).
PARALLEL_MIN_CANDIDATES = 400

