"""show, check, hosts-for, diff: questions about the fleet as the mappings describe it."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from netmap.commands._common import add_json, console, print_json
from netmap.errors import EXIT_INCOMPATIBLE, EXIT_INPUT, EXIT_OK, InputError

if TYPE_CHECKING:
    from netmap.model.fleet import Fleet, Guest, Host
    from netmap.rules.check import Finding


def _configure_show(parser: argparse.ArgumentParser) -> None:
    from netmap.commands.locate import add_locate

    parser.add_argument("hosts", nargs="*", metavar="HOST", help="hosts to show (default: all)")
    add_locate(parser)
    add_json(parser)


def _show(args: argparse.Namespace) -> int:
    from netmap.load import load_fleet, require_host
    from netmap.query import views

    fleet = load_fleet(args.mappings)
    where: dict[str, object] | None = None
    if args.locate:
        from netmap.commands.locate import located, located_json

        fleet, locations, answers = located(fleet)
        where = located_json(locations, answers)
    # a large fleet's other hosts are not read
    hosts = [require_host(fleet, name).name for name in args.hosts] or list(fleet.hosts)
    data = views.show_data(fleet, hosts)
    if where is not None:
        data["located"] = where
    if args.json:
        print_json(data)
    else:
        from netmap import render

        console().print(render.show_tree(data))
    # A broken file is bad input even though the rest of the fleet is shown.
    return EXIT_INPUT if fleet.problems else EXIT_OK


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guest", metavar="GUEST")
    parser.add_argument("--to", required=True, metavar="HOST", help="the destination host")
    parser.add_argument("--from", dest="source", metavar="HOST",
                        help="the source host (default: where the guest file says it runs)")
    parser.add_argument("--strict", action="store_true",
                        help="a change of forwarding semantic is an error, not a warning")
    parser.add_argument("--live", action="store_true",
                        help="also compare the destination's mapping with the live host "
                        "(run on the destination, or on a lab host's namespace)")
    parser.add_argument("--locate", action="store_true",
                        help="ask libvirt (the hosts' libvirt_uri) where the guest runs and "
                        "check from there, not from its file's `host` (refused when libvirt "
                        "cannot say: pass --from)")
    add_json(parser)


def live_findings(fleet: Fleet, guest: Guest, dest: Host) -> tuple[Finding, ...]:
    """Drift of the destination, limited to what this guest would use there: the bindings
    of its networks, their uplinks, and the host's features."""
    import dataclasses
    import os
    import socket

    from netmap.commands.discover import live_drift
    from netmap.errors import InputError

    here = os.environ.get("NETMAP_HOST") or socket.gethostname()
    if dest.netns is None and dest.name != here:
        raise InputError(f"--live reads the live host, but this machine is {here!r}, not "
                         f"{dest.name!r}", fix=f"run the check on {dest.name}, or drop --live")
    bindings = {n.network: dest.bindings[n.network] for n in guest.nics
                if n.network in dest.bindings}
    uplinks = {b.uplink: dest.uplinks[b.uplink] for b in bindings.values()}
    from netmap.modes import mode_of

    # a live drift finding is an error, so vhost-net counts only where a NIC requires it
    needed = {f for b in bindings.values() for f in mode_of(b).kernel_features}
    if any(nic.vhost == "required" for nic in guest.nics):
        needed.add("vhost-net")
    # the features stay the mapping's: a scoped copy made every other declared feature
    # "offered but not listed" (FEATURE_UNDECLARED for features the mapping lists)
    scope = dataclasses.replace(dest, bindings=bindings, uplinks=uplinks)
    report = live_drift(scope, fleet.networks, verify_features=needed)
    # other guests' endpoints are drift of the host, not a reason to refuse this guest
    return tuple(f for f in report.findings
                 if not f.code.startswith("ENDPOINT_") and f.code != "HOST_NOT_HERE")


