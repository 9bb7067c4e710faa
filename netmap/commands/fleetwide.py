"""netmap fleet discover / fleet drift: netmap's discovery on every host of an Ansible
inventory, through Ansible, compared here with the mappings."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netmap.commands._common import add_json, console, print_json
from netmap.errors import EXIT_INCOMPATIBLE, EXIT_OK, InputError
from netmap.load import load_fleet

if TYPE_CHECKING:
    from rich.console import RenderableType

    from netmap.model.fleet import Fleet
    from netmap.rules.fleet_drift import HostRow

DEFAULT_COMMAND = "netmap discover --json"


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["discover", "drift"],
                        help="discover: each host's inventory; drift: each host against "
                        "its mapping")
    parser.add_argument("-i", "--inventory", required=True, metavar="INVENTORY",
                        help="the Ansible inventory (its host names are the mappings' names)")
    parser.add_argument("--limit", metavar="PATTERN", help="Ansible's --limit")
    parser.add_argument("--forks", type=int, default=20, metavar="N",
                        help="hosts Ansible works on at once (default 20)")
    parser.add_argument("--command", dest="remote_command", default=DEFAULT_COMMAND,
                        metavar="COMMAND",
                        help=f"what runs on each host (default: {DEFAULT_COMMAND!r})")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="give up on the whole run after SECONDS (default 600)")
    parser.add_argument("--write", metavar="DIR",
                        help="write a draft mapping DIR/HOST.toml for every host reached")
    add_json(parser)


def _run(args: argparse.Namespace) -> int:
    from netmap.ansible_run import OK, run_everywhere
    from netmap.rules.fleet_drift import FAILED, UNREACHABLE, HostRow, compare, read_inventory

    if args.forks < 1:
        raise InputError(f"--forks {args.forks} is not a positive number", key="--forks",
                         fix="pass --forks 1 or more")
    fleet = load_fleet(args.mappings) if args.action == "drift" else _fleet_if_any(args)
    with _Progress(args.json) as heard:
        runs = run_everywhere(args.inventory, args.remote_command, forks=args.forks,
                              limit=args.limit, timeout=args.timeout, progress=heard)
    rows: list[HostRow] = []
    for run in runs:
        if run.status != OK:
            rows.append(HostRow(run.host, UNREACHABLE if run.status == "unreachable"
                                else FAILED, problem=run.problem))
            continue
        row = read_inventory(run.host, run.stdout)
        rows.append(compare(fleet, row) if args.action == "drift" and fleet else row)
    written = _write_drafts(args, rows, fleet) if args.write else []
    if args.json:
        print_json(_as_json(args.action, rows, written))
    else:
        console().print(_view(args.action, rows, written))
    if args.action == "drift":
        # no drift is a claim about every host: one that was not compared voids it
        return EXIT_OK if rows and all(r.status == "ok" for r in rows) else EXIT_INCOMPATIBLE
    return EXIT_OK if rows and all(r.inventory is not None for r in rows) else EXIT_INCOMPATIBLE


def _fleet_if_any(args: argparse.Namespace) -> Fleet | None:
    """discover needs no mappings; with them, drafts turn bridges into bindings."""
    try:
        return load_fleet(args.mappings)
    except InputError:
        if args.mappings:
            raise
        return None


def _write_drafts(args: argparse.Namespace, rows: list[HostRow],
                  fleet: Fleet | None) -> list[str]:
    from netmap.rules.draft import draft_host

    out = Path(args.write)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for row in rows:
            if row.inventory is None:
                continue
            path = out / f"{row.host}.toml"
            path.write_text(draft_host(row.inventory, host_name=row.host,
                                       networks=fleet.networks if fleet else None))
            written.append(str(path))
    except OSError as err:
        raise InputError(f"cannot write drafts to {out}: {err.strerror}", key="--write",
                         fix="choose a writable directory") from err
    return written


def _as_json(action: str, rows: list[HostRow], written: list[str]) -> dict[str, Any]:
    hosts = []
    for row in rows:
        entry = row.as_dict()
        if action == "discover" and row.inventory is not None:
            entry["inventory"] = row.inventory.as_dict()
        hosts.append(entry)
    return {"hosts": hosts, "drift": any(r.status == "drift" for r in rows),
            "unreachable": [r.host for r in rows if r.status == "unreachable"],
            "written": written}


def _view(action: str, rows: list[HostRow], written: list[str]) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"fleet {action}: {len(rows)} host(s)", title_justify="default")
    for column in ("host", "status", "links" if action == "discover" else "findings"):
        table.add_column(column)
    styles = {"ok": "green", "drift": "red", "unreachable": "bold red", "failed": "bold red"}
    for row in rows:
        if row.problem:
            detail = Text(row.problem, style="red")
        elif action == "discover" and row.inventory is not None:
            inventory = row.inventory
            detail = Text(f"{len(inventory.interfaces)} link(s), "
                          f"{len(inventory.uplink_candidates())} uplink candidate(s); "
                          f"features {', '.join(sorted(inventory.features)) or 'none'}")
        else:
            detail = Text("\n".join(f"[{f.code}] {f.message}" for f in row.findings
                                    if f.severity != "info") or "as its mapping says")
        table.add_row(row.host, Text(row.status, style=styles.get(row.status, "yellow")),
                      detail)
    parts: list[RenderableType] = [table]
    if written:
        parts.append(Text(f"drafts written: {', '.join(written)}; review the lines marked "
                          "DECIDE", style="dim"))
    return Group(*parts)


class _Progress:
    """A line per host as Ansible finishes it (stderr; nothing with --json)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.status: Any = None
        self.count = 0

    def __enter__(self) -> Any:
        if not self.quiet:
            from rich.console import Console

            self.status = Console(stderr=True).status("waiting for Ansible…")
            self.status.start()
        return self.heard

    def heard(self, run: Any) -> None:
        self.count += 1
        if self.status is not None:
            self.status.update(f"{self.count} host(s) answered; last {shlex.quote(run.host)}: "
                               f"{run.status}")

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()


COMMANDS = {"fleet": (_configure, _run)}
