"""netmap drain HOST: where every guest of a host goes, as a table, JSON or commands."""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

from netmap.commands._common import add_json, console, load, print_json
from netmap.errors import EXIT_INCOMPATIBLE, EXIT_OK, InputError

if TYPE_CHECKING:
    import networkx as nx
    from rich.console import RenderableType

    from netmap.model.fleet import Fleet
    from netmap.query.drain import DrainPlan, HostUse


BRIEF_AFTER = 20  # moves; beyond this the table shows warning codes, not messages


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", metavar="HOST", help="the host to empty")
    parser.add_argument("--exclude", action="append", default=[], metavar="HOST",
                        help="never move a guest to HOST (repeat, or HOST,HOST)")
    parser.add_argument("--strict", action="store_true",
                        help="a change of forwarding semantic is an error, not a warning")
    parser.add_argument("--emit-commands", action="store_true",
                        help="print the realize / virsh migrate / release commands, in order")
    parser.add_argument("--budget", type=int, default=None, metavar="N",
                        help="search nodes for guests a single flow cannot place (default "
                        "2000, at most 1.5 s per 2000); only matters when the plan says it "
                        "is not proven optimal")
    parser.add_argument("--execute", action="store_true",
                        help="carry the plan out: live-migrate each guest through libvirt "
                        "(the hosts' libvirt_uri), then release it on HOST")
    from netmap.commands.migrate import add_execute_options

    add_execute_options(parser, many=True)
    add_json(parser)


def _run(args: argparse.Namespace) -> int:
    from netmap.query.drain import DEFAULT_BUDGET, DEFAULT_DEADLINE, drain

    if args.budget is not None and args.budget < 1:
        raise InputError(f"--budget {args.budget} is not a positive number of search nodes",
                         fix="pass --budget 2000 or more")
    exclude = [name.strip() for item in args.exclude for name in item.split(",") if name.strip()]
    if (args.resume or args.abort) and not args.execute:
        raise InputError("--resume and --abort continue an --execute run",
                         key="--resume" if args.resume else "--abort",
                         fix="add --execute")
    fleet, graph = load(args)
    if args.execute:
        return _execute(args, fleet, graph, exclude)
    budget = args.budget or DEFAULT_BUDGET
    plan = drain(graph, args.host, exclude=exclude, strict=args.strict, budget=budget,
                 deadline=DEFAULT_DEADLINE * budget / DEFAULT_BUDGET)
    if args.json:
        data = plan.as_dict()
        if args.emit_commands:
            data["commands"] = command_steps(plan, args.mappings)
        print_json(data)
    elif args.emit_commands:
        print("\n".join(emit_commands(plan, fleet, args.mappings)))
    else:
        console().print(plan_view(plan, fleet))
    return EXIT_OK if plan.complete else EXIT_INCOMPATIBLE


def _execute(args: argparse.Namespace, fleet: Fleet, graph: nx.DiGraph,
             exclude: list[str]) -> int:
    from netmap.commands.migrate import execute, open_journal
    from netmap.libvirt.journal import Journal, JournalMove
    from netmap.load import require_host
    from netmap.query.drain import DEFAULT_BUDGET, DEFAULT_DEADLINE, drain

    host = require_host(fleet, args.host).name
    path = Journal.path_for("drain", host)
    journal = open_journal(path, args, f"netmap drain {host} --execute")
    blocked = 0
    if journal is None:
        budget = args.budget or DEFAULT_BUDGET
        plan = drain(graph, host, exclude=exclude, strict=args.strict, budget=budget,
                     deadline=DEFAULT_DEADLINE * budget / DEFAULT_BUDGET)
        if not args.json:
            console().print(plan_view(plan, fleet))
        # warning-free moves first, as --emit-commands orders them
        ordered = sorted(plan.moves, key=lambda m: (bool(m.warnings), m.dest, m.guest))
        journal = Journal(path, [JournalMove(m.guest, host, m.dest) for m in ordered])
        blocked = len(plan.blocked)
    code = execute(args, fleet, journal)
    # what could not be placed stays: the drain is incomplete even when every move worked
    return code if code != EXIT_OK or not blocked else EXIT_INCOMPATIBLE


def command_steps(plan: DrainPlan, mappings: str | None) -> list[dict[str, str]]:
    """One block per guest: build the endpoints on the destination, migrate, then release
    on the source. Each move only takes capacity that is free before the drain starts, so
    the blocks are independent; warning-free moves come first so an operator can stop
    before the ones that change something."""
    base = ["netmap"] + (["--mappings", mappings] if mappings else [])
    steps = []
    for move in sorted(plan.moves, key=lambda m: (bool(m.warnings), m.dest, m.guest)):
        for step, where, argv in (
                ("realize", move.dest, [*base, "realize", move.guest, "--host", move.dest]),
                ("migrate", plan.host, ["virsh", "migrate", "--live", move.guest,
                                        f"qemu+ssh://{move.dest}/system"]),
                ("release", plan.host, [*base, "release", move.guest, "--host", plan.host])):
            steps.append({"guest": move.guest, "step": step, "run_on": where,
                          "command": shlex.join(argv)})
    return steps


