"""netmap drain: plan the evacuation of a whole host. Pure: the graph and the check in, a plan
out; the solving is netmap.drain_flow (flows on networkx, exact; see its docstring).

Candidates. A host can take a guest when it binds every network the guest uses (the graph:
network <- binding -> host), its uplinks reach the networks' segments, and the check passes.
The check's verdict depends on the guest only through its NICs' networks, vhost policy,
pinned class and MTU (its *profile*) and its MACs, so the full check runs once per profile
and host; a guest whose MAC another guest also uses is checked again on the hosts where that
MAC lives (and once to see whether the MAC is a duplicate everywhere). Every move of the final
plan is checked again, for that guest, with check_migration; a disagreement drops the option
and the plan is solved again, so the plan never rests on the shortcut alone.

Fewer hosts, same answer. A guest with at least N compatible hosts (N = guests to drain)
can always be placed: the other N - 1 guests occupy at most N - 1 hosts, and the check
already vouches that the guest fits alone on any of them. So examining hosts stops once a
profile has enough of them (least loaded first; further on while they carry warnings, to
find warning-free ones), which keeps a 2,000-host fleet cheap without losing any plan.

Capacity the check cannot see (what other drained guests will take: VFs per PF, uplinks
held in macvtap passthrough, max_guests, max_endpoints) lives in the flow, not in a mutated
fleet.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import networkx as nx

from netmap import graph as g
from netmap.check import Finding, check_migration
from netmap.drain_flow import DEFAULT_BUDGET, Option, Problem, Resource, Solution, solve
from netmap.errors import InputError
from netmap.load import require_host
from netmap.model import Guest, Host

WARNING_COST = 1000  # one warning outweighs any difference in load
MAC_CODES = frozenset({"MAC_IN_USE", "MAC_DUPLICATE"})
DETAILED_HOSTS = 10  # blocked guests: full messages for this many hosts, codes for the rest
LISTED_HOSTS = 100  # hosts named per graph-level reason in JSON (the count is always exact)


@dataclass(frozen=True)
class HostUse:
    """What a host holds, before or after the drain, against its limits."""

    host: str
    guests: int
    max_guests: int | None
    endpoints: int
    max_endpoints: int | None
    vfs: tuple[tuple[str, int, int], ...] = ()  # (PF, VFs used, total)
    whole: tuple[tuple[str, int], ...] = ()  # (uplink bound in passthrough, guests on it)

    def free(self) -> dict[Resource, int]:
        out: dict[Resource, int] = {("vf", self.host, pf): total - used
                                    for pf, used, total in self.vfs}
        out.update({("whole", self.host, uplink): 1 - used for uplink, used in self.whole})
        if self.max_endpoints is not None:
            out["endpoints", self.host, ""] = self.max_endpoints - self.endpoints
        if self.max_guests is not None:
            out["guests", self.host, ""] = self.max_guests - self.guests
        return out

    def plus(self, demands: list[tuple[tuple[Resource, int], ...]], nics: int) -> HostUse:
        taken: Counter = Counter()
        for demand in demands:
            for res, amount in demand:
                taken[res[0], res[2]] += amount
        return HostUse(self.host, self.guests + len(demands), self.max_guests,
                       self.endpoints + nics, self.max_endpoints,
                       tuple((pf, used + taken["vf", pf], total) for pf, used, total in self.vfs),
                       tuple((up, used + taken["whole", up]) for up, used in self.whole))

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "guests": self.guests, "max_guests": self.max_guests,
                "endpoints": self.endpoints, "max_endpoints": self.max_endpoints,
                "vfs": [{"pf": pf, "used": used, "total": total} for pf, used, total in self.vfs],
                "passthrough": [{"uplink": up, "used": used} for up, used in self.whole]}


@dataclass(frozen=True)
class Move:
    guest: str
    dest: str
    warnings: tuple[Finding, ...]

    def as_dict(self) -> dict[str, object]:
        return {"guest": self.guest, "destination": self.dest,
                "warnings": [f.as_dict() for f in self.warnings]}


@dataclass(frozen=True)
class HostVerdict:
    """Why one host cannot take a blocked guest; message only for the first few hosts."""

    host: str
    code: str
    nic: int | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "code": self.code, "nic": self.nic, "message": self.message}


@dataclass(frozen=True)
class Unfit:
    """Hosts the graph rules out before any check: one reason, one network, many hosts."""

    code: str  # NETWORK_UNBOUND | SEGMENT_UNREACHABLE
    network: str
    nic: int
    hosts: tuple[str, ...]

    @property
    def message(self) -> str:
        if self.code == "NETWORK_UNBOUND":
            return f"no binding for network {self.network}"
        return f"network {self.network} bound to an uplink that does not reach its segment"

    def as_dict(self) -> dict[str, object]:
        # a fleet-wide reason can cover thousands of hosts: the count is exact, the names
        # are capped so that the JSON of a large drain stays readable
        return {"code": self.code, "network": self.network, "nic": self.nic,
                "message": self.message, "count": len(self.hosts),
                "hosts": list(self.hosts[:LISTED_HOSTS])}


@dataclass(frozen=True)
class Blocked:
    guest: str
    reason: str  # incompatible | capacity | unproven
    summary: str
    hosts: tuple[HostVerdict, ...] = ()  # each host that binds the guest's networks
    elsewhere: tuple[Unfit, ...] = ()  # the other hosts, by reason

    @property
    def by_code(self) -> Counter:
        counted = Counter(v.code for v in self.hosts)
        for unfit in self.elsewhere:
            counted[unfit.code] += len(unfit.hosts)
        return counted

    def as_dict(self) -> dict[str, object]:
        return {"guest": self.guest, "reason": self.reason, "summary": self.summary,
                "by_code": dict(self.by_code.most_common()),
                "hosts": [v.as_dict() for v in self.hosts],
                "elsewhere": [u.as_dict() for u in self.elsewhere]}


@dataclass(frozen=True)
class DrainPlan:
    host: str
    strict: bool
    excluded: tuple[str, ...]
    moves: tuple[Move, ...]
    blocked: tuple[Blocked, ...]
    before: dict[str, HostUse]  # destinations that receive guests
    after: dict[str, HostUse]
    proven: bool  # no plan moves more guests
    upper_bound: int
    notes: tuple[str, ...] = ()
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.blocked

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "strict": self.strict, "excluded": list(self.excluded),
                "complete": self.complete, "proven_optimal": self.proven,
                "upper_bound": self.upper_bound,
                "moves": [m.as_dict() for m in self.moves],
                "blocked": [b.as_dict() for b in self.blocked],
                "destinations": [{"host": h, "before": self.before[h].as_dict(),
                                  "after": self.after[h].as_dict()} for h in self.before],
                "notes": list(self.notes), "stats": self.stats}


def host_use(graph: nx.DiGraph, host: Host) -> HostUse:
    """The host's current load, counted the way check counts it."""
    on = g.guests_on(graph, host.name)
    vfs = g.vf_usage(graph, host.name)
    whole = g.passthrough_usage(graph, host.name)
    held = sorted({b.uplink for b in host.bindings.values() if b.mode == "macvtap-passthrough"})
    return HostUse(host.name, len(on), host.max_guests, sum(len(o.nics) for o in on),
                   host.max_endpoints,
                   tuple((u.name, vfs[u.name], u.sriov.total_vfs)
                         for u in host.uplinks.values() if u.sriov is not None),
                   tuple((uplink, whole[uplink]) for uplink in held))


