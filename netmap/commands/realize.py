"""plan, realize, release: build (or remove) a guest's endpoints on this host."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from netmap.commands import _common
from netmap.commands._common import add_json, load, print_json, this_host
from netmap.errors import EXIT_INCOMPATIBLE, EXIT_OK, InputError

if TYPE_CHECKING:
    from rich.console import Console

    from netmap.model.fleet import Fleet, Host
    from netmap.plan import Plan


def console() -> Console:
    return _common.console(soft_wrap=True)


def _esc(text: object) -> str:
    from rich.markup import escape

    return escape(str(text))


def _add_host(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guest", metavar="GUEST")
    parser.add_argument("--host", metavar="HOST",
                        help="this host's mapping name (default: $NETMAP_HOST, else the "
                        "hostname)")
    parser.add_argument("--as-host", action="store_true",
                        help="act on this machine as HOST although its hostname is another "
                        "(a renamed host; not needed when the mapping names a netns)")


def _target_host(args: argparse.Namespace, fleet: Fleet) -> Host:
    """The host to act on, refusing one that is not this machine (DESIGN.md: this host)."""
    host = this_host(args, fleet)
    me = {socket.gethostname(), socket.gethostname().split(".")[0],
          os.environ.get("NETMAP_HOST") or ""}
    # `not host.netns`: an empty name would be this machine's own namespace (load refuses
    # it; a Host built elsewhere must not pass the guard with one either)
    if not host.netns and host.name not in me and not args.as_host:
        raise InputError(
            f"--host {host.name} names another machine than this one ({socket.gethostname()});"
            " realize and release change the machine they run on",
            key="--host",
            fix=f"run netmap on {host.name}, or pass --as-host if this machine is {host.name}")
    return host


def _configure_plan(parser: argparse.ArgumentParser) -> None:
    _add_host(parser)
    add_json(parser)


def _plan(args: argparse.Namespace) -> int:
    from netmap.load import require_guest
    from netmap.plan.planner import build_plan

    fleet, graph = load(args)
    host = this_host(args, fleet)
    plan = build_plan(graph, require_guest(fleet, args.guest), host)
    if args.json:
        print_json(plan.as_dict())
    else:
        _print_plan(plan)
    return EXIT_OK if not plan.problems else EXIT_INCOMPATIBLE


def _print_plan(plan: Plan) -> None:
    out = console()
    where = f" (network namespace {plan.netns})" if plan.netns else ""
    out.print(f"[bold]plan[/] for {plan.guest} on {plan.host}{where}: nothing is changed")
    for line in plan.lines():
        out.print(f"  {line}", markup=False)
    for problem in plan.problems:
        out.print(f"  [red]cannot plan[/] {_esc(problem)}")


def _configure_realize(parser: argparse.ArgumentParser) -> None:
    _add_host(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan, change nothing")
    parser.add_argument("--force", action="store_true",
                        help="realize although check reports errors")
    add_json(parser)


def _realize(args: argparse.Namespace) -> int:
    from netmap.load import require_guest
    from netmap.plan.planner import build_plan
    from netmap.rules.check import check_migration

    fleet, graph = load(args)
    host = _target_host(args, fleet)
    guest = require_guest(fleet, args.guest)
    report = check_migration(graph, guest.name, host.name)
    findings = [f.as_dict() for f in report.findings]
    plan = build_plan(graph, guest, host)
    if not report.compatible and not args.force:
        if args.json:
            print_json({"realized": False, "check": findings, "plan": plan.as_dict()})
        else:
            from netmap.render import findings_list

            out = console()
            out.print(f"[red]refused[/]: {guest.name} cannot keep its topology on {host.name}"
                      " (nothing was changed):")
            _common.console().print(findings_list(report.errors))  # wrapped, indented
            out.print("  pass --force to realize anyway")
        return EXIT_INCOMPATIBLE
    if args.dry_run:
        return _dry_run(plan, findings, args.json)
    from netmap.netlink.apply import realize_plan

    result = realize_plan(plan)
    if args.json:
        print_json({"realized": True, "check": findings, **result.as_dict()})
        return EXIT_OK
    out = console()
    for f in report.findings:
        if f.severity != "info":
            out.print(f"  [yellow]{f.severity}[/] {f.code}: {_esc(f.message)}")
    if not result.changed:
        out.print(f"{guest.name} is already realized on {host.name}: nothing changed")
    else:
        counts: dict[str, int] = {}
        for _, _, action in result.outcomes:
            counts[action] = counts.get(action, 0) + 1
        summary = ", ".join(f"{n} {action}" for action, n in counts.items())
        out.print(f"realized {guest.name} on {host.name} ({summary})")
    for removed in result.removed:
        out.print(f"  removed {removed} (no longer in the plan)", markup=False)
    for kept in result.kept:
        out.print(f"  kept {kept}", markup=False)
    for nic in result.nics:
        device = nic.get("device") or f"VF {nic.get('vf')} of {nic.get('pf')} ({nic.get('pci')})"
        tapdev = f" {nic['tapdev']}" if nic.get("tapdev") else ""
        out.print(f"\n[bold]NIC {nic['nic']}[/] {_esc(nic['network'])} ({nic['mode']}): "
                  f"{_esc(device)}{_esc(tapdev)}")
        out.print(str(nic.get("libvirt_xml", "")), markup=False)
    return EXIT_OK


def _dry_run(plan: Plan, findings: list[dict], as_json: bool) -> int:
    """The plan, with what each step would do on the live host when it can be read."""
    from netmap.errors import ApplyError
    from netmap.netlink.apply import preview_plan

    verdicts, unreachable, cannot_read = None, None, None
    if not plan.problems:
        try:
            verdicts = preview_plan(plan)
        except ApplyError as err:
            if "cannot reach host" not in err.problem:
                raise  # a refusal: realize would fail, exit 3 with the reason
            unreachable, cannot_read = err.problem, err
    if as_json:
        data = {"dry_run": True, "check": findings, "plan": plan.as_dict(),
                "verdicts": None if verdicts is None else [
                    {"nic": nic, "do": step.describe(), "result": verdict}
                    for nic, step, verdict in verdicts],
                "unreachable": unreachable}
        print_json(data)
    elif verdicts is None:
        _print_plan(plan)
    else:
        out = console()
        changes = sum(verdict in ("create", "repair", "recreate") for _, _, verdict in verdicts)
        out.print(f"[bold]dry run[/] of {plan.guest} on {plan.host}: {changes} change(s), "
                  "nothing done")
        for n, (nic, step, verdict) in enumerate(verdicts, 1):
            out.print(f"  {n}. [nic {nic}] {verdict:9} {step.describe()}", markup=False)
    if cannot_read is not None:
        # the plan alone says nothing about this host: a dry run that could not read it
        # has not answered (realize would fail the same way)
        print(f"netmap: error: the dry run could not read the host: {cannot_read}",
              file=sys.stderr)
        return cannot_read.exit_code
    return EXIT_OK if not plan.problems else EXIT_INCOMPATIBLE


def _configure_release(parser: argparse.ArgumentParser) -> None:
    _add_host(parser)
    add_json(parser)


def _release(args: argparse.Namespace) -> int:
    from netmap.netlink.apply import release_guest

    fleet, _graph = load(args)
    host = _target_host(args, fleet)
    _require_releasable(fleet, host, args.guest)
    # the guest's file may be gone already: state, not the mappings, says what to remove
    result = release_guest(host.name, args.guest, host.netns)
    if args.json:
        print_json(result.as_dict())
        return EXIT_OK
    out = console()
    if not result.removed and not result.kept:
        out.print(f"netmap made nothing for {args.guest} on {host.name}: nothing to release")
        return EXIT_OK
    out.print(f"released {args.guest} on {host.name}: removed "
              f"{', '.join(result.removed) or 'nothing'}", markup=False)
    for kept in result.kept:
        out.print(f"  kept {kept}", markup=False)
    return EXIT_OK


def _require_releasable(fleet: Fleet, host: Host, name: str) -> None:
    """A guest of the mappings, or one that netmap's state on this host still names (its
    guest file may be gone, and what was made for it must still be removable). Any other
    name is a typo: refused with a did-you-mean, as every command refuses one."""
    from netmap.load import require_guest
    from netmap.load.tomlcheck import did_you_mean
    from netmap.state import HostState

    if name in fleet.guests:
        return
    state = HostState.load(host.name)
    if state.guest(name) is not None:
        return
    if any(problem.file and Path(problem.file).stem == name for problem in fleet.problems):
        require_guest(fleet, name)  # raises the broken guest file's own error
    known = set(fleet.guests) | set(state.guests)
    raise InputError(f"unknown guest {name!r}: no guest file, and netmap's state on "
                     f"{host.name} names no such guest",
                     fix=f"{did_you_mean(name, known)} (guests are defined in "
                     f"{fleet.root}/guests/; {state.path} names those netmap built here)")


COMMANDS = {
    "plan": (_configure_plan, _plan),
    "realize": (_configure_realize, _realize),
    "release": (_configure_release, _release),
}
