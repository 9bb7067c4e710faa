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
    from netmap.netlink.apply import RealizeResult
    from netmap.plan import Plan


def console() -> Console:
    return _common.console(soft_wrap=True)


def _esc(text: object) -> str:
    from rich.markup import escape

    return escape(str(text))


def _add_host(parser: argparse.ArgumentParser, *, many: str | None = None) -> None:
    """GUEST, or with `many` (what --all takes) GUEST... or --all: a host agent realizes
    or releases all of a host's guests as one transaction."""
    if many is None:
        parser.add_argument("guest", metavar="GUEST")
    else:
        parser.add_argument("guests", metavar="GUEST", nargs="*",
                            help="one or more guests, made (or removed) as one transaction: "
                            "all or nothing")
        parser.add_argument("--all", action="store_true", help=many)
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


def _chosen(args: argparse.Namespace, every: list[str], what: str) -> list[str]:
    """The guests named, or with --all `every` one; neither, or both, is a usage error."""
    if args.all and args.guests:
        raise InputError(f"{what}: --all and guest names together", key="--all",
                         fix="name the guests, or pass --all, not both")
    if not args.all and not args.guests:
        raise InputError(f"{what}: no guest named", key="GUEST",
                         fix="name one or more guests, or pass --all")
    return every if args.all else list(dict.fromkeys(args.guests))


def _configure_realize(parser: argparse.ArgumentParser) -> None:
    _add_host(parser, many="every guest the mappings place on HOST ([guest] host)")
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
    names = _chosen(args, sorted(n for n, g in fleet.guests.items() if g.host == host.name),
                    "realize")
    if args.all:  # a broken guest file may place its guest here: say it is left out
        for problem in fleet.problems:
            if problem.file and Path(problem.file).parent.name == "guests":
                print(f"netmap: warning: {problem.file} cannot be read, its guest is not "
                      f"realized: {problem.problem}", file=sys.stderr)
    if not names:
        console().print(f"no guest of the mappings is on {host.name} ([guest] host): "
                        "nothing to realize")
        return EXIT_OK
    guests = [require_guest(fleet, name) for name in names]
    reports = [check_migration(graph, guest.name, host.name) for guest in guests]
    findings = {guest.name: [f.as_dict() for f in report.findings]
                for guest, report in zip(guests, reports, strict=True)}
    plans = [build_plan(graph, guest, host) for guest in guests]
    refused = [(guest, report) for guest, report in zip(guests, reports, strict=True)
               if not report.compatible]
    one = len(guests) == 1
    if refused and not args.force:
        if args.json:
            print_json({"realized": False, "check": findings[names[0]],
                        "plan": plans[0].as_dict()} if one else
                       {"realized": False, "refused": [g.name for g, _ in refused],
                        "check": findings, "plans": [q.as_dict() for q in plans]})
        else:
            from netmap.render import findings_list

            out = console()
            for guest, report in refused:
                out.print(f"[red]refused[/]: {guest.name} cannot keep its topology on "
                          f"{host.name} (nothing was changed):")
                _common.console().print(findings_list(report.errors))  # wrapped, indented
            out.print("  pass --force to realize anyway")
        return EXIT_INCOMPATIBLE
    if args.dry_run:
        if one:
            return _dry_run(plans[0], findings[names[0]], args.json)
        return _dry_run_many(plans, findings, args.json)
    from netmap.netlink.apply import realize_plans

    results = realize_plans(plans)
    for result in results:
        result.nics = [_attached(nic) for nic in result.nics]
    if args.json:
        print_json({"realized": True, "check": findings[names[0]], **results[0].as_dict()}
                   if one else {"realized": True, "host": host.name, "guests": [
                       {"check": findings[r.guest], **r.as_dict()} for r in results]})
        return EXIT_OK
    out = console()
    for report in reports:
        for f in report.findings:
            if f.severity != "info":
                out.print(f"  [yellow]{f.severity}[/] {f.code}: {_esc(f.message)}")
    for result in results:
        _print_realized(out, result, host.name, details=one)
    return EXIT_OK


