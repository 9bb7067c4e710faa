"""netmap-libvirt-hook: libvirt's qemu hook (/etc/libvirt/hooks/qemu or a script in
/etc/libvirt/hooks/qemu.d/, libvirt >= 6.5), called as `GUEST OPERATION SUBOP EXTRA`.

On the destination of a migration libvirt runs `GUEST migrate begin -` with the full domain
XML on stdin and uses stdout as the XML to start the guest with; a non-zero exit cancels the
migration and libvirt logs stderr. Here netmap runs the pre-migration check for this host
and, when it passes, rewrites only host-side sources (macvtap lower device and mode, bridge
name, libvirt network and portgroup) in place: every other byte of the document stays as it
was, so libvirt's ABI check (MAC, model, PCI address, queues) sees the same guest.

Every other operation returns at once without reading stdin or importing anything heavy
(networkx, rich, pyroute2): libvirt runs hooks synchronously for every guest start and stop.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the checker only: the pass-through path must not import them
    from netmap.libvirt.rewrite import Rewrite
    from netmap.libvirt.xmlsafe import XmlDocument
    from netmap.rules.check import Finding

# (operation, sub-operation) whose stdout libvirt reads as the domain XML
_XML_FILTERS = {("migrate", "begin"), ("restore", "begin")}
_MAX_INPUT = 8 * 1024 * 1024  # xmlsafe.MAX_BYTES, not imported: pass-through stays light


class HookResult:
    """Exit code, the XML for stdout, lines for stderr. A plain class: importing
    dataclasses (and with it inspect) would cost the pass-through path milliseconds."""

    __slots__ = ("exit_code", "messages", "output")

    def __init__(self, exit_code: int, output: bytes = b"",
                 messages: list[str] | None = None) -> None:
        self.exit_code = exit_code
        self.output = output
        self.messages = messages or []


USAGE = ("usage: netmap-libvirt-hook GUEST OPERATION SUBOP [EXTRA]\n"
         "  libvirt's qemu hook: libvirt runs it, with the domain XML on stdin for\n"
         "  'GUEST migrate begin -'; install it through a wrapper such as\n"
         "  /etc/libvirt/hooks/qemu.d/50-netmap (README: libvirt integration).\n"
         "  Configured by $NETMAP_MAPPINGS, $NETMAP_HOST and $NETMAP_STRICT.")


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: libvirt's calling convention, configured by the environment
    ($NETMAP_MAPPINGS, $NETMAP_HOST, $NETMAP_STRICT)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):  # libvirt never passes an option first
        print(USAGE)
        return 0
    return run(args)


def run(args: list[str], *, mappings: str | None = None, host: str | None = None) -> int:
    if len(args) < 3:
        print(f"netmap-libvirt-hook: {USAGE}", file=sys.stderr)
        return 2
    guest, operation, subop = args[0], args[1], args[2]
    if (operation, subop) not in _XML_FILTERS:
        return 0  # nothing to filter: do not even read stdin (libvirt ignores EPIPE)
    data = sys.stdin.buffer.read(_MAX_INPUT + 1)
    if len(data) > _MAX_INPUT:
        # only part of it was read: handing that on would make libvirt start a cut document
        print(f"netmap: refusing to {operation} {guest}: its domain XML is larger than "
              f"{_MAX_INPUT // (1024 * 1024)} MiB, more than netmap reads, and a cut "
              "document must not reach libvirt\n  fix: keep the domain XML under "
              f"{_MAX_INPUT // (1024 * 1024)} MiB (a domain is usually well under 100 KB: "
              "look for a huge <description> or <metadata>)", file=sys.stderr)
        return 2
    if operation != "migrate":
        sys.stdout.buffer.write(data)  # restore: pass the (maybe chained) XML on as it is
        return 0
    result = migrate_begin(guest, data, mappings=mappings, host=host)
    for message in result.messages:
        print(message, file=sys.stderr)
    sys.stdout.buffer.write(result.output)
    sys.stdout.flush()
    return result.exit_code


def migrate_begin(guest: str, data: bytes, *, mappings: str | None = None,
                  host: str | None = None, strict: bool | None = None) -> HookResult:
    """Check and rewrite one incoming domain. Never raises: every problem refuses."""
    from netmap.errors import EXIT_BUG, NetmapError

    try:
        return _migrate_begin(guest, data, mappings, host, strict)
    except NetmapError as err:
        return HookResult(err.exit_code, b"",
                          [f"netmap: refusing to migrate {guest} here: {err}"])
    except Exception as err:  # a bug must cancel the migration, not break the guest
        return HookResult(EXIT_BUG, b"", [
            f"netmap: refusing to migrate {guest} here: internal error "
            f"{type(err).__name__}: {err}; this is a bug in netmap, please report it"])


def _migrate_begin(guest_arg: str, data: bytes, mappings: str | None, host_name: str | None,
                   strict: bool | None) -> HookResult:
    import dataclasses
    import socket

    from netmap.libvirt.domain import import_domain
    from netmap.libvirt.rewrite import plan_rewrites
    from netmap.libvirt.xmlsafe import parse_untrusted
    from netmap.load import load_fleet, require_host
    from netmap.query.graph import build_graph
    from netmap.rules.check import ERROR, WARNING, check_migration

    doc = parse_untrusted(data, f"domain XML of {guest_arg} (stdin)")
    fleet = load_fleet(mappings)
    this = require_host(fleet, host_name or os.environ.get("NETMAP_HOST")
                        or socket.gethostname())
    known = fleet.guests.get(guest_arg)
    imported = import_domain(doc, fleet.networks, fleet.hosts, avoid_host=this.name,
                             prefer_host=known.host if known else None)
    guest = imported.guest
    # netmap's guest: in the mappings, carrying netmap's metadata, or with an interface a
    # host mapping explains (direct on eth0.100 is prod on host-a). Passing the last kind on
    # unchanged would start it on whatever eth0.100 means here, maybe another segment.
    managed = (known is not None or imported.has_metadata
               or any(iface.network is not None for iface in imported.interfaces))
    if not managed:
        return HookResult(0, data, [])  # nothing here names a host network netmap knows
    messages: list[str] = []
    refusing = [f for f in imported.findings
                if f.severity == ERROR or f.code == "INTERFACE_UNMAPPED"]
    for finding in imported.findings:
        if finding not in refusing and finding.severity == WARNING:
            messages.append(f"netmap: warning: {finding.message}")
    if known is not None:
        declared = {nic.mac: nic.network for nic in known.nics}
        running = {nic.mac: nic.network for nic in guest.nics}
        if declared != running:
            # the running domain is what migrates; the guest file is only what was planned
            messages.append(f"netmap: warning: the domain's NICs {_nics(running)} differ "
                            f"from {known.source or 'the guest file'} {_nics(declared)}; "
                            "checked the domain's")
    if refusing:
        return _refuse(guest.name, this.name, refusing, messages, 2)
    source = imported.source_host
    guests = {**fleet.guests, guest.name: dataclasses.replace(guest, host=source)}
    graph = build_graph(dataclasses.replace(fleet, guests=guests))
    if strict is None:
        strict = os.environ.get("NETMAP_STRICT", "") not in ("", "0", "no")
    report = check_migration(graph, guest.name, this.name, source=source, strict=strict)
    if not report.compatible:
        return _refuse(guest.name, this.name, report.errors, messages, 1)
    messages += [f"netmap: warning: {f.message}" for f in report.warnings]
    rewrites, problems = plan_rewrites(imported, fleet, source, this)
    if problems:
        return _refuse(guest.name, this.name, problems, messages, 1)
    return HookResult(0, apply_rewrites(doc, rewrites), messages)


def _nics(nics: dict[str, str]) -> str:
    return "(" + ", ".join(f"{mac} on {net}" for mac, net in sorted(nics.items())) + ")"


def _refuse(guest: str, host: str, findings: Iterable[Finding], messages: list[str],
            code: int) -> HookResult:
    lines = [f"netmap: refusing to migrate {guest} to {host}:"]
    for finding in findings:
        lines.append(f"  [{finding.code}] {finding.message}")
        lines.append(f"      fix: {finding.hint}")
    return HookResult(code, b"", messages + lines)


def apply_rewrites(doc: XmlDocument, rewrites: Iterable[Rewrite]) -> bytes:
    """Splice the new values into the original bytes, last first so offsets stay valid."""
    data = doc.data
    for start, end, new in sorted(rewrites, key=lambda r: r[0], reverse=True):
        data = data[:start] + new + data[end:]
    return data