def demand(host: Host, guest: Guest) -> tuple[tuple[Resource, int], ...]:
    """The limited resources `guest` takes on `host` (the check's capacity rules)."""
    taken: Counter = Counter()
    for nic in guest.nics:
        binding = host.bindings.get(nic.network)
        if binding is not None and binding.mode == "sriov-vf":
            taken["vf", host.name, binding.uplink] += 1
        elif binding is not None and binding.mode == "macvtap-passthrough":
            taken["whole", host.name, binding.uplink] += 1
    if host.max_endpoints is not None and guest.nics:
        taken["endpoints", host.name, ""] += len(guest.nics)
    if host.max_guests is not None:
        taken["guests", host.name, ""] += 1
    return tuple(sorted(taken.items()))


def _profile(guest: Guest) -> tuple:
    return tuple((n.network, n.vhost, n.semantic, n.mtu) for n in guest.nics)


@dataclass
class _Survey:
    """What the examination of one profile found."""

    compatible: list[tuple[str, int]] = field(default_factory=list)  # (host, warnings)
    refused: dict[str, Finding] = field(default_factory=dict)  # host -> first error
    unbound: dict[str, list[str]] = field(default_factory=dict)  # network -> hosts
    unreachable: dict[str, list[str]] = field(default_factory=dict)
    shared: tuple[Option, ...] | None = None  # the options of members with unique MACs


