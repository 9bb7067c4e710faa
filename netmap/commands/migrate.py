"""netmap migrate GUEST --to HOST, and what `drain --execute` shares with it: carry moves out
through libvirt with a journal, a progress display or JSON events, and a summary."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import TYPE_CHECKING, Any

from netmap.commands._common import add_json, console, print_json
from netmap.errors import EXIT_APPLY, EXIT_OK, InputError

if TYPE_CHECKING:
    from netmap.libvirt.execute import Outcome
    from netmap.libvirt.journal import Journal
    from netmap.model.fleet import Fleet


def add_execute_options(parser: argparse.ArgumentParser, *, many: bool) -> None:
    if many:
        parser.add_argument("--parallel", type=int, default=1, metavar="N",
                            help="at most N migrations at once (default 1)")
        parser.add_argument("--stop-on-error", action="store_true",
                            help="start no further migration after one fails")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="abort a migration still running after SECONDS (the guest "
                        "stays on its source)")
    parser.add_argument("--resume", action="store_true",
                        help="finish an interrupted run from its journal")
    parser.add_argument("--abort", action="store_true",
                        help="stop an interrupted run: settle what was moving, release what "
                        "moved, forget the rest")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guest", metavar="GUEST")
    parser.add_argument("--to", required=True, metavar="HOST", help="the destination host")
    parser.add_argument("--from", dest="source", metavar="HOST",
                        help="where it runs now (default: where its guest file says)")
    parser.add_argument("--strict", action="store_true",
                        help="a change of forwarding semantic is an error, not a warning")
    add_execute_options(parser, many=False)
    add_json(parser)


def _run(args: argparse.Namespace) -> int:
    from netmap.libvirt.journal import Journal, JournalMove
    from netmap.load import load_fleet, require_guest, require_host

    fleet = load_fleet(args.mappings)
    guest = require_guest(fleet, args.guest)
    path = Journal.path_for("migrate", guest.name)
    journal = open_journal(path, args, f"netmap migrate {guest.name} --to {args.to}")
    if journal is None:
        dest = require_host(fleet, args.to).name
        source = require_host(fleet, args.source).name if args.source else guest.host
        if source is None:
            raise InputError(f"{guest.name}'s file names no host it runs on",
                             file=guest.source.file if guest.source else None,
                             key="guest.host", fix="pass --from HOST (or run `netmap locate "
                             f"{guest.name} --write`)")
        if source == dest:
            raise InputError(f"{guest.name} already runs on {dest}", key="--to",
                             fix="name another host")
        journal = Journal(path, [JournalMove(guest.name, source, dest)])
    return execute(args, fleet, journal)


def open_journal(path: Any, args: argparse.Namespace, what: str) -> Journal | None:
    """The journal to go on with (--resume), None for a fresh run; refuses to start over an
    interrupted run, and carries out --abort."""
    from netmap.libvirt.journal import Journal

    if args.resume and args.abort:
        raise InputError("--resume and --abort exclude each other", key="--abort",
                         fix="pass one of them")
    journal = Journal.read(path)
    if args.resume or args.abort:
        if journal is None:
            raise InputError(f"there is no interrupted run of {what} to "
                             f"{'resume' if args.resume else 'abort'}", file=path,
                             fix=f"run {what} without --resume/--abort")
        return journal
    if journal is not None and journal.unfinished:
        raise InputError(f"an earlier run of {what} was interrupted", file=path,
                         fix="pass --resume to finish it or --abort to stop it")
    return None


def execute(args: argparse.Namespace, fleet: Fleet, journal: Journal) -> int:
    from netmap.libvirt.execute import Executor, require_uris

    require_uris(fleet, {host for move in journal.moves for host in (move.source, move.dest)})
    if getattr(args, "abort", False):
        return _abort(args, fleet, journal)
    parallel = getattr(args, "parallel", 1)
    if parallel < 1:
        raise InputError(f"--parallel {parallel} is not a positive number", key="--parallel",
                         fix="pass --parallel 1 or more")
    journal.save()
    with _events(args, len(journal.unfinished)) as emit:
        executor = Executor(fleet, journal, emit, parallel=parallel,
                            stop_on_error=getattr(args, "stop_on_error", False),
                            strict=args.strict, timeout=args.timeout,
                            live_check=lambda guest, dest: _live_refusal(fleet, guest, dest))
        outcomes = executor.run()
    if not journal.unfinished:
        journal.remove()
    _summary(args, outcomes)
    return EXIT_APPLY if any(o.status != "released" for o in outcomes) else EXIT_OK


def _live_refusal(fleet: Fleet, guest: str, dest: str) -> str:
    """`check --live` for a destination this process can read (a lab namespace, or this
    machine); elsewhere the destination's own hook checks when libvirt calls it."""
    import os
    import socket

    from netmap.commands.fleet import live_findings
    from netmap.rules.check import ERROR

    host = fleet.hosts[dest]
    if host.netns is None and dest not in (socket.gethostname(), os.environ.get("NETMAP_HOST")):
        return ""
    errors = [f for f in live_findings(fleet, fleet.guests[guest], host) if f.severity == ERROR]
    return "; ".join(f"[{f.code}] {f.message}" for f in errors)


