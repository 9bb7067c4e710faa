"""Where each guest runs, from what libvirt said on each host, against what the mappings say.

Pure: the answers of the daemons come in (a host's running guests, or why it could not be
asked) and every conclusion is drawn from those alone. A guest not seen anywhere is only
"not running" when every host was asked; otherwise it may run on a host that did not
answer, and the answer is "unknown", never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from netmap.model.fleet import Fleet

# a guest's status
AGREES = "agrees"          # runs where its file says
MOVED = "moved"            # runs on one host, its file names another (or none)
NOT_RUNNING = "not-running"  # every host answered; none runs it
UNKNOWN = "unknown"        # not seen, and some host did not answer
SEVERAL = "several"        # more than one host says it runs it (a migration in flight?)


@dataclass(frozen=True)
class Asked:
    """One host's answer: the guests running there, or why libvirt could not be asked."""

    host: str
    running: frozenset[str] = frozenset()
    problem: str | None = None


@dataclass(frozen=True)
class Location:
    guest: str
    mapped: str | None       # the host in the guest's file
    running_on: tuple[str, ...]
    status: str
    unasked: tuple[str, ...] = ()  # hosts that could have it but did not answer

    @property
    def disagrees(self) -> bool:
        return self.status in (MOVED, SEVERAL)

    def as_dict(self) -> dict[str, object]:
        return {"guest": self.guest, "mapped": self.mapped, "running_on": list(self.running_on),
                "status": self.status, "unasked": list(self.unasked)}


def locate(fleet: Fleet, answers: Iterable[Asked], guests: Iterable[str]) -> list[Location]:
    """Each guest's location, in the order asked."""
    answered = list(answers)
    silent = tuple(sorted(a.host for a in answered if a.problem is not None))
    where: dict[str, list[str]] = {}
    for answer in answered:
        for name in answer.running:
            where.setdefault(name, []).append(answer.host)
    out = []
    for name in guests:
        guest = fleet.guests.get(name)
        mapped = guest.host if guest is not None else None
        running = tuple(sorted(where.get(name, ())))
        if len(running) > 1:
            status = SEVERAL
        elif running:
            status = AGREES if running[0] == mapped else MOVED
        else:
            status = UNKNOWN if silent else NOT_RUNNING
        out.append(Location(name, mapped, running, status, silent if not running else ()))
    return out


def unmapped_guests(answers: Iterable[Asked], fleet: Fleet) -> list[tuple[str, str]]:
    """(guest, host) for domains libvirt runs that no guest file describes."""
    return sorted((name, answer.host) for answer in answers for name in answer.running
                  if name not in fleet.guests)


def host_updates(locations: Iterable[Location]) -> Mapping[str, str]:
    """guest -> the host its file should name: only a guest seen on exactly one host."""
    return {loc.guest: loc.running_on[0] for loc in locations if loc.status == MOVED}


def located_fleet(fleet: Fleet, locations: Iterable[Location]) -> Fleet:
    """The fleet with each guest on the host libvirt runs it on, where exactly one host
    said so; every other guest stays where its file says (the caller warns about those:
    nothing here is guessed)."""
    moved = host_updates(locations)
    if not moved:
        return fleet
    guests = {name: replace(guest, host=moved[name]) if name in moved else guest
              for name, guest in fleet.guests.items()}
    return replace(fleet, guests=guests)


def location_warnings(locations: Iterable[Location], answers: Iterable[Asked]) -> list[str]:
    """What an operator must hear before an answer that used these locations: each guest
    whose file libvirt contradicts, each host that did not answer, and the guests counted
    where their files say because nobody could confirm it (one line, not one per guest)."""
    out = []
    unknown, idle = [], []
    for loc in locations:
        if loc.status == MOVED:
            out.append(f"{loc.guest} runs on {loc.running_on[0]}, its file says "
                       f"{loc.mapped or 'nowhere'}: counted where it runs "
                       "(`netmap locate --write` records it)")
        elif loc.status == SEVERAL:
            out.append(f"{loc.guest} runs on {', '.join(loc.running_on)} (a migration under "
                       f"way?): counted where its file says, {loc.mapped or 'nowhere'}")
        elif loc.status == UNKNOWN:
            unknown.append(loc.guest)
        elif loc.status == NOT_RUNNING:
            idle.append(loc.guest)
    for answer in answers:
        if answer.problem is not None:
            out.append(f"{answer.host} was not asked: {answer.problem}")
    if unknown:
        out.append(f"not seen on any host that answered, so counted where their files say: "
                   f"{_listed(unknown)}")
    if idle:
        out.append(f"not running on any host, counted where their files say: {_listed(idle)}")
    return out


def _listed(names: list[str], shown: int = 8) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def not_running_on(fleet: Fleet, answer: Asked) -> list[str]:
    """Guests `fleet` places on the answering host that its libvirt does not run (stopped,
    or gone): a drain has nothing of theirs to migrate."""
    return sorted(name for name, guest in fleet.guests.items()
                  if guest.host == answer.host and name not in answer.running)


def unplaced(fleet: Fleet, names: Iterable[str]) -> Fleet:
    """The fleet with these guests placed on no host."""
    drop = set(names)
    return replace(fleet, guests={name: replace(guest, host=None) if name in drop else guest
                                  for name, guest in fleet.guests.items()})