class _Drain:
    def __init__(self, graph: nx.DiGraph, host: str, exclude: tuple[str, ...],
                 strict: bool) -> None:
        self.graph = graph
        self.fleet = fleet = g.fleet_of(graph)
        self.source = require_host(fleet, host)
        for name in exclude:
            try:
                require_host(fleet, name)
            except InputError as err:
                raise InputError(f"--exclude {name}: {err.problem}", fix=err.fix) from err
        self.exclude = tuple(dict.fromkeys(exclude))
        self.strict = strict
        self.guests = sorted(g.guests_on(graph, host), key=lambda guest: guest.name)
        self.dests = [h for h in fleet.hosts if h != host and h not in self.exclude]
        self.load = Counter(guest.host for guest in fleet.guests.values() if guest.host)
        self.checks = 0
        self.uses: dict[str, HostUse] = {}

    def check(self, guest: str, dest: str):
        self.checks += 1
        return check_migration(self.graph, guest, dest, source=self.source.name,
                               strict=self.strict)

    def use(self, host: str) -> HostUse:
        if host not in self.uses:
            self.uses[host] = host_use(self.graph, self.fleet.hosts[host])
        return self.uses[host]

    def survey(self, members: list[Guest], needed: int) -> _Survey:
        survey = _Survey()
        able = set(self.dests)
        for network in sorted({nic.network for nic in members[0].nics}):
            binding = g.hosts_binding(self.graph, network)
            survey.unbound[network] = sorted(able - binding)
            able &= binding
            segment = self.fleet.networks[network]
            if segment.is_overlay:
                continue
            far = {h for h in able if not g.reaches(
                self.graph, h, self.fleet.hosts[h].bindings[network].uplink, segment.segment_id)}
            survey.unreachable[network] = sorted(far)
            able -= far
        clean = 0
        for examined, host in enumerate(sorted(able, key=lambda h: (self.load[h], h)), 1):
            report = self.check(members[0].name, host)
            errors = [f for f in report.errors if f.code not in MAC_CODES]
            if errors:
                survey.refused[host] = errors[0]
                continue
            survey.compatible.append((host, len(report.warnings)))
            clean += not report.warnings
            if len(survey.compatible) >= needed and (clean >= needed or examined >= 4 * needed):
                break
        return survey

    def options(self, guest: Guest, survey: _Survey, conflicts: dict[str, set[str]],
                blocked: dict[str, Finding]) -> tuple[Option, ...]:
        owners = g.mac_owners(self.graph)
        others = {o for nic in guest.nics for o, _ in owners.get(nic.mac, ()) if o != guest.name}
        if not others:  # the profile's verdicts hold as they are: share one tuple (one
            if survey.shared is None:  # flow group for all these guests)
                survey.shared = self._rank(guest, survey.compatible)
            return survey.shared
        suspects = {self.fleet.guests[o].host for o in others}
        for other in others:
            if self.fleet.guests[other].host == self.source.name:
                conflicts[guest.name].add(other)  # one MAC twice on one host: keep apart
        kept: list[tuple[str, int]] = []
        reference = next((h for h, _ in survey.compatible if h not in suspects), None)
        if others and reference is not None:
            mac = [f for f in self.check(guest.name, reference).errors if f.code in MAC_CODES]
            if mac:  # a duplicate on the same L2 domain: the same on every host
                blocked[guest.name] = mac[0]
                return []
        for host, warnings in survey.compatible:
            if host in suspects:
                report = self.check(guest.name, host)
                if not report.compatible:
                    continue
                warnings = len(report.warnings)
            kept.append((host, warnings))
        return self._rank(guest, kept)

    def _rank(self, guest: Guest, kept: list[tuple[str, int]]) -> tuple[Option, ...]:
        kept = sorted(kept, key=lambda hw: (hw[1], self.load[hw[0]], hw[0]))
        return tuple(Option(h, demand(self.fleet.hosts[h], guest), w * WARNING_COST)
                     for h, w in kept)