def emit_commands(plan: DrainPlan, fleet: Fleet, mappings: str | None) -> list[str]:
    """The steps as a commented listing, one block per guest."""
    moves = {m.guest: m for m in plan.moves}
    proof = "proven optimal" if plan.proven else "NOT proven optimal"
    lines = [f"# netmap drain {plan.host}: {len(moves)} of {len(moves) + len(plan.blocked)} "
             f"guest(s) placed ({proof}).",
             "# Run each line on the host its comment names; release only after the "
             "migration succeeded."]
    steps = command_steps(plan, mappings)
    for number, start in enumerate(range(0, len(steps), 3), 1):
        move = moves[steps[start]["guest"]]
        warned = (f" ({', '.join(sorted({w.code for w in move.warnings}))})"
                  if move.warnings else "")
        guest = fleet.guests[move.guest]
        where = guest.source.file if guest.source else f"guests/{move.guest}.toml"
        lines += ["", f"# {number}/{len(moves)} {move.guest}: {plan.host} -> {move.dest}{warned}"]
        lines += [f"{step['command']}  # on {step['run_on']}" for step in steps[start:start + 3]]
        lines.append(f'# then set host = "{move.dest}" in {where}')
    for blocked in plan.blocked:
        lines += ["", f"# {blocked.guest} stays on {plan.host}: {blocked.summary}"]
    return lines


def plan_view(plan: DrainPlan, fleet: Fleet) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    moves = Table(title=f"drain {plan.host}", title_justify="default")
    for column in ("guest", "NICs", "destination", "warnings / why not"):
        moves.add_column(column)
    # a long plan shows warning codes only (the messages are in --json and `netmap check`)
    brief = len(plan.moves) > BRIEF_AFTER
    for move in plan.moves:
        nics = str(len(fleet.guests[move.guest].nics))
        why = Text("\n".join(f"{w.code} (NIC {w.nic})" if brief else f"{w.code}: {w.message}"
                             for w in move.warnings), style="yellow")
        moves.add_row(move.guest, nics, Text(move.dest, style="green"), why)
    for blocked in plan.blocked:
        nics = str(len(fleet.guests[blocked.guest].nics))
        detail = [blocked.summary]
        detail += [f"{v.host}: {v.message}" for v in blocked.hosts if v.message][:5]
        detail += [f"{_names(u.hosts)}: {u.message}" for u in blocked.elsewhere][:3]
        moves.add_row(blocked.guest, nics, Text("cannot move", style="bold red"),
                      Text("\n".join(detail), style="red"))
    if not plan.moves and not plan.blocked:
        return Text(f"{plan.host} runs no guests: nothing to move", style="green")
    parts: list[RenderableType] = [moves]
    if plan.before:
        parts.append(_capacity_table(plan))
    for note in plan.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    total = len(plan.moves) + len(plan.blocked)
    if plan.complete:
        parts.append(Text(f"every guest has a destination ({total} of {total})", style="green"))
    else:
        proof = ("no plan can move more" if plan.proven else
                 f"not proven: up to {plan.upper_bound} might be placeable")
        parts.append(Text(f"{len(plan.blocked)} of {total} guest(s) cannot move ({proof})",
                          style="bold red"))
    return Group(*parts)


def _names(hosts: tuple[str, ...], shown: int = 4) -> str:
    more = len(hosts) - shown
    return ", ".join(hosts[:shown]) + (f" and {more} more" if more > 0 else "")


def _capacity_table(plan: DrainPlan) -> RenderableType:
    from rich.table import Table

    table = Table(title="destinations: before -> after", title_justify="default")
    for column in ("host", "guests", "endpoints", "SR-IOV VFs used", "passthrough"):
        table.add_column(column)
    for host, before in plan.before.items():
        after = plan.after[host]
        table.add_row(host, _span(before.guests, after.guests, before.max_guests),
                      _span(before.endpoints, after.endpoints, before.max_endpoints),
                      _vfs(before, after), _whole(before, after))
    return table


def _span(before: int, after: int, limit: int | None) -> str:
    return f"{before} -> {after}" + (f" / {limit}" if limit is not None else "")


def _vfs(before: HostUse, after: HostUse) -> str:
    return "\n".join(f"{pf}: {used} -> {now} / {total}" for (pf, used, total), (_, now, _)
                     in zip(before.vfs, after.vfs, strict=True)) or "-"


def _whole(before: HostUse, after: HostUse) -> str:
    return "\n".join(f"{up}: {'taken' if now else 'free'}" + (" (new)" if now > used else "")
                     for (up, used), (_, now) in zip(before.whole, after.whole,
                                                     strict=True)) or "-"


COMMANDS = {"drain": (_configure, _run)}
