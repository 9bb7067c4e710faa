"""discover and drift: what the live host has, and how it differs from its mapping."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from netmap.commands._common import add_json, console, load, print_json, this_host
from netmap.errors import EXIT_INCOMPATIBLE, EXIT_OK, InputError

if TYPE_CHECKING:
    from collections.abc import Collection

    from rich.console import RenderableType
    from rich.tree import Tree

    from netmap.model.fleet import Host
    from netmap.model.inventory import Interface, Inventory, OvsState
    from netmap.rules.drift import DriftReport


def _add_sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--netns", metavar="NS",
                        help="read this network namespace instead of the current one")
    parser.add_argument("--sysfs-root", metavar="DIR",
                        help="read SR-IOV and module facts under DIR instead of /sys "
                        "(default: $NETMAP_SYSFS or /sys)")
    parser.add_argument("--dev-root", metavar="DIR", default="/dev",
                        help="look for vhost-net and net/tun under DIR (default: /dev)")
    parser.add_argument("--ovsdb", metavar="REMOTE",
                        help="read Open vSwitch from this OVSDB (unix:PATH; default: the "
                        "host mapping's ovsdb, else $OVS_RUNDIR/db.sock or "
                        "/var/run/openvswitch/db.sock when that socket exists)")


def checked_netns(netns: str | None) -> str | None:
    """--netns as given, once it is a namespace name (as a mapping's netns must be)."""
    from netmap.model.netns_name import netns_problem

    problem = None if netns is None else netns_problem(netns)
    if problem:
        raise InputError(problem, key="--netns",
                         fix="name a namespace as 'ip netns list' shows it, e.g. "
                         "--netns nm-lab-host-a")
    return netns


def _read(args: argparse.Namespace, netns: str | None, hostname: str | None = None) -> Inventory:
    from netmap.netlink.discover import discover

    netns = checked_netns(netns)
    try:
        return discover(netns, sysfs_root=args.sysfs_root, dev_root=args.dev_root,
                        hostname=hostname, ovsdb=ovsdb_remote(args.ovsdb, None))
    except PermissionError as err:
        raise InputError(f"cannot read the links of {netns or 'this host'}: {err}",
                         fix="run as root (entering a network namespace needs "
                         "CAP_SYS_ADMIN)") from err


# --- discover ---------------------------------------------------------------------------------

def _configure_discover(parser: argparse.ArgumentParser) -> None:
    _add_sources(parser)
    parser.add_argument("--write", metavar="FILE",
                        help="write a draft host mapping (TOML) to FILE ('-': standard output)")
    parser.add_argument("--force", action="store_true", help="let --write replace FILE")
    parser.add_argument("--host", metavar="NAME",
                        help="the host name the draft gets (default: the machine's hostname)")
    add_json(parser)


def _discover(args: argparse.Namespace) -> int:
    inventory = _read(args, args.netns, args.host)
    if args.write:
        _write_draft(args, inventory)
        if args.write == "-":
            return EXIT_OK
    if args.json:
        print_json(inventory.as_dict())
    else:
        console().print(inventory_tree(inventory))
    return EXIT_OK


def _fleet_networks(args: argparse.Namespace) -> dict:
    """The fleet's networks, if a mappings directory is at hand: they turn existing bridges
    into bindings. A draft is still useful without them."""
    from netmap.load import mappings_dir
    from netmap.load.parse import load_networks

    try:
        return load_networks(mappings_dir(args.mappings) / "networks.toml")
    except InputError:
        if args.mappings:
            raise
        return {}


def _write_draft(args: argparse.Namespace, inventory: Inventory) -> None:
    from netmap.rules.draft import draft_host

    text = draft_host(inventory, host_name=args.host, networks=_fleet_networks(args))
    if args.write == "-":
        sys.stdout.write(text)
        return
    path = Path(args.write)
    if path.exists() and not args.force:
        raise InputError(f"{path} exists; the draft would replace it",
                         fix="pass --force, or write to another file and compare")
    try:
        if not path.parent.is_dir():  # README's `--write hosts/NAME.toml` in a new directory
            path.parent.mkdir(parents=True)
            print(f"created directory {path.parent} for the draft", file=sys.stderr)
        path.write_text(text)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}",
                         fix="choose a writable path") from err
    print(f"draft mapping written to {path}; review the lines marked DECIDE", file=sys.stderr)


