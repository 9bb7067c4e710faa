"""netmap drain: plan the evacuation of a whole host, as flows on the fleet graph. Pure."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import replace

import networkx as nx

from netmap.model.fleet import Guest
from netmap.query import graph as g
from netmap.query.drain.candidates import DrainContext, Survey, demand, profile
from netmap.query.drain.flow import Option, Problem, Resource, Solution
from netmap.query.drain.report import Blocked, DrainPlan, HostUse, HostVerdict, Move, Unfit
from netmap.query.drain.search import DEFAULT_BUDGET, DEFAULT_DEADLINE, solve
from netmap.rules.check import Finding

CAPACITY_CODES = frozenset({"NO_FREE_VF", "UPLINK_TAKEN", "HOST_FULL"})  # check's, not topology
DETAILED_HOSTS = 10  # blocked guests: full messages for this many hosts, codes for the rest
FIRST_LOOK = 16  # hosts examined per profile at first ...
SPREAD = 3  # ... or this many per guest of the profile, whichever is more


def drain(graph: nx.DiGraph, host: str, *, exclude: tuple[str, ...] | list[str] = (),
          strict: bool = False, budget: int = DEFAULT_BUDGET,
          deadline: float = DEFAULT_DEADLINE) -> DrainPlan:
    """Plan moving every guest off `host`: as many as possible, each to a host that passes
    the check, no capacity exceeded; the rest with the reason they cannot move. `budget`
    (search nodes) and `deadline` (seconds) only bound the search for complex guests."""
    started = time.perf_counter()
    run = DrainContext(graph, host, tuple(exclude), strict)
    profiles: dict[tuple, list[Guest]] = defaultdict(list)
    for guest in run.guests:
        profiles[profile(guest)].append(guest)
    owners = g.mac_owners(graph)
    # enough hosts per profile that the answer cannot change (see candidates.py) ...
    needed = {key: len(run.guests) + max(len({o for n in m.nics for o, _ in owners.get(
        n.mac, ())}) for m in members) for key, members in profiles.items()}
    # ... but first only a few per guest: most drains fit there, and many distinct profiles
    # would otherwise each examine hundreds of hosts
    limits = {key: min(needed[key], max(FIRST_LOOK, SPREAD * len(members)))
              for key, members in profiles.items()}
    cands = _Candidates(run)
    for key, members in profiles.items():
        cands.survey(members, limits[key])
    final = False
    while True:
        problem = cands.problem()
        # until the candidates are final, a quick solve (the flow, one dive, packing) shows
        # whether anyone is left out; only the final problem gets the full search
        solution, moves, notes = _solve_checked(run, problem, budget if final else 1,
                                                deadline if final else 0.0)
        short = any(name not in solution.assignment and options
                    for name, options in problem.options.items())
        # a guest left out for want of room may fit on a host not examined yet, or another
        # guest may make room for it by moving to one: widen every profile that was cut
        # short to the full count, so the short look never costs a move
        widen = [key for key in profiles if short and limits[key] < needed[key]
                 and cands.surveys[profiles[key][0].name].truncated]
        if final or not short or (solution.proven and not widen):
            break
        for key in widen:
            limits[key] = needed[key]
            cands.survey(profiles[key], needed[key])
        final = True
    surveys, mac_blocked = cands.surveys, cands.mac_blocked
    blocked = [_explain(run, guest, problem, solution, surveys, mac_blocked)
               for guest in run.guests if guest.name not in solution.assignment]
    before, after = _summaries(run, problem, solution)
    if run.exclude:
        shown = ", ".join(run.exclude[:10])
        more = f" and {len(run.exclude) - 10} more" if len(run.exclude) > 10 else ""
        notes.append(f"not considered as destinations (--exclude): {shown}{more}")
    for kind, what in (("hosts", "were not considered as destinations"),
                       ("guests", f"are not in this plan even if they run on {host}")):
        unread = [p.file for p in run.fleet.problems
                  if p.file and f"/{kind}/" in p.file.replace("\\", "/")]
        if unread:
            notes.append(f"{len(unread)} {kind[:-1]} file(s) could not be read and {what} "
                         f"(first: {unread[0]}); run 'netmap show' to see why")
    stats = {"guests": len(run.guests), "profiles": len(profiles), "checks": run.checks,
             "candidate_hosts": len({o.host for opts in problem.options.values() for o in opts}),
             "complex_guests": solution.complex_guests, "search_nodes": solution.nodes,
             "seconds": round(time.perf_counter() - started, 4)}
    return DrainPlan(host, strict, run.exclude, tuple(moves), tuple(blocked), before, after,
                     solution.proven, solution.upper_bound, tuple(notes), stats)


class _Candidates:
    """Per profile: the survey of its hosts; per guest: the options that follow from it."""

    def __init__(self, run: DrainContext) -> None:
        self.run = run
        self.options: dict[str, tuple[Option, ...]] = {}
        self.surveys: dict[str, Survey] = {}
        self.conflicts: dict[str, set[str]] = defaultdict(set)
        self.mac_blocked: dict[str, Finding] = {}

    def survey(self, members: list[Guest], limit: int) -> None:
        survey = self.run.survey(members, limit)
        for guest in members:
            self.surveys[guest.name] = survey
            self.options[guest.name] = self.run.options(guest, survey, self.conflicts,
                                                        self.mac_blocked)

    def problem(self) -> Problem:
        free: dict[Resource, int] = {}
        for name in sorted({o.host for opts in self.options.values() for o in opts}):
            free.update(self.run.use(name).free())
        options = {guest: tuple(o for o in opts if (guest, o.host) not in self.run.refused)
                   if self.run.refused else opts for guest, opts in self.options.items()}
        return Problem(options, free, dict(self.run.load),
                       {k: frozenset(v) for k, v in self.conflicts.items()})


def _solve_checked(run: DrainContext, problem: Problem, budget: int,
                   deadline: float) -> tuple[Solution, list[Move], list[str]]:
    """Solve, then check every move for real; drop what the check refuses and solve again."""
    notes: list[str] = []
    while True:  # ends: every round removes at least one option
        solution = solve(problem, budget=budget, deadline=deadline)
        moves, refused = [], []
        for guest in sorted(solution.assignment):
            report = run.check(guest, solution.assignment[guest])
            if report.compatible:
                moves.append(Move(guest, report.dest, tuple(report.warnings)))
            else:
                refused.append((guest, report.dest))
        if not refused:
            return solution, moves, notes
        for guest, dest in refused:
            run.refused.add((guest, dest))  # for every later problem too
            problem.options[guest] = tuple(o for o in problem.options[guest] if o.host != dest)
            notes.append(f"{guest} -> {dest} was refused by the final check and re-planned")


def _explain(run: DrainContext, guest: Guest, problem: Problem, solution: Solution,
             surveys: dict[str, Survey], mac_blocked: dict[str, Finding]) -> Blocked:
    if guest.name in mac_blocked:
        finding = mac_blocked[guest.name]
        return Blocked(guest.name, "incompatible", finding.message)
    options = problem.options[guest.name]
    if not options:
        survey = surveys[guest.name]
        verdicts = []
        full = []
        for index, (host, finding) in enumerate(sorted(survey.refused.items())):
            if finding.code in CAPACITY_CODES:  # the first error: compatible, but full
                full.append(_full_before(run, guest, host, finding))
                continue
            message = None
            if index < DETAILED_HOSTS:  # the real messages name this guest's NICs
                errors = run.check(guest.name, host).errors
                finding = errors[0] if errors else finding
                message = finding.message
            verdicts.append(HostVerdict(host, finding.code, finding.nic, message))
        elsewhere = tuple(
            Unfit(code, network, next(n.index for n in guest.nics if n.network == network),
                  tuple(hosts))
            for code, table in (("NETWORK_UNBOUND", survey.unbound),
                                ("SEGMENT_UNREACHABLE", survey.unreachable))
            for network, hosts in table.items() if hosts)
        if full:
            what = "; ".join(f"{v.host}: {v.message}" for v in full[:3])
            more = f" and {len(full) - 3} more" if len(full) > 3 else ""
            return Blocked(guest.name, "capacity",
                           f"its {len(full)} compatible host(s) are full before the drain "
                           f"({what}{more})", (*full, *verdicts), elsewhere)
        blocked = Blocked(guest.name, "incompatible", "", tuple(verdicts), elsewhere)
        counted = blocked.by_code.most_common()
        what = ", ".join(f"{code} on {n}" for code, n in counted) or "there is no other host"
        if run.exclude:
            what += f"; {len(run.exclude)} host(s) left out by --exclude"
        return replace(blocked, summary=f"no host passes the check: {what}")
    free = dict(problem.free)
    for res, amount in _used(problem, solution).items():
        free[res] -= amount
    placed = solution.assignment
    verdicts = []
    for option in options:
        rivals = [o for o in problem.conflicts.get(guest.name, ()) if placed.get(o) == option.host]
        short = [(res, amount) for res, amount in option.demand if free[res] < amount]
        if rivals:
            verdicts.append(HostVerdict(option.host, "MAC_CONFLICT", None,
                                        f"{rivals[0]}, which shares a MAC, goes there"))
        for res, amount in short[:1]:
            verdicts.append(HostVerdict(option.host, "CAPACITY", None,
                                        f"{_resource_text(res)}: {max(free[res], 0)} free "
                                        f"after the plan, needs {amount}"))
    if not solution.proven:
        return Blocked(guest.name, "unproven",
                       f"not placed; the search stopped at its budget with at most "
                       f"{solution.upper_bound} of {len(problem.options)} guests placeable, "
                       "so a complete plan may exist (try a larger --budget)",
                       tuple(verdicts))
    kinds = Counter(v.message.split(":")[0] if v.code == "CAPACITY" else "a MAC conflict"
                    for v in verdicts if v.message)
    return Blocked(guest.name, "capacity",
                   f"no room left on its {len(options)} compatible host(s): "
                   + ", ".join(f"{k} ({n})" for k, n in kinds.most_common(3)), tuple(verdicts))


def _full_before(run: DrainContext, guest: Guest, host: str, finding: Finding) -> HostVerdict:
    """Which of `host`'s resources `guest` finds exhausted before any guest moves."""
    free = run.use(host).free()
    short = [(res, amount) for res, amount in demand(run.fleet.hosts[host], guest)
             if free.get(res, 0) < amount]
    if not short:  # the check counts what the flow does; its own words if they differ
        return HostVerdict(host, "CAPACITY", finding.nic, finding.message)
    res, amount = short[0]
    return HostVerdict(host, "CAPACITY", finding.nic,
                       f"{_resource_text(res)}: {max(free.get(res, 0), 0)} free before the "
                       f"drain, needs {amount}")


def _resource_text(res: Resource) -> str:
    kind, _, uplink = res
    return {"vf": f"VFs of PF {uplink}", "whole": f"passthrough uplink {uplink}",
            "endpoints": "endpoints (max_endpoints)", "guests": "guests (max_guests)"}[kind]


def _used(problem: Problem, solution: Solution) -> Counter:
    used: Counter = Counter()
    for guest, host in solution.assignment.items():
        option = next(o for o in problem.options[guest] if o.host == host)
        used.update(dict(option.demand))
    return used


def _summaries(run: DrainContext, problem: Problem,
               solution: Solution) -> tuple[dict[str, HostUse], dict[str, HostUse]]:
    arriving: dict[str, list[str]] = defaultdict(list)
    for guest, host in sorted(solution.assignment.items()):
        arriving[host].append(guest)
    before, after = {}, {}
    for host in sorted(arriving):
        guests = arriving[host]
        demands = [next(o.demand for o in problem.options[n] if o.host == host) for n in guests]
        nics = sum(len(run.fleet.guests[n].nics) for n in guests)
        before[host] = run.use(host)
        after[host] = before[host].plus(demands, nics)
    return before, after