def drain(graph: nx.DiGraph, host: str, *, exclude: tuple[str, ...] | list[str] = (),
          strict: bool = False, budget: int = DEFAULT_BUDGET) -> DrainPlan:
    """Plan moving every guest off `host`: as many as possible, each to a host that passes
    the check, no capacity exceeded; the rest with the reason they cannot move."""
    started = time.perf_counter()
    run = _Drain(graph, host, tuple(exclude), strict)
    profiles: dict[tuple, list[Guest]] = defaultdict(list)
    for guest in run.guests:
        profiles[_profile(guest)].append(guest)
    options: dict[str, tuple[Option, ...]] = {}
    surveys: dict[str, _Survey] = {}
    conflicts: dict[str, set[str]] = defaultdict(set)
    mac_blocked: dict[str, Finding] = {}
    owners = g.mac_owners(graph)
    for members in profiles.values():
        spare = max(len({o for n in m.nics for o, _ in owners.get(n.mac, ())}) for m in members)
        survey = run.survey(members, len(run.guests) + spare)
        for guest in members:
            surveys[guest.name] = survey
            options[guest.name] = run.options(guest, survey, conflicts, mac_blocked)
    free: dict[Resource, int] = {}
    candidates = sorted({o.host for opts in options.values() for o in opts})
    for name in candidates:
        free.update(run.use(name).free())
    problem = Problem(options, free, dict(run.load),
                      {k: frozenset(v) for k, v in conflicts.items()})
    solution, moves, notes = _solve_checked(run, problem, budget)
    blocked = [_explain(run, guest, problem, solution, surveys, mac_blocked)
               for guest in run.guests if guest.name not in solution.assignment]
    before, after = _summaries(run, problem, solution)
    if run.exclude:
        notes.append(f"not considered as destinations (--exclude): {', '.join(run.exclude)}")
    for kind, what in (("hosts", "were not considered as destinations"),
                       ("guests", f"are not in this plan even if they run on {host}")):
        unread = [p.file for p in run.fleet.problems
                  if p.file and f"/{kind}/" in p.file.replace("\\", "/")]
        if unread:
            notes.append(f"{len(unread)} {kind[:-1]} file(s) could not be read and {what} "
                         f"(first: {unread[0]}); run 'netmap show' to see why")
    stats = {"guests": len(run.guests), "profiles": len(profiles), "checks": run.checks,
             "candidate_hosts": len(candidates),
             "complex_guests": solution.complex_guests, "search_nodes": solution.nodes,
             "seconds": round(time.perf_counter() - started, 4)}
    return DrainPlan(host, strict, run.exclude, tuple(moves), tuple(blocked), before, after,
                     solution.proven, solution.upper_bound, tuple(notes), stats)


def _solve_checked(run: _Drain, problem: Problem,
                   budget: int) -> tuple[Solution, list[Move], list[str]]:
    """Solve, then check every move for real; drop what the check refuses and solve again."""
    notes: list[str] = []
    for _ in range(5):
        solution = solve(problem, budget=budget)
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
            problem.options[guest] = tuple(o for o in problem.options[guest] if o.host != dest)
            notes.append(f"{guest} -> {dest} was refused by the final check and re-planned")
    raise AssertionError("drain: the final check kept refusing planned moves")


def _explain(run: _Drain, guest: Guest, problem: Problem, solution: Solution,
             surveys: dict[str, _Survey], mac_blocked: dict[str, Finding]) -> Blocked:
    if guest.name in mac_blocked:
        finding = mac_blocked[guest.name]
        return Blocked(guest.name, "incompatible", finding.message)
    options = problem.options[guest.name]
    if not options:
        survey = surveys[guest.name]
        verdicts = []
        for index, (host, finding) in enumerate(sorted(survey.refused.items())):
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
                       "so a complete plan may exist (raise --budget)", tuple(verdicts))
    kinds = Counter(v.message.split(":")[0] if v.code == "CAPACITY" else "a MAC conflict"
                    for v in verdicts if v.message)
    return Blocked(guest.name, "capacity",
                   f"no room left on its {len(options)} compatible host(s): "
                   + ", ".join(f"{k} ({n})" for k, n in kinds.most_common(3)), tuple(verdicts))


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


def _summaries(run: _Drain, problem: Problem,
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
