"""netmap locate [GUEST...]: where each guest runs, as libvirt on every host says."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from netmap.commands._common import add_json, console, print_json
from netmap.errors import EXIT_INCOMPATIBLE, EXIT_INPUT, EXIT_OK

if TYPE_CHECKING:
    from rich.console import RenderableType

    from netmap.query.locate import Asked, Location


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guests", nargs="*", metavar="GUEST",
                        help="guests to find (default: every guest file)")
    parser.add_argument("--write", action="store_true",
                        help="set `host` in each moved guest's file to where it runs")
    add_json(parser)


def _run(args: argparse.Namespace) -> int:
    from netmap.libvirt.client import ask_hosts
    from netmap.load import load_fleet, require_guest
    from netmap.query.locate import host_updates, locate, unmapped_guests

    fleet = load_fleet(args.mappings)
    names = [require_guest(fleet, name).name for name in args.guests] or sorted(fleet.guests)
    answers = ask_hosts({name: host.libvirt_uri for name, host in fleet.hosts.items()})
    locations = locate(fleet, answers, names)
    written: list[str] = []
    unwritable: list[str] = []
    if args.write:
        from netmap.errors import InputError
        from netmap.load.guest_write import set_guest_host

        for guest, host in host_updates(locations).items():
            source = fleet.guests[guest].source
            try:
                set_guest_host(source.file if source else f"{fleet.root}/guests/{guest}.toml",
                               host)
                written.append(guest)
            except (InputError, OSError) as err:  # a domain XML guest, a read-only file
                unwritable.append(f"{guest}: {err}")
    strays = unmapped_guests(answers, fleet) if not args.guests else []
    if args.json:
        print_json({"guests": [loc.as_dict() for loc in locations],
                    "hosts": [{"host": a.host, "answered": a.problem is None,
                               "problem": a.problem, "running": sorted(a.running)}
                              for a in answers],
                    "unmapped": [{"guest": g, "host": h} for g, h in strays],
                    "written": written, "not_written": unwritable})
    else:
        console().print(_view(locations, answers, strays, written))
        for problem in unwritable:
            print(f"netmap: warning: not written: {problem}", file=sys.stderr)
        for loc in locations:
            if loc.disagrees and loc.guest not in written:
                print(f"netmap: warning: {loc.guest} runs on {', '.join(loc.running_on)}, "
                      f"its file says {loc.mapped or 'nowhere'} (--write records it)",
                      file=sys.stderr)
    if fleet.problems:
        return EXIT_INPUT
    # a guest file that disagrees with libvirt is drift of the mappings, as `drift` counts
    return EXIT_INCOMPATIBLE if any(loc.disagrees and loc.guest not in written
                                    for loc in locations) else EXIT_OK


def _view(locations: list[Location], answers: list[Asked], strays: list[tuple[str, str]],
          written: list[str]) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from netmap.query.locate import AGREES, NOT_RUNNING

    table = Table(title="where guests run (libvirt)", title_justify="default")
    for column in ("guest", "file says", "libvirt says", "status"):
        table.add_column(column)
    for loc in locations:
        style = ("green" if loc.status == AGREES else "dim" if loc.status == NOT_RUNNING
                 else "yellow")
        status = loc.status + (" (written)" if loc.guest in written else "")
        if loc.unasked:
            status += f": not asked {', '.join(loc.unasked)}"
        table.add_row(loc.guest, loc.mapped or "-", ", ".join(loc.running_on) or "-",
                      Text(status, style=style))
    parts: list[RenderableType] = [table]
    for answer in answers:
        if answer.problem is not None:
            parts.append(Text(f"unreachable: {answer.host}: {answer.problem}", style="red"))
    for guest, host in strays:
        parts.append(Text(f"note: {host} runs {guest}, which no guest file describes",
                          style="dim"))
    return Group(*parts)


COMMANDS = {"locate": (_configure, _run)}
