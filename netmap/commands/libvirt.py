"""import, libvirt-hook, libvirt-networks: netmap at libvirt's edges."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from netmap.commands._common import add_json, print_json
from netmap.errors import EXIT_INPUT, EXIT_OK, InputError

if TYPE_CHECKING:
    from netmap.libvirt.domain import DomainImport
    from netmap.model.fleet import Guest


def _configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", metavar="DOMAIN.xml",
                        help="a libvirt domain XML file ('virsh dumpxml GUEST'), - for stdin")
    parser.add_argument("--host", metavar="HOST",
                        help="the host the XML comes from, whose mapping explains bridge and "
                        "direct sources (default: the one host whose mapping explains them)")
    parser.add_argument("--write", action="store_true",
                        help="write the guest to guests/NAME.toml in the mappings directory")
    parser.add_argument("--force", action="store_true", help="with --write: overwrite")
    add_json(parser)


def _import(args: argparse.Namespace) -> int:
    import sys

    from netmap.libvirt.domain import import_domain
    from netmap.libvirt.xmlsafe import parse_untrusted, read_untrusted
    from netmap.load import load_fleet

    fleet = load_fleet(args.mappings)
    if args.domain == "-":
        doc = parse_untrusted(sys.stdin.buffer.read(), "<stdin>")
    else:
        doc = read_untrusted(Path(args.domain))
    result = import_domain(doc, fleet.networks, fleet.hosts, host=args.host)
    written = None
    blocking = [f for f in result.findings
                if f.severity == "error" or f.code == "INTERFACE_UNMAPPED"]
    if args.write and not blocking:
        written = _write_guest(Path(fleet.root), result, args.force)
    if args.json:
        print_json({**result.as_dict(), "written": str(written) if written else None})
    else:
        _print_import(result, written)
    if any(f.severity == "error" for f in result.findings):
        return EXIT_INPUT
    if args.write and blocking:
        raise InputError("not written: some interfaces could not be mapped (see above)",
                         file=doc.file, fix="add netmap metadata for them, then import again")
    return EXIT_OK


def _print_import(result: DomainImport, written: Path | None) -> None:
    guest = result.guest
    print(f"guest {guest.name} (source host: {result.source_host or 'unknown'})")
    for iface in result.interfaces:
        target = (f"NIC {iface.nic}: network {iface.network} ({iface.how})"
                  if iface.nic is not None else "not mapped")
        print(f"  {iface.label}: {target}")
    for finding in result.findings:
        print(f"{finding.severity}: [{finding.code}] {finding.message}\n  fix: {finding.hint}")
    if written:
        print(f"wrote {written}")


def guest_toml(guest: Guest, origin: str) -> str:
    lines = [f"# imported from {origin} by 'netmap import'", "[guest]",
             f'name = "{guest.name}"']
    if guest.host:
        lines.append(f'host = "{guest.host}"')
    for nic in guest.nics:
        lines += ["", "[[nics]]", f'network = "{nic.network}"', f'mac = "{nic.mac}"']
        if nic.model != "virtio":
            lines.append(f'model = "{nic.model}"')
        lines.append(f'vhost = "{nic.vhost}"')
        if nic.semantic:
            lines.append(f'semantic = "{nic.semantic}"')
        if nic.mtu:
            lines.append(f"mtu = {nic.mtu}")
        if nic.queues > 1:
            lines.append(f"queues = {nic.queues}")
    return "\n".join(lines) + "\n"


def _write_guest(root: Path, imported: DomainImport, force: bool) -> Path:
    """guests/NAME.toml, written whole or not at all, and never anywhere else: the name
    comes from an untrusted document, so it is checked before the file system is touched."""
    import os
    import tempfile

    from netmap.load.parse import load_guest, load_networks, name_problem

    guest, doc = imported.guest, imported.document
    problem = name_problem(guest.name)
    if problem:
        raise doc.error(doc.root.find("name"), f"the domain's name {problem}",
                        "import it under a plain name: change <name> (virsh domrename) or "
                        "write guests/NAME.toml by hand", key="domain.name")
    guests = root / "guests"
    target = guests / f"{guest.name}.toml"
    if target.resolve().parent != guests.resolve():
        raise InputError(f"{target} is a link that leads out of {guests}; refusing to "
                         "write through it", file=target, fix="remove the link")
    if (target.exists() or target.is_symlink()) and not force:
        raise InputError("already exists", file=target,
                         fix="pass --force to overwrite it, or remove it first")
    guests.mkdir(exist_ok=True)  # the mappings directory itself exists: it was loaded
    # a fresh name of our own (O_EXCL): a planted NAME.toml.tmp link cannot redirect it
    handle, temporary_name = tempfile.mkstemp(prefix=f".{guest.name}.", suffix=".tmp",
                                              dir=guests)
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(guest_toml(guest, doc.file))
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; the mappings are read by all
        # what we write must load again, or it is not written at all
        load_guest(temporary, load_networks(root / "networks.toml"))
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def _configure_hook(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guest", metavar="GUEST")
    parser.add_argument("operation", metavar="OPERATION")
    parser.add_argument("subop", metavar="SUBOP")
    parser.add_argument("extra", nargs="?", default="-", metavar="EXTRA")
    parser.add_argument("--host", metavar="HOST",
                        help="this host (default: $NETMAP_HOST, else the hostname)")


def _hook(args: argparse.Namespace) -> int:
    from netmap.libvirt.hook import run

    return run([args.guest, args.operation, args.subop, args.extra],
               mappings=args.mappings, host=args.host)


def _configure_networks(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", metavar="HOST",
                        help="the host (default: $NETMAP_HOST, else the hostname)")
    parser.add_argument("--out", metavar="DIR",
                        help="write one NAME.xml per network into DIR, for 'virsh net-define'")
    add_json(parser)


def _networks(args: argparse.Namespace) -> int:
    from netmap.commands._common import this_host
    from netmap.libvirt.networks import host_networks
    from netmap.load import load_fleet

    fleet = load_fleet(args.mappings)
    host = this_host(args, fleet)
    networks = host_networks(fleet, host)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for network in networks:
            (out / f"{network.name}.xml").write_text(network.xml)
    if args.json:
        print_json({"host": host.name, "networks": [n.as_dict() for n in networks]})
    elif not args.out:
        for network in networks:
            print(f"<!-- {host.name}: libvirt network {network.name} "
                  f"(virsh net-define FILE; virsh net-autostart {network.name}) -->")
            print(network.xml)
    else:
        for network in networks:
            print(f"wrote {Path(args.out) / (network.name + '.xml')}")
    return EXIT_OK


COMMANDS = {
    "import": (_configure_import, _import),
    "libvirt-hook": (_configure_hook, _hook),
    "libvirt-networks": (_configure_networks, _networks),
}