def _print_realized(out: Console, result: RealizeResult, host: str, *, details: bool,
                    ) -> None:
    """What realize did for one guest; with `details`, each NIC's libvirt XML too."""
    if not result.changed:
        out.print(f"{result.guest} is already realized on {host}: nothing changed")
    else:
        counts: dict[str, int] = {}
        for _, _, action in result.outcomes:
            counts[action] = counts.get(action, 0) + 1
        summary = ", ".join(f"{n} {action}" for action, n in counts.items())
        out.print(f"realized {result.guest} on {host} ({summary or 'shared parts only'})")
    for removed in result.removed:
        out.print(f"  removed {removed} (no longer in the plan)", markup=False)
    for kept in result.kept:
        out.print(f"  kept {kept}", markup=False)
    for nic in result.nics:
        device = nic.get("device") or f"VF {nic.get('vf')} of {nic.get('pf')} ({nic.get('pci')})"
        tapdev = f" {nic['tapdev']}" if nic.get("tapdev") else ""
        if not details:
            out.print(f"  NIC {nic['nic']} {nic['network']} ({nic['mode']}): {device}{tapdev}",
                      markup=False)
            continue
        out.print(f"\n[bold]NIC {nic['nic']}[/] {_esc(nic['network'])} ({nic['mode']}): "
                  f"{_esc(device)}{_esc(tapdev)}")
        out.print(str(nic.get("libvirt_xml", "")), markup=False)


def _dry_run_many(plans: list[Plan], findings: dict[str, list[dict]], as_json: bool) -> int:
    """The dry run of several guests as one realize would decide it (a part they share
    is decided once, for the first guest that names it)."""
    from netmap.netlink.apply import preview_plans

    problems = [problem for plan in plans for problem in plan.problems]
    if problems:
        for plan in plans:
            if plan.problems:
                _print_plan(plan)
        return EXIT_INCOMPATIBLE
    verdicts = preview_plans(plans)
    if as_json:
        print_json({"dry_run": True, "check": findings,
                    "plans": [plan.as_dict() for plan in plans],
                    "verdicts": [{"guest": guest, "nic": nic, "do": step.describe(),
                                  "result": verdict}
                                 for guest, nic, step, verdict in verdicts]})
        return EXIT_OK
    out = console()
    changes = sum(verdict in ("create", "repair", "recreate") for *_, verdict in verdicts)
    out.print(f"[bold]dry run[/] of {len(plans)} guests on {plans[0].host}: {changes} "
              "change(s), nothing done")
    for n, (guest, nic, step, verdict) in enumerate(verdicts, 1):
        out.print(f"  {n}. [{guest} nic {nic}] {verdict:9} {step.describe()}", markup=False)
    return EXIT_OK


def _attached(nic: dict[str, object]) -> dict[str, object]:
    """A realized NIC with what attaches the guest to it: the libvirt <interface> and, for
    a device QEMU opens itself, its -netdev option (the integrations build both)."""
    from netmap.libvirt.attach import interface_xml
    from netmap.qemu.netdev import netdev_option

    qemu = netdev_option(nic)
    return {**nic, "libvirt_xml": interface_xml(nic), **({"qemu": qemu} if qemu else {})}


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
    _add_host(parser, many="every guest netmap's state on HOST names")
    add_json(parser)


def _release(args: argparse.Namespace) -> int:
    from netmap.netlink.apply import release_guests
    from netmap.state import HostState

    fleet, _graph = load(args)
    host = _target_host(args, fleet)
    names = _chosen(args, list(HostState.load(host.name).guests) if args.all else [],
                    "release")
    for name in names:
        _require_releasable(fleet, host, name)
    # the guest's file may be gone already: state, not the mappings, says what to remove
    results = release_guests(host.name, names, host.netns)
    if args.json:
        print_json(results[0].as_dict() if len(results) == 1 and not args.all else
                   {"host": host.name, "guests": [r.as_dict() for r in results]})
        return EXIT_OK
    out = console()
    if not results:
        out.print(f"netmap made nothing on {host.name}: nothing to release")
    for result in results:
        if not result.removed and not result.kept:
            out.print(f"netmap made nothing for {result.guest} on {host.name}: nothing to "
                      "release")
            continue
        out.print(f"released {result.guest} on {host.name}: removed "
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