def _link_text(link: Interface) -> RenderableType:
    from rich.text import Text

    text = Text(link.name, style="dim" if link.kind == "loopback" else "bold")
    text.append(f"  {link.kind}")
    if link.mode:
        text.append(f" {link.mode}")
    if link.vlan_id is not None:
        text.append(f" VLAN {link.vlan_id}")
    if link.vni is not None:
        text.append(f" VNI {link.vni}")
        if link.vxlan_group:
            text.append(f" group {link.vxlan_group}")
        if link.vxlan_port and link.vxlan_port != 4789:
            text.append(f" port {link.vxlan_port}")
    if link.lower:
        text.append(f" on {link.lower}")
    text.append(f"  MTU {link.mtu}")
    if link.hardware_mac:
        text.append(f"  {link.hardware_mac}", style="dim")
    if link.running:
        text.append("  up", style="green")
    else:
        state = "admin down" if not link.admin_up else f"{link.oper_state}, no carrier"
        text.append(f"  {state}", style="red" if link.kind != "loopback" else "dim")
    if link.addresses:
        text.append(f"  {' '.join(link.addresses)}", style="cyan")
    if link.altnames:
        text.append(f"  altnames {', '.join(link.altnames)}", style="dim")
    if link.parent:
        text.append(f"  {link.parent}", style="dim")
    return text


def inventory_tree(inventory: Inventory) -> RenderableType:
    """Links as a tree: ports under their bridge or bond, macvtaps and vxlans under their
    lower device; SR-IOV pools and features below."""
    from rich.text import Text
    from rich.tree import Tree

    title = Text(inventory.hostname, style="bold cyan")
    if inventory.netns:
        title.append(f"  netns {inventory.netns}", style="dim")
    title.append(f"  {len(inventory.interfaces)} link(s)", style="dim")
    title.append(f"  [{', '.join(sorted(inventory.features)) or 'no features'}]", style="dim")
    root = Tree(title)
    names = {link.name for link in inventory.interfaces}
    children: dict[str, list[Interface]] = {}
    tops = []
    for link in inventory.interfaces:
        parent = link.master if link.master in names else (
            link.lower if link.lower in names else None)
        if parent is None:
            tops.append(link)
        else:
            children.setdefault(parent, []).append(link)
    shown: set[str] = set()

    def add(branch: Tree, link: Interface) -> None:
        if link.name in shown:
            return
        shown.add(link.name)
        node = branch.add(_link_text(link))
        for child in children.get(link.name, ()):
            add(node, child)

    for link in tops:
        add(root, link)
    for link in inventory.interfaces:  # whatever a loop of relations hid
        add(root, link)
    if inventory.sriov:
        pools = root.add(Text("SR-IOV", style="bold"))
        for pool in inventory.sriov.values():
            line = Text(f"{pool.name}: {pool.num_vfs} of {pool.total_vfs} VF(s) configured, "
                        f"{pool.used_vfs} used, ")
            line.append(f"{pool.free_vfs} free", style="green" if pool.free_vfs else "red")
            node = pools.add(line)
            for vf in pool.vfs:
                node.add(Text(f"VF {vf.index} {vf.pci} {vf.netdev or '(no netdev)'}"
                              + (f"  used: {vf.used_by}" if vf.used_by else "  free"),
                              style="dim" if not vf.used_by else ""))
    if inventory.ovs is not None:
        _add_ovs(root, inventory.ovs)
    return root


def _add_ovs(root: Tree, ovs: OvsState) -> None:
    from rich.text import Text

    node = root.add(Text(f"Open vSwitch ({ovs.remote})", style="bold"))
    if ovs.error:
        node.add(Text(ovs.error, style="red"))
        return
    if not ovs.vswitchd_running:
        node.add(Text("ovs-vswitchd is not running", style="red"))
    for bridge, datapath in ovs.bridges.items():
        branch = node.add(f"{bridge} (datapath {datapath})")
        for port in ovs.ports:
            if port.bridge == bridge:
                how = f"tag {port.tag}" if port.tag is not None else (
                    f"trunks {list(port.trunks)}" if port.trunks else "trunk")
                branch.add(f"{port.name}  {how}")


# --- drift ------------------------------------------------------------------------------------

