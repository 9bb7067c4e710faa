"""Drift of a host's uplinks and bridged bindings: the part of drift.py that compares
interfaces (names, MACs, carrier, MTU, masters, SR-IOV pools, bridges, vxlan devices). Pure.
"""

from __future__ import annotations

from netmap.model.fleet import Binding, Host, Network, Uplink, mapping_file
from netmap.model.inventory import UPLINK_KINDS, Interface, Inventory
from netmap.modes import mode_of
from netmap.rules.check import ERROR, WARNING, Finding
from netmap.rules.drift.tracked import TrackedDevice


def _describe(link: Interface) -> str:
    mac = link.hardware_mac
    return f"{link.name} ({link.kind}, MTU {link.mtu}{f', {mac}' if mac else ''})"


class LinkDrift:
    """One comparison; collects findings as it walks uplinks and bindings. drift._Drift
    adds features and netmap's state."""

    def __init__(self, host: Host, inventory: Inventory, tracked: list[TrackedDevice],
                 networks: dict[str, Network] | None) -> None:
        self.host, self.inv, self.tracked = host, inventory, tracked
        self.networks = networks or {}
        self.mapping = mapping_file(host)
        self.findings: list[Finding] = []
        self.live: dict[str, Interface | None] = {}

    def add(self, code: str, severity: str, message: str, hint: str) -> None:
        self.findings.append(Finding(code, severity, None, message, hint))

    # --- uplinks ------------------------------------------------------------------------

    def users(self, uplink: str) -> list[Binding]:
        return [b for b in self.host.bindings.values() if b.uplink == uplink]

    def undeclared_candidates(self) -> list[Interface]:
        declared = set(self.host.uplinks)
        return [link for link in self.inv.uplink_candidates()
                if link.name not in declared and link.kind != "loopback"]

    def resolve(self, uplink: Uplink) -> Interface | None:
        """The live interface behind a declared uplink, reporting a rename on the way."""
        live = self.inv.get(uplink.name)
        if live is not None and (uplink.mac is None or uplink.mac in (live.mac, live.perm_mac)):
            return live
        if uplink.mac is not None:
            # A bond (and its slaves) take on the first slave's MAC; the burnt-in address
            # (perm_mac) names the NIC itself, so it wins over a borrowed one.
            moved = sorted((i for i in self.inv.by_mac(uplink.mac) if i.name != uplink.name
                            and i.kind in UPLINK_KINDS), key=lambda i: i.perm_mac != uplink.mac)
            if moved:
                self.renamed(uplink, moved[0], f"its MAC {uplink.mac} is now on {moved[0].name}")
                return moved[0]
            if live is not None:
                self.add("UPLINK_MAC_CHANGED", WARNING,
                         f"uplink {uplink.name} has MAC {live.hardware_mac}, not {uplink.mac} "
                         "as the mapping says; the NIC may have been replaced.",
                         f"check the cabling of {uplink.name}, then set mac = "
                         f'"{live.hardware_mac}" in [uplinks.{uplink.name}] of {self.mapping}')
                return live
        alias = self.inv.by_altname(uplink.name)
        if alias is not None:
            self.renamed(uplink, alias, f"{uplink.name} is only an alternative name of "
                         f"{alias.name} now")
            return alias
        evidence = self.stacked_evidence(uplink)
        if evidence is not None:
            link, why = evidence
            self.renamed(uplink, link, why)
            return link
        spare = self.undeclared_candidates()
        listing = ", ".join(_describe(i) for i in spare[:5]) or "none"
        self.add("UPLINK_MISSING", ERROR if self.users(uplink.name) else WARNING,
                 f"uplink {uplink.name} does not exist on {self.host.name}"
                 + (f"; networks {', '.join(b.network for b in self.users(uplink.name))} "
                    "cannot be realized" if self.users(uplink.name) else "")
                 + f". Interfaces the mapping does not name: {listing}.",
                 f"rename [uplinks.{uplink.name}] in {self.mapping} to the interface now "
                 "cabled to its segments" + (" (add mac = \"…\" so a rename is found next "
                                             "time)" if uplink.mac is None else ""))
        return None

    def stacked_evidence(self, uplink: Uplink) -> tuple[Interface, str] | None:
        """A missing uplink's devices still point at it by ifindex after a rename: the bridge
        of its bridge binding enslaves it, and vxlan devices and macvtaps sit on it."""
        declared = set(self.host.uplinks)
        for binding in self.users(uplink.name):
            bridge = mode_of(binding).uplink_master(binding)
            if bridge is not None:
                ports = [p for p in self.inv.ports_of(bridge)
                         if p.kind in UPLINK_KINDS and p.name not in declared]
                if len(ports) == 1:
                    return ports[0], f"its bridge {bridge} now enslaves {ports[0].name}"
        for entry in self.tracked:
            # realize recorded the lower by the mapping's name; the kernel keeps the
            # relation by ifindex, so the device now names the uplink's new name.
            if entry.lower != uplink.name or not entry.is_link:
                continue
            link = self.inv.get(entry.name)
            if link is None or not link.lower:
                continue
            lower = self.inv.get(link.lower)
            if lower is not None and lower.name not in declared and lower.kind in UPLINK_KINDS:
                return lower, f"netmap's {link.kind} {link.name} now sits on {lower.name}"
        return None

    def renamed(self, uplink: Uplink, link: Interface, why: str) -> None:
        self.add("UPLINK_RENAMED", ERROR,
                 f"uplink {uplink.name} is now called {link.name}: {why}; realize looks it "
                 "up by the mapping's name and would fail.",
                 f"rename [uplinks.{uplink.name}] to [uplinks.{link.name}] (and the bindings' "
                 f"uplink = ...) in {self.mapping}, or rename the interface back")

    def check_uplink(self, uplink: Uplink, live: Interface) -> None:
        users = self.users(uplink.name)
        needed = ERROR if users else WARNING
        if not live.running:
            state = "administratively down" if not live.admin_up else (
                f"operstate {live.oper_state}, carrier {'on' if live.carrier else 'off'}")
            self.add("UPLINK_DOWN", needed,
                     f"uplink {live.name} passes no frames ({state})"
                     + (f"; guests on {', '.join(b.network for b in users)} are cut off."
                        if users else "."),
                     f"check the cable and switch port of {live.name}"
                     + (f", or 'ip link set {live.name} up'" if not live.admin_up else ""))
        if live.mtu < uplink.mtu:
            self.add("UPLINK_MTU_LOW", needed,
                     f"uplink {live.name} has MTU {live.mtu}, the mapping declares "
                     f"{uplink.mtu}; check passes guests that need up to {uplink.mtu}, "
                     "whose larger frames would be dropped here.",
                     f"'ip link set {live.name} mtu {uplink.mtu}' (and persist it), or lower "
                     f"mtu in [uplinks.{uplink.name}] of {self.mapping}")
        allowed = {mode_of(b).uplink_master(b) for b in users} - {None}
        if live.master and live.master not in allowed:
            master = self.inv.get(live.master)
            kind = master.kind if master else "device"
            self.add("UPLINK_ENSLAVED", needed,
                     f"uplink {live.name} is a port of {kind} {live.master}, which no binding "
                     "of the mapping names; a macvtap or another bridge cannot use it.",
                     f"release it ('ip link set {live.name} nomaster') or declare "
                     f"{live.master} as the uplink in {self.mapping}")
        self.check_uppers(live, users)
        if uplink.sriov is not None:
            self.check_pool(uplink, live)

    def check_uppers(self, live: Interface, users: list[Binding]) -> None:
        """macvlan/macvtap devices on the uplink that are not netmap's: a bridge port cannot
        have them (one rx_handler per device), and passthru wants the uplink alone."""
        mine = {t.name for t in self.tracked}
        foreign = [u.name for u in self.inv.uppers_of(live.name)
                   if u.kind in ("macvlan", "macvtap") and u.name not in mine]
        if not foreign:
            return
        for binding in users:
            why = mode_of(binding).foreign_uppers_break
            if why is None:
                continue
            self.add("UPLINK_BUSY", ERROR,
                     f"uplink {live.name} carries {', '.join(foreign[:4])}, not made by "
                     f"netmap; {why} (network {binding.network}).",
                     f"remove them ('ip link del {foreign[0]}') or bind {binding.network} to "
                     "another uplink")
            return

    def check_pool(self, uplink: Uplink, live: Interface) -> None:
        assert uplink.sriov is not None
        want = uplink.sriov.total_vfs
        pool = self.inv.sriov.get(live.name)
        if pool is None:
            self.add("SRIOV_MISSING", ERROR,
                     f"uplink {live.name} has no SR-IOV pool (no sriov_totalvfs in sysfs); the "
                     f"mapping counts on {want} VFs.",
                     "enable SR-IOV for the NIC (firmware/BIOS, driver) or remove sriov from "
                     f"[uplinks.{uplink.name}] of {self.mapping}")
            return
        if pool.num_vfs < want:
            can = f"the NIC offers at most {pool.total_vfs}" if pool.total_vfs < want else (
                f"echo {want} > /sys/class/net/{live.name}/device/sriov_numvfs")
            self.add("VF_POOL_SMALLER", ERROR,
                     f"PF {live.name} has {pool.num_vfs} VF(s) configured (sriov_numvfs), the "
                     f"mapping counts on {want}.",
                     f"{can}; or set total_vfs = {pool.num_vfs} in [uplinks.{uplink.name}]")
        ours = {t.vf for t in self.tracked if t.pf in (live.name, uplink.name) and t.vf is not None}
        foreign = [vf for vf in pool.vfs if vf.used_by and vf.index not in ours]
        available = pool.num_vfs - len(foreign)
        if foreign and available < want:
            held = ", ".join(f"VF {vf.index} ({vf.used_by})" for vf in foreign[:4])
            self.add("VF_FREE_LOW", ERROR,
                     f"PF {live.name}: {len(foreign)} VF(s) are held outside netmap ({held}), "
                     f"so {available} of the {want} VFs the mapping counts on are free for "
                     "guests; check would admit guests that cannot get one.",
                     f"free those VFs, or set total_vfs = {max(available, 1)} in "
                     f"[uplinks.{uplink.name}] of {self.mapping}")
