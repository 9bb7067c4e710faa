"""A claimed VF that no longer matches its claim: what differs, and the repair in place. Pure.

A finished claim's VF may be in a running guest's hands: a passthru macvtap's /dev/tapN is
open in QEMU, a whole VF is in the guest. Deleting the macvtap and claiming again would cut
that guest's NIC, so what the kernel lets change in place is changed in place (the PF's VF
entry, the VF netdev's and the macvtap's MTU, MAC and link state) and what it does not (a
macvtap on another device, or not in passthru mode: the kernel never switches a macvtap to
or from passthru) is refused by the step, never remade.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from netmap.model.nic_values import ZERO_MAC
from netmap.steps.base import Changes, Kernel, LiveHost, VirtualFunctionView, refuse

# a part of the VF: the PF's VF entry, the VF netdev, the passthru macvtap on it
PARTS = ("entry", "netdev", "macvtap")


class Claim(Protocol):
    """What of the claim step (vf.ClaimVf) the repair reads."""

    @property
    def pf(self) -> str: ...
    @property
    def mac(self) -> str: ...
    @property
    def vlan(self) -> int | None: ...
    @property
    def spoofchk(self) -> bool: ...
    @property
    def macvtap(self) -> str | None: ...
    @property
    def mtu(self) -> int: ...


def wanted_entry(claim: Claim) -> dict[str, object]:
    return {"mac": claim.mac.lower(), "vlan": claim.vlan or 0, "spoofchk": int(claim.spoofchk)}


def entry_changes(claim: Claim, entry: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    """key -> (as the entry has it, as the claim wants it), for what differs; a key the
    driver does not report is taken at its word."""
    return {key: (entry[key], value) for key, value in wanted_entry(claim).items()
            if key in entry and (str(entry[key]).lower() if key == "mac"
                                 else entry[key]) != value}


@dataclass
class Drift:
    """How a claimed VF differs from its claim: per part, the values a repair sets and the
    values found (what its undo puts back); `fixed`: what cannot change in place."""

    vf: int
    netdev: str | None
    want: dict[str, dict[str, object]] = field(default_factory=lambda: {p: {} for p in PARTS})
    found: dict[str, dict[str, object]] = field(default_factory=lambda: {p: {} for p in PARTS})
    differs: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    macvtap_there: bool = False

    def change(self, part: str, key: str, have: object, want: object, text: str) -> None:
        self.want[part][key], self.found[part][key] = want, have
        self.differs.append(text)

    def as_repair(self) -> tuple[dict, dict]:
        """An Action's repair and undo_repair for it."""
        return ({"vf": self.vf, "vf_netdev": self.netdev, "differs": list(self.differs),
                 **self.want}, dict(self.found))


def compare(claim: Claim, live: LiveHost, vf: VirtualFunctionView) -> Drift:
    """What of `claim` VF `vf` lacks now. A device of another kind under the macvtap's name
    is refused here: it is someone else's, never netmap's to change or delete."""
    drift = Drift(vf.index, vf.netdev)
    where = f"VF {vf.index} of {claim.pf}"
    for key, (have, want) in entry_changes(claim, live.vf_entry(claim.pf, vf.index)).items():
        drift.change("entry", key, have, want, f"{where} has {key} {have}, want {want}")
    if not claim.macvtap:
        return drift
    netdev = live.links.get(vf.netdev or "")
    if netdev is None:
        drift.fixed.append(f"{where} has no netdev (driver {vf.driver or 'none'})")
        drift.differs.append(drift.fixed[-1])
        return drift
    tap = live.links.get(claim.macvtap)
    if tap is not None and tap.kind != "macvtap":
        raise refuse(f"{claim.macvtap} on {live.host} is not the passthru macvtap on "
                     f"{netdev.name} that netmap recorded for {live.guest} (a "
                     f"{tap.kind or 'device'}: a foreign device holds the name)",
                     f"remove or rename {claim.macvtap}, then realize again")
    mac = claim.mac.lower()
    if netdev.mtu < claim.mtu:  # a macvtap's MTU never exceeds its lower device's
        drift.change("netdev", "mtu", netdev.mtu, claim.mtu,
                     f"{netdev.name} has MTU {netdev.mtu}, want at least {claim.mtu}")
    if (netdev.address or "").lower() != mac:
        drift.change("netdev", "mac", netdev.address, claim.mac,
                     f"{netdev.name} has MAC {netdev.address}, want {claim.mac}")
    if not netdev.up:
        drift.change("netdev", "up", False, True, f"{netdev.name} is down")
    if tap is None:
        drift.change("macvtap", "missing", True, False, f"{claim.macvtap} is missing")
        return drift
    drift.macvtap_there = True
    if tap.lower != netdev.index:
        lower = next((n for n, link in live.links.items() if link.index == tap.lower),
                     f"ifindex {tap.lower}")
        drift.fixed.append(f"{claim.macvtap} sits on {lower}, not on {where}'s netdev "
                           f"{netdev.name}")
    if tap.macvlan_mode != "passthru":
        drift.fixed.append(f"{claim.macvtap} is in mode {tap.macvlan_mode}, not passthru (a "
                           "macvtap never changes to or from passthru in place)")
    drift.differs += drift.fixed
    if tap.mtu != claim.mtu:
        drift.change("macvtap", "mtu", tap.mtu, claim.mtu,
                     f"{claim.macvtap} has MTU {tap.mtu}, want {claim.mtu}")
    if (tap.address or "").lower() != mac:
        drift.change("macvtap", "mac", tap.address, claim.mac,
                     f"{claim.macvtap} has MAC {tap.address}, want {claim.mac}")
    if not tap.up:
        drift.change("macvtap", "up", False, True, f"{claim.macvtap} is down")
    return drift


