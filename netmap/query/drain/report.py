"""What a drain plan says: moves, blocked guests and why, capacity before and after. Pure."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from netmap.query.drain.flow import Resource
from netmap.rules.check import Finding

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
