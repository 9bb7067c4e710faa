"""The OVS side of realize and release (the steps themselves, their verdicts and what each
removes at release, are netmap/steps/ovs.py): one OVSDB transaction for all of a realize's
OVS changes (and one that undoes them), verify, and release's one transaction per OVSDB of
what netmap added, judged by the mark it left on each (OVS_OWNER_KEY).

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
from netmap.steps.ovs import OvsStep


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


@dataclass
class _Release:
    """One OVSDB's part of a release: ovs.OvsRelease, as the OVS steps decide in it."""

    bridges: dict[str, db.OvsBridge]
    going: set[str]
    leaving: set[str]
    staying: set[str] = field(default_factory=set)
    changes: list[db.Change] = field(default_factory=list)

    def delete_bridge(self, name: str) -> None:
        self.changes.append(db.DeleteBridge(name))

    def delete_port(self, port: str, bridge: str) -> None:
        # a port's removal names its bridge: every port goes before the bridges
        self.changes.insert(0, db.DeletePort(port, bridge))


def release(connections: db.Connections, steps: Iterable[tuple[str, OvsStep]], going: set[str],
            ) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """Remove the OVS ports and bridges of `steps` (key, step) that still carry netmap's
    mark, in one transaction per OVSDB. Returns the keys removed, those kept (key, why:
    a bridge with ports netmap did not add) and those that failed (key, error)."""
    removed: list[str] = []
    kept: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    by_remote: dict[str, list[tuple[str, OvsStep]]] = {}
    for key, step in steps:
        by_remote.setdefault(step.ovsdb, []).append((key, step))
    for remote, items in by_remote.items():
        try:
            ovs = connections(remote, every_port=any(step.reads_every_port
                                                     for _, step in items))
            txn = _Release(ovs.bridges(), going,
                           leaving={port for _k, s in items if (port := s.ovs_port)})
            done: list[str] = []
            for key, step in sorted(items, key=lambda item: item[1].release_order):
                verdict, why = step.release_ovsdb(txn)
                if verdict == "gone":
                    removed.append(f"{key} (already gone)")
                elif verdict == "keep":
                    kept.append((key, why))
                else:
                    done.append(key)
            ovs.apply(txn.changes)
            removed += done
        except ApplyError as err:
            failed += [(key, err.problem) for key, _ in items]
    return removed, kept, failed