def _moves_mac(want: Mapping[str, Mapping[str, object]]) -> bool:
    """The VF's own MAC changes (its netdev's, or the passthru macvtap's, which is its
    lower's): igb refuses that while the PF's entry enforces a MAC (EADDRNOTAVAIL), so the
    entry holds none meanwhile, as at the claim (vf.ClaimVf.create)."""
    return "mac" in want["netdev"] or "mac" in want["macvtap"]


def repair(claim: Claim, ops: Changes, want: dict, found: dict) -> None:
    """Set what differs, in place: the macvtap and the VF keep their identity (a guest that
    holds /dev/tapN keeps its NIC). The undo that puts back what was found (`found`) is
    registered first; a macvtap that was missing is made with its own undo."""
    pf, vf, netdev = claim.pf, int(want["vf"]), want["vf_netdev"]
    ops.will_undo((f"put VF {vf} of {pf} back as it was before the repair",
                   lambda: put_back(claim, ops, want, found)))
    entry = {"vf": vf, **want["entry"]}
    if _moves_mac(want):
        ops.set_vf(pf, {"vf": vf, "mac": ZERO_MAC})
        for part in ("netdev", "macvtap"):
            if "mac" in want[part]:
                ops.set_attrs(str(netdev if part == "netdev" else claim.macvtap),
                              {"mac": claim.mac})
        entry["mac"] = claim.mac
    if len(entry) > 1:
        ops.set_vf(pf, entry)
    if "mtu" in want["netdev"]:
        ops.set_attrs(str(netdev), {"mtu": want["netdev"]["mtu"]})
    if "up" in want["netdev"]:
        ops.bring_up(str(netdev))
    tap = str(claim.macvtap)
    if "missing" in want["macvtap"]:
        ops.new_link(tap, "macvtap", mtu=claim.mtu, lower=str(netdev),
                     options={"mode": "passthru"},
                     undo=(f"delete macvtap {tap}", lambda: ops.delete_link(tap)))
        ops.bring_up(tap, mac=claim.mac)
        return
    if "mtu" in want["macvtap"]:
        ops.set_attrs(tap, {"mtu": claim.mtu})
    if "up" in want["macvtap"]:
        ops.bring_up(tap)


def put_back(claim: Claim, kernel: Kernel, want: dict, found: dict) -> None:
    """The undo of `repair`: each value as found, in reverse order (the macvtap's MTU down
    before its lower's; the VF's MAC while the entry holds none)."""
    pf, vf, netdev, tap = claim.pf, int(want["vf"]), str(want["vf_netdev"]), str(claim.macvtap)
    if claim.macvtap and "missing" not in want["macvtap"]:
        if "up" in found["macvtap"]:
            kernel.set_up(tap, False)
        if "mtu" in found["macvtap"]:
            kernel.set_attrs(tap, {"mtu": found["macvtap"]["mtu"]})
    if "up" in found["netdev"]:
        kernel.set_up(netdev, False)
    if "mtu" in found["netdev"]:
        kernel.set_attrs(netdev, {"mtu": found["netdev"]["mtu"]})
    entry = {"vf": vf, **found["entry"]}
    if _moves_mac(want):
        kernel.set_vf(pf, {"vf": vf, "mac": ZERO_MAC})
        for part, name in (("macvtap", tap), ("netdev", netdev)):
            if found[part].get("mac"):
                kernel.set_attrs(name, {"mac": found[part]["mac"]})
        entry.setdefault("mac", claim.mac)  # the entry held the guest's MAC before
    if len(entry) > 1:
        kernel.set_vf(pf, entry)
