"""rich views of the fleet: trees and tables. Data in, renderables out; no decisions here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import networkx as nx
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from netmap.errors import InputError
from netmap.model.fleet import Fleet, Host, Vxlan
from netmap.modes import mode_of, semantic_of
from netmap.query import graph as g
from netmap.query.placement import Candidate
from netmap.rules.check import ERROR, INFO, WARNING, Finding, Report

STYLE = {ERROR: "bold red", WARNING: "yellow", INFO: "cyan"}
MARK = {ERROR: "✗", WARNING: "!", INFO: "i"}
DIFFERS = "≠"  # diff's marker column: the difference stays visible without colour


class Hanging:
    """`lead`, then `body` wrapped to the width that is left, its further lines indented
    by the lead's width. No line ends in a space (rich pads a wrapped Text to the width),
    and a word longer than a line is folded, never cut."""

    def __init__(self, lead: Text, body: Text) -> None:
        self.lead = lead
        self.body = body

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        indent = self.lead.cell_len
        lines = self.body.wrap(console, max(options.max_width - indent, 8),
                               justify="default", overflow="fold")
        for number, line in enumerate(lines):
            line.rstrip()
            head = self.lead if number == 0 else Text(" " * indent)
            yield from Text.assemble(head, line).render(console)
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = self.lead.cell_len + max((len(line) for line in self.body.plain.split("\n")),
                                          default=0)
        return Measurement(min(self.lead.cell_len + 8, options.max_width),
                           min(widest, options.max_width))


def _vlan(vlan: int | None) -> str:
    return "untagged" if vlan is None else f"VLAN {vlan}"


# --- show -----------------------------------------------------------------------------------

def mac_clashes(fleet: Fleet) -> dict[tuple[str, int], list[str]]:
    """(guest, NIC) -> other guests using its MAC on the same L2 domain or the same host."""
    by_mac: dict[str, list[tuple[str, int]]] = {}
    for guest in fleet.guests.values():
        for nic in guest.nics:
            by_mac.setdefault(nic.mac, []).append((guest.name, nic.index))
    clashes: dict[tuple[str, int], list[str]] = {}
    for owners in by_mac.values():
        for name, index in owners:
            guest = fleet.guests[name]
            net = fleet.networks[guest.nics[index].network]
            for other_name, other_index in owners:
                if other_name == name:
                    continue
                other = fleet.guests[other_name]
                other_net = fleet.networks[other.nics[other_index].network]
                same_l2 = (net.segment_id, net.vlan) == (other_net.segment_id, other_net.vlan)
                if same_l2 or (guest.host and guest.host == other.host):
                    clashes.setdefault((name, index), []).append(other_name)
    return clashes


def show_data(fleet: Fleet, graph: nx.DiGraph, hosts: Iterable[str]) -> dict[str, object]:
    clashes = mac_clashes(fleet)
    out = []
    for name in hosts:
        host = fleet.hosts[name]
        guests = g.guests_on(graph, name)
        vfs = g.vf_usage(graph, name)
        uplinks = []
        for uplink in host.uplinks.values():
            networks = []
            for binding in host.bindings.values():
                if binding.uplink != uplink.name:
                    continue
                network = fleet.networks[binding.network]
                view_mtu, _ = g.effective_mtu(network, binding, host)
                networks.append({
                    "network": network.name, "mode": binding.mode, "semantic": semantic_of(binding),
                    "segment": network.segment_id,
                    "reaches_segment": network.is_overlay
                    or g.reaches(graph, name, uplink.name, network.segment_id),
                    "vlan": binding.vlan if binding.vlan is not None else network.vlan,
                    "mtu": view_mtu,
                    "guests": [
                        {"guest": guest.name, "nic": nic.index, "mac": nic.mac,
                         "mac_clash": clashes.get((guest.name, nic.index), [])}
                        for guest in guests for nic in guest.nics if nic.network == network.name
                    ],
                })
            uplinks.append({
                "uplink": uplink.name, "segments": list(uplink.segments), "mtu": uplink.mtu,
                "sriov": {"total_vfs": uplink.sriov.total_vfs, "used_vfs": vfs[uplink.name]}
                if uplink.sriov else None,
                "networks": networks,
            })
        out.append({"host": name, "features": sorted(host.features), "netns": host.netns,
                    "guests": [guest.name for guest in guests], "uplinks": uplinks,
                    "unbound": sorted(set(fleet.networks) - set(host.bindings))})
    return {"mappings": fleet.root, "hosts": out,
            "problems": [p.as_dict() for p in fleet.problems]}


def show_tree(data: dict) -> RenderableType:
    root = Tree(Text(f"fleet ({data['mappings']})", style="bold"))
    for host in data["hosts"]:
        label = Text(host["host"], style="bold cyan")
        label.append(f"  {len(host['guests'])} guest(s)", style="dim")
        if host["features"]:
            label.append(f"  [{', '.join(host['features'])}]", style="dim")
        branch = root.add(label)
        for uplink in host["uplinks"]:
            text = Text(uplink["uplink"], style="bold")
            text.append(f"  → {', '.join(uplink['segments']) or 'no segment'}  MTU {uplink['mtu']}")
            if uplink["sriov"]:
                pool = uplink["sriov"]
                full = pool["used_vfs"] >= pool["total_vfs"]
                text.append(f"  VFs {pool['used_vfs']}/{pool['total_vfs']}",
                            style="red" if full else "green")
            node = branch.add(text)
            for net in uplink["networks"]:
                line = Text(net["network"], style="magenta")
                where = net["segment"] if net["segment"].startswith("vni:") else _vlan(net["vlan"])
                line.append(f"  {net['mode']}  {where}  MTU {net['mtu']}")
                if not net["reaches_segment"]:
                    line.append(f"  ✗ uplink does not reach {net['segment']}", style=STYLE[ERROR])
                leaf = node.add(line)
                for guest in net["guests"]:
                    gl = Text(f"{guest['guest']} nic{guest['nic']} {guest['mac']}")
                    if guest["mac_clash"]:
                        gl.append(f"  ✗ MAC also used by {', '.join(guest['mac_clash'])}",
                                  style=STYLE[ERROR])
                    leaf.add(gl)
        if host["unbound"]:
            branch.add(Text(f"not bound here: {', '.join(host['unbound'])}", style="dim"))
    if data["problems"]:
        bad = root.add(Text("unreadable files", style=STYLE[ERROR]))
        for problem in data["problems"]:
            where = problem["file"] + (f":{problem['line']}" if problem.get("line") else "")
            if problem.get("key"):
                where += f": {problem['key']}"
            bad.add(Text(f"{where}: {problem['problem']}", style=STYLE[ERROR]))
    return root


# --- check ----------------------------------------------------------------------------------

def path_text(view: g.NicView | None) -> Text:
    if view is None:
        return Text("(not placed)", style="dim")
    if not view.bound:
        return Text(f"{view.network} → not bound on {view.host}", style=STYLE[ERROR])
    text = Text(f"{view.network} → {view.mode} → ")
    text.append(view.uplink or "?", style="bold")
    segment = Text(f" → {view.segment}", style="" if view.reaches_segment else STYLE[ERROR])
    text.append_text(segment)
    text.append(f" / {_vlan(view.vlan)} / MTU {view.mtu}")
    return text


def finding_view(finding: Finding) -> RenderableType:
    """`✗ CODE message` and `fix: hint` below it, each wrapped under its own start."""
    style = STYLE[finding.severity]
    body = Text(finding.code, style=style)
    body.append(f" {finding.message}")
    return Group(Hanging(Text(f"{MARK[finding.severity]} ", style=style), body),
                 Hanging(Text("    fix: ", style="dim"), Text(finding.hint, style="dim")))


def unreadable_view(problems: Sequence[InputError]) -> RenderableType:
    """Files no answer considered: each problem under a mark, its fix below, both wrapped
    under their own start as findings are."""
    head = Text(f"not considered: {len(problems)} host file(s) cannot be read",
                style=STYLE[ERROR])
    parts: list[RenderableType] = [head]
    for problem in problems:
        where = f"{problem.where}: " if problem.where else ""
        parts.append(Hanging(Text(f"{MARK[ERROR]} ", style=STYLE[ERROR]),
                             Text(f"{where}{problem.problem}")))
        if problem.fix:
            parts.append(Hanging(Text("    fix: ", style="dim"), Text(problem.fix, style="dim")))
    return Group(*parts)


def findings_list(findings: Iterable[Finding]) -> RenderableType:
    return Group(*(finding_view(finding) for finding in findings))


def check_view(report: Report) -> RenderableType:
    table = Table(title=f"{report.guest}: {report.source or '(nowhere)'} → {report.dest}",
                  title_justify="default", expand=False)
    table.add_column("NIC", justify="right")
    table.add_column(f"source {report.source or ''}".strip())
    table.add_column(f"destination {report.dest}")
    for before, after in report.pairs:
        table.add_row(str(after.nic), path_text(before), path_text(after))
    verdict = Text()
    if report.compatible:
        extra = f" with {len(report.warnings)} warning(s)" if report.warnings else ""
        verdict.append(f"compatible{extra}: {report.dest} realizes the same topology",
                       style="bold green" if not report.warnings else "bold yellow")
    else:
        verdict.append(f"NOT compatible: {len(report.errors)} error(s)", style="bold red")
    return Group(table, findings_list(report.findings), verdict)


# --- hosts-for ------------------------------------------------------------------------------

# Beyond this many hosts that cannot take the guest, the table gives one row per reason
# (the same blocking code on the same NIC) instead of one per host; --json lists them all.
REFUSALS_LISTED = 20


def hosts_for_view(guest: str, candidates: list[Candidate]) -> RenderableType:
    table = Table(title=f"hosts for {guest}", title_justify="default")
    table.add_column("host")
    table.add_column("verdict")
    table.add_column("guests", justify="right")
    table.add_column("why")
    refused = [cand for cand in candidates if not cand.compatible]
    for cand in candidates:
        if cand.compatible:
            verdict = Text("ok" if not cand.warnings else f"ok, {cand.warnings} warning(s)",
                           style="green" if not cand.warnings else "yellow")
            why = "; ".join(f.code for f in cand.report.warnings) if cand.report else ""
            table.add_row(cand.host, verdict, str(cand.guests), Text(why))
        elif len(refused) <= REFUSALS_LISTED:
            why = f"{cand.blocking.code}: {cand.blocking.message}" if cand.blocking else ""
            table.add_row(cand.host, Text("no", style=STYLE[ERROR]), str(cand.guests), Text(why))
    if len(refused) > REFUSALS_LISTED:
        for hosts, example in _refusals_by_reason(refused):
            names = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3:,} more" if len(hosts) > 3
                                             else "")
            why = f"{example.code}: {example.message}" if example else ""
            count = f"{len(hosts):,} host" + ("s" if len(hosts) != 1 else "")
            table.add_row(Text(count), Text("no", style=STYLE[ERROR]), "",
                          Text(f"{why}\n({names})"))
    return table


def _refusals_by_reason(refused: list[Candidate]) -> list[tuple[list[str], Finding | None]]:
    """Hosts that cannot take the guest grouped by blocking code and NIC, largest first;
    each group with its first host's finding as the example."""
    groups: dict[tuple[str, int | None], tuple[list[str], Finding | None]] = {}
    for cand in refused:
        key = (cand.blocking.code, cand.blocking.nic) if cand.blocking else ("", None)
        groups.setdefault(key, ([], cand.blocking))[0].append(cand.host)
    return sorted(groups.values(), key=lambda group: -len(group[0]))