def _abort(args: argparse.Namespace, fleet: Fleet, journal: Journal) -> int:
    from netmap.libvirt.execute import Executor
    from netmap.libvirt.journal import MIGRATING, MOVED, PENDING

    # settle what was moving; release what moved; drop what never started
    for move in journal.unfinished:
        if move.status == PENDING:
            journal.update(move, "failed", "aborted before it started")
    with _events(args, len(journal.unfinished)) as emit:
        executor = Executor(fleet, journal, emit)
        outcomes = [executor.carry(move) for move in journal.unfinished
                    if move.status in (MIGRATING, MOVED)]
    journal.remove()
    _summary(args, outcomes)
    return EXIT_OK if all(o.status == "released" for o in outcomes) else EXIT_APPLY


_STEPS = {"start": 1, "checked": 2, "migrating": 3, "done": 4, "failed": 4, "skipped": 4}


class _events:
    """JSON events one per line (--json), or a rich progress display: one bar per guest
    and one for the whole run."""

    def __init__(self, args: argparse.Namespace, total: int) -> None:
        self.json, self.total = args.json, total
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        # events come from every migration's thread: one line, one event, whole
        self.lock = threading.Lock()

    def __enter__(self) -> Any:
        if not self.json:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     TextColumn("{task.fields[step]}"), TimeElapsedColumn(),
                                     console=console(), transient=False)
            self.progress.start()
            self.overall = self.progress.add_task("all guests", total=self.total, step="")
        return self.emit

    def emit(self, event: dict[str, Any]) -> None:
        with self.lock:
            self._show(event)

    def _show(self, event: dict[str, Any]) -> None:
        if self.json:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
            return
        guest, kind = event["guest"], event["event"]
        if guest not in self.tasks:
            self.tasks[guest] = self.progress.add_task(guest, total=4, step="")
        step = kind if kind not in ("done", "failed") else (
            f"{event['status']}: {event['message']}"[:70] if kind == "failed"
            else f"on {event['dest']}")
        self.progress.update(self.tasks[guest], completed=_STEPS[kind], step=step)
        if kind in ("done", "failed", "skipped"):
            self.progress.advance(self.overall)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _summary(args: argparse.Namespace, outcomes: list[Outcome]) -> None:
    moved = [o for o in outcomes if o.status == "released"]
    if args.json:
        print_json({"event": "summary", "moved": len(moved), "total": len(outcomes),
                    "outcomes": [o.as_dict() for o in outcomes]})
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"moved {len(moved)} of {len(outcomes)} guest(s)",
                  title_justify="default")
    for column in ("guest", "from", "to", "result", "seconds"):
        table.add_column(column)
    for o in outcomes:
        style = "green" if o.status == "released" else "red"
        table.add_row(o.guest, o.source, o.dest, Text(f"{o.status}: {o.message}", style=style),
                      f"{o.seconds:.1f}")
    console().print(table)
    if moved:
        print("netmap: the guest files still name the old hosts: `netmap locate --write` "
              "records where the guests run now", file=sys.stderr)


COMMANDS = {"migrate": (_configure, _run)}