def _configure_drift(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", nargs="?", metavar="HOST",
                        help="the host's mapping to compare (default: $NETMAP_HOST, else the "
                        "hostname)")
    parser.add_argument("--host", dest="host_option", metavar="HOST",
                        help="the same as HOST, as realize and release spell it")
    _add_sources(parser)
    parser.add_argument("--state-dir", metavar="DIR",
                        help="netmap's state (default: $NETMAP_STATE_DIR or /run/netmap)")
    add_json(parser)


def ovsdb_remote(given: str | None, host: Host | None) -> str | None:
    """The OVSDB to read: --ovsdb, else the host's ovs bindings' (they must be read, and
    drift says so when it cannot be), else the default socket if Open vSwitch runs here."""
    from netmap.plan import default_ovsdb

    if given:
        return given
    if host is None:  # discover: no mapping (and no mode registry) is loaded for it
        remote = default_ovsdb()
        return remote if Path(remote.removeprefix("unix:")).is_socket() else None
    from netmap.modes import mode_of

    # the bindings that live in OVSDB (their mode keeps the host's remote on them)
    ovs = [b for b in host.bindings.values() if "ovsdb" in mode_of(b).owns_fields]
    return (ovs[0].ovsdb or default_ovsdb()) if ovs else None


def live_drift(host: Host, networks: dict, *, netns: str | None = None,
               state_dir: str | None = None, sysfs_root: str | None = None,
               dev_root: str = "/dev", ovsdb: str | None = None,
               verify_features: Collection[str] | None = None,
               guests: dict | None = None) -> DriftReport:
    """Discover this host (or `netns`, else the mapping's netns) and compare it with `host`'s
    mapping and netmap's state: what `netmap drift` prints, for `check --live` to fold in
    (`verify_features`: drift.drift_report's)."""
    from netmap.netlink.discover import discover
    from netmap.rules.drift import drift_report
    from netmap.state import HostState

    where = netns or host.netns
    try:
        inventory = discover(where, sysfs_root=sysfs_root, dev_root=dev_root,
                             hostname=host.name, ovsdb=ovsdb_remote(ovsdb, host))
    except PermissionError as err:
        raise InputError(f"cannot read the links of {where or 'this host'}: {err}",
                         fix="run as root (entering a network namespace needs "
                         "CAP_SYS_ADMIN)") from err
    state = HostState.load(host.name, state_dir)
    return drift_report(host, inventory, state, networks=networks,
                        verify_features=verify_features, guests=guests)


def _drift(args: argparse.Namespace) -> int:
    from netmap.load import require_host

    fleet, _graph = load(args)
    if args.host or args.host_option:
        host = require_host(fleet, args.host or args.host_option)
    else:
        host = this_host(args, fleet)
    report = live_drift(host, fleet.networks, netns=checked_netns(args.netns),
                        state_dir=args.state_dir,
                        sysfs_root=args.sysfs_root, dev_root=args.dev_root,
                        ovsdb=args.ovsdb, guests=fleet.guests)
    here = socket.gethostname()
    if report.netns is None and host.name != here and not os.environ.get("NETMAP_HOST"):
        from netmap.rules.check import INFO, Finding

        note = Finding("HOST_NOT_HERE", INFO, None,
                       f"compared {host.name}'s mapping with this machine ({here}), which "
                       f"is not named {host.name}.",
                       f"run 'netmap drift {host.name}' on {host.name} itself")
        report = replace(report, findings=(note, *report.findings))
    if args.json:
        print_json(report.as_dict())
    else:
        console().print(drift_view(report))
    return EXIT_INCOMPATIBLE if report.drifted else EXIT_OK


def drift_view(report: DriftReport) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from netmap.render import findings_list

    where = f"  netns {report.netns}" if report.netns else ""
    title = Text(f"drift of {report.host}", style="bold cyan")
    title.append(where, style="dim")
    table = Table()
    table.add_column("declared uplink")
    table.add_column("live")
    for declared, live in report.uplinks.items():
        cell = Text(live or "missing", style="red" if live is None else
                    ("yellow" if live != declared else "green"))
        table.add_row(declared, cell)
    if report.drifted:
        verdict = Text(f"drift: {sum(f.severity == 'error' for f in report.findings)} error(s), "
                       f"{sum(f.severity == 'warning' for f in report.findings)} warning(s)",
                       style="bold red")
    else:
        verdict = Text(f"no drift: {report.host} is as its mapping says", style="bold green")
    return Group(title, table, findings_list(report.findings), verdict)


COMMANDS = {
    "discover": (_configure_discover, _discover),
    "drift": (_configure_drift, _drift),
}