# --- diff -----------------------------------------------------------------------------------

def diff_rows(fleet: Fleet, a: Host, b: Host) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, network in fleet.networks.items():
        sides: list[dict[str, object] | None] = []
        for host in (a, b):
            binding = host.bindings.get(name)
            if binding is None:
                sides.append(None)
                continue
            mtu, _ = g.effective_mtu(network, binding, host)
            uplink = host.uplinks[binding.uplink]
            sides.append({
                "mode": binding.mode, "semantic": semantic_of(binding), "uplink": binding.uplink,
                "vlan": binding.vlan if binding.vlan is not None else network.vlan, "mtu": mtu,
                "reaches_segment": network.is_overlay or network.segment in uplink.segments,
                "vxlan": _vtep(binding.vxlan) if mode_of(binding).takes_vxlan else None,
            })
        differs = sorted(k for k in ("mode", "semantic", "vlan", "mtu", "reaches_segment",
                                     "vxlan")
                         if (sides[0] or {}).get(k) != (sides[1] or {}).get(k))
        rows.append({"network": name, "segment": network.segment_id, a.name: sides[0],
                     b.name: sides[1], "differs": differs})
    return rows


def _vtep(vxlan: Vxlan | None) -> str:
    """What VTEPs of one VNI must agree on besides the VNI: port and flooding peers."""
    vxlan = vxlan or Vxlan()
    peers = (f"group {vxlan.group}" if vxlan.group else
             f"remotes {', '.join(vxlan.remotes)}" if vxlan.remotes else "no peers")
    return f"port {vxlan.port} {peers}"


