"""The OVS side of realize and release (the steps themselves, and their verdicts, are
netmap/steps/ovs.py): one OVSDB transaction for all of a realize's OVS changes (and one that
undoes them), verify, and release's removal of what netmap added, judged by the mark it
left on each (OVS_OWNER_KEY).

What netmap adds carries that mark in external_ids; a port or bridge without it is
someone else's and is never changed or removed (a foreign port holding the name of a
guest's tap is refused, an existing bridge is used as it is).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from netmap import plan as p
from netmap.errors import ApplyError
from netmap.netlink import ovsdb as db


@dataclass
class Batch:
    """A realize's OVS changes for one OVSDB, and the changes that undo them (applied in
    reverse)."""

    changes: list[db.Change] = field(default_factory=list)
    undo: list[db.Change] = field(default_factory=list)

    def add_bridge(self, name: str, datapath_type: str | None) -> None:
        self.changes.append(db.AddBridge(name, datapath_type))
        self.undo.append(db.DeleteBridge(name))

    def set_port(self, port: str, bridge: str, tag: int | None,
                 external_ids: tuple[tuple[str, str], ...],
                 before: tuple[int | None, tuple[tuple[str, str], ...]] | None) -> None:
        self.changes.append(db.SetPort(port, bridge, tag, external_ids))
        if before is None:
            self.undo.append(db.DeletePort(port, bridge))
        else:  # repair: back to the tag and external_ids it had
            self.undo.append(db.SetPort(port, bridge, *before))


def verify(ovs: db.Ovsdb, nic: p.NicPlan) -> list[str]:
    """The guest's port as planned, and ovs-vswitchd using it (an OpenFlow port number,
    no error on its interface)."""
    step = nic.step_of(p.EnsureOvsPort, nic.device) if nic.device else None
    if step is None:
        return []
    port = ovs.port_status(step.bridge, step.port)
    if port is None:
        return [f"NIC {nic.nic}: {step.port} is not a port of OVS bridge {step.bridge}"]
    problems = []
    if port.tag != step.tag:
        problems.append(f"NIC {nic.nic}: OVS port {step.port} has tag {port.tag}, want "
                        f"{step.tag}")
    for name, ofport, error in port.interfaces:
        if error or not ofport or ofport < 0:
            problems.append(f"NIC {nic.nic}: ovs-vswitchd does not use {name}: "
                            f"{error or 'no OpenFlow port'}")
    return problems


def release(connections: db.Connections, steps: Iterable[tuple[str, p.Step]], going: set[str],
            ) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """Remove the OVS ports and bridges of `steps` (key, step) that still carry netmap's
    mark, in one transaction per OVSDB. Returns the keys removed, those kept (key, why:
    a bridge with ports netmap did not add) and those that failed (key, error)."""
    removed: list[str] = []
    kept: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    by_remote: dict[str, list[tuple[str, p.Step]]] = {}
    for key, step in steps:
        by_remote.setdefault(getattr(step, "ovsdb", ""), []).append((key, step))
    for remote, items in by_remote.items():
        try:
            # with a bridge to remove: whether it holds ports netmap did not add
            ovs = connections(remote, every_port=any(isinstance(step, p.EnsureOvsBridge)
                                                     for _, step in items))
            bridges = ovs.bridges()
            changes: list[db.Change] = []
            done: list[str] = []
            leaving = {s.port for _k, s in items if isinstance(s, p.EnsureOvsPort)}
            staying: set[str] = set()  # netmap's bridges that keep someone else's ports
            for key, step in items:
                if not isinstance(step, p.EnsureOvsBridge):
                    continue
                live = bridges.get(step.name)
                if live is None:
                    removed.append(f"{key} (already gone)")
                    continue
                others = sorted(n for n in live.ports if n != step.name
                                and n not in leaving and n not in going)
                if others:
                    kept.append((key, f"OVS bridge still has ports netmap did not add: "
                                 f"{', '.join(others)}"))
                    staying.add(step.name)
                elif live.external_ids.get(p.OVS_OWNER_KEY) != "netmap":
                    kept.append((key, "not netmap's bridge any more, left alone"))
                else:
                    changes.append(db.DeleteBridge(step.name))
                    done.append(key)
            for key, step in items:
                if not isinstance(step, p.EnsureOvsPort):
                    continue
                live = bridges.get(step.bridge)
                port = live.ports.get(step.port) if live else None
                if port is None:
                    removed.append(f"{key} (already gone)")
                elif p.OVS_OWNER_KEY not in port.external_ids:
                    kept.append((key, "now someone else's port (no netmap mark), left alone"))
                elif step.uplink and step.bridge in staying:
                    # the ports that keep the bridge need its uplink: both go together,
                    # at a later release, once those ports are gone
                    kept.append((key, f"the uplink of OVS bridge {step.bridge}, which stays"))
                else:
                    changes.insert(0, db.DeletePort(step.port, step.bridge))
                    done.append(key)
            ovs.apply(changes)
            removed += done
        except ApplyError as err:
            failed += [(key, err.problem) for key, _ in items]
    return removed, kept, failed