def _check(args: argparse.Namespace) -> int:
    from netmap.load import load_fleet, require_guest, require_host

    fleet = load_fleet(args.mappings)
    from netmap.query.graph import build_graph_of
    from netmap.rules.check import check_migration

    guest = require_guest(fleet, args.guest)
    dest = require_host(fleet, args.to)
    source = require_host(fleet, args.source).name if args.source else None
    where: dict[str, object] | None = None
    if args.locate:
        fleet, where = _located_source(fleet, guest.name, source)
        guest = fleet.guests[guest.name]
    origin = source or guest.host  # None: a guest placed nowhere yet
    hosts = {dest.name} if origin is None else {dest.name, origin}
    graph = build_graph_of(fleet, hosts, guest.name)
    report = check_migration(graph, guest.name, dest.name, source=source, strict=args.strict)
    if args.live:
        import dataclasses

        live = live_findings(fleet, guest, dest)
        report = dataclasses.replace(report, findings=report.findings + live)
    if args.json:
        data = report.as_dict()
        if where is not None:
            data["located"] = where
        print_json(data)
    else:
        from netmap import render

        console().print(render.check_view(report))
    return EXIT_OK if report.compatible else EXIT_INCOMPATIBLE


def _located_source(fleet: Fleet, guest: str, source: str | None
                    ) -> tuple[Fleet, dict[str, object]]:
    """check --locate: the fleet with the guest where libvirt runs it. Without --from, a
    guest libvirt cannot place on exactly one host is refused, not checked from a guess."""
    from netmap.commands.locate import located, located_json
    from netmap.query.locate import AGREES, MOVED

    fleet, (location,), answers = located(fleet, [guest])
    if source is None and location.status not in (AGREES, MOVED):
        why = {"several": f"runs on {', '.join(location.running_on)}",
               "not-running": "runs on no host",
               "unknown": "was not seen, and "
               f"{', '.join(location.unasked)} did not answer"}[location.status]
        raise InputError(f"libvirt cannot say where {guest} runs: it {why}",
                         key="--locate", fix="pass --from HOST to name the source")
    return fleet, located_json([location], answers)


def _configure_hosts_for(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guest", metavar="GUEST")
    parser.add_argument("--strict", action="store_true",
                        help="a change of forwarding semantic rules a host out, instead of "
                        "being a warning")
    add_json(parser)


def _hosts_for(args: argparse.Namespace) -> int:
    from netmap.support.gcpause import gc_paused

    # Everything this command builds lives until it returns: a collection would only walk
    # it in vain.
    with gc_paused():
        return _hosts_for_answer(args)


def _hosts_for_answer(args: argparse.Namespace) -> int:
    from netmap.load import load_fleet, require_guest

    fleet = load_fleet(args.mappings)
    from netmap.query.placement import hosts_for_fleet

    guest = require_guest(fleet, args.guest)
    candidates = hosts_for_fleet(fleet, guest.name, strict=args.strict, parallel=True)
    # a host whose file is broken is not a candidate, but must not vanish without a word
    unreadable = unreadable_hosts(fleet)
    if args.json:
        print_json({"guest": guest.name, "source": guest.host,
                    "hosts": [c.as_dict() for c in candidates],
                    "unreadable": [p.as_dict() for p in unreadable]}, large=True)
    else:
        from netmap import render

        out = console()
        out.print(render.hosts_for_view(guest.name, candidates))
        if unreadable:
            out.print(render.unreadable_view(unreadable))
    return EXIT_OK if any(c.compatible for c in candidates) else EXIT_INCOMPATIBLE


def unreadable_hosts(fleet: Fleet) -> list[InputError]:
    """The problems of files in the hosts folder: hosts that no answer considers."""
    hosts_dir = os.path.join(fleet.root, "hosts")
    return [p for p in fleet.problems
            if isinstance(p, InputError) and p.file and os.path.dirname(p.file) == hosts_dir]


def _configure_diff(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host_a", metavar="HOST_A")
    parser.add_argument("host_b", metavar="HOST_B")
    add_json(parser)


def _diff(args: argparse.Namespace) -> int:
    from netmap.load import load_fleet, require_host
    from netmap.query import views

    fleet = load_fleet(args.mappings)
    a, b = require_host(fleet, args.host_a), require_host(fleet, args.host_b)
    rows = views.diff_rows(fleet, a, b)
    if args.json:
        print_json({"hosts": [a.name, b.name], "networks": rows})
    else:
        from netmap import render

        console().print(render.diff_view(a.name, b.name, rows))
    return EXIT_OK


COMMANDS = {
    "show": (_configure_show, _show),
    "check": (_configure_check, _check),
    "hosts-for": (_configure_hosts_for, _hosts_for),
    "diff": (_configure_diff, _diff),
}