def diff_view(a: str, b: str, rows: list[dict]) -> RenderableType:
    table = Table(title=f"{a} vs {b}", title_justify="default")
    table.add_column(DIFFERS, justify="center")  # marks a row whose hosts differ
    table.add_column("network")
    table.add_column("segment")
    for host in (a, b):
        table.add_column(host)
    for row in rows:
        cells = []
        for host in (a, b):
            side = row[host]
            if side is None:
                cells.append(Text("not bound", style=STYLE[ERROR]))
                continue
            text = Text()
            for key, value in (("uplink", side["uplink"]), ("mode", side["mode"]),
                               ("vlan", _vlan(side["vlan"])), ("mtu", f"MTU {side['mtu']}")):
                style = "bold yellow" if key in row["differs"] else None
                text.append(f"{value} ", style=style)
            if side.get("vxlan"):
                text.append(f"{side['vxlan']} ",
                            style="bold yellow" if "vxlan" in row["differs"] else None)
            if not side["reaches_segment"]:
                text.append("✗ segment unreachable", style=STYLE[ERROR])
            cells.append(text)
        name = Text(row["network"], style="bold yellow" if row["differs"] else "")
        table.add_row(Text(DIFFERS if row["differs"] else "", style="bold yellow"), name,
                      row["segment"], *cells)
    return table
