"""Drift: a host's declared mapping against what discovery found on it. Pure.

Findings use check.Finding, so `drift` and `check --live` print and serialize alike.
Severity: error = netmap cannot realize or keep what the mapping says (a guest would lose
its link or land elsewhere); warning = the mapping and the host disagree, nothing breaks
yet; info = a note. `netmap drift` exits 1 on any error or warning.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from netmap.model.fleet import Guest, Host, Network
from netmap.model.inventory import Interface, Inventory, is_netmap_endpoint
from netmap.model.names import tap_name
from netmap.modes import REGISTRY
from netmap.rules.check import ERROR, INFO, WARNING, Finding
from netmap.rules.drift.bindings import BindingDrift
from netmap.rules.drift.tracked import TrackedDevice, tracked_from_state

# Loadable modules that the kernel loads on first use: absent now is not proof of absent.
ON_DEMAND = frozenset({"bridge", "vxlan", "macvtap"})


@dataclass(frozen=True)
class DriftReport:
    host: str
    netns: str | None
    uplinks: dict[str, str | None]  # declared uplink -> the live interface it resolved to
    findings: tuple[Finding, ...] = field(default=())

    @property
    def drifted(self) -> bool:
        return any(f.severity in (ERROR, WARNING) for f in self.findings)

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "netns": self.netns, "drift": self.drifted,
                "uplinks": self.uplinks, "findings": [f.as_dict() for f in self.findings]}


class _Drift(BindingDrift):
    """Adds what is not about links: kernel features, and what netmap's state recorded."""

    verify_features: frozenset[str] | None = None  # declared features to verify (None: all)
    guests: Mapping[str, Guest] | None = None  # the fleet's: endpoints compared with their NIC

    def check_features(self) -> None:
        needed: dict[str, list[str]] = {}
        verified = self.host.features if self.verify_features is None else (
            self.host.features & self.verify_features)
        for feature in sorted(verified):
            needed.setdefault(feature, []).append("the mapping's features")
        for binding in self.host.bindings.values():
            for feature in REGISTRY[binding.mode].kernel_features:
                needed.setdefault(feature, []).append(f"network {binding.network}")
        pool_codes = {"SRIOV_MISSING", "VF_POOL_SMALLER"}
        pools_judged = any(f.code in pool_codes for f in self.findings)
        for feature, why in needed.items():
            if feature in self.inv.features or (feature == "sriov" and pools_judged):
                continue  # a missing pool is already reported, with its PF's name
            soft = feature in ON_DEMAND
            self.add("FEATURE_MISSING", WARNING if soft else ERROR,
                     f"{feature} is not available on {self.host.name} (needed by "
                     f"{', '.join(dict.fromkeys(why))})"
                     + ("; its module is not loaded now, the kernel may load it on first use."
                        if soft else "."),
                     f"modprobe {FEATURE_MODULE.get(feature, feature)}, or remove "
                     f'"{feature}" from features in {self.mapping}')
        # against everything the mapping declares, also when only some is verified:
        # check --live verifies what one guest needs, and the rest is still declared
        extra = sorted(self.inv.features - self.host.features)
        if extra:
            self.add("FEATURE_UNDECLARED", INFO,
                     f"{self.host.name} offers {', '.join(extra)}, which the mapping does "
                     "not list; check assumes they are absent.",
                     f"add them to features in {self.mapping}")

    def check_state(self) -> None:
        tracked = {t.name: t for t in self.tracked}
        for entry in self.tracked:
            if entry.role == "vf":
                self.check_claimed_vf(entry)
                continue
            if entry.role == "bridge-vlan":
                self.check_port_vlan(entry)
                continue
            live = self.inv.get(entry.name)
            guest = entry.guests[0] if entry.guests else "GUEST"
            if live is None and entry.pending:
                self.add("ENDPOINT_VANISHED", ERROR,
                         f"{entry.role} {entry.name} for {entry.owners} is in netmap's state, "
                         "but the realize that meant to create it did not finish.",
                         f"run 'netmap realize {guest}' to finish it, or 'netmap release "
                         f"{guest}' to undo what it did")
            elif live is None:
                self.add("ENDPOINT_VANISHED", ERROR,
                         f"{entry.role} {entry.name}, made by netmap for {entry.owners}, is in "
                         "netmap's state but no longer exists; their link is gone.",
                         f"run 'netmap realize {guest}' to rebuild it, or "
                         f"'netmap release {guest}' if the guest is gone")
            elif entry.ifindex is not None and live.index != entry.ifindex:
                self.add("ENDPOINT_REPLACED", ERROR,
                         f"{entry.role} {entry.name}, made by netmap for {entry.owners} as "
                         f"ifindex {entry.ifindex}, is gone; the {live.kind} {entry.name} "
                         f"there now (ifindex {live.index}) is someone else's, and netmap "
                         "will neither repair nor remove it.",
                         f"delete it ('ip link del {entry.name}') and realize {guest} again, "
                         f"or release {guest} if the device must stay")
            elif self.queue_mode_differs(entry, live):
                pass
            elif entry.bridge and live.master != entry.bridge:
                self.add("ENDPOINT_DETACHED", ERROR,
                         f"{entry.role} {entry.name} of {entry.owners} is no longer a port of "
                         f"bridge {entry.bridge}"
                         + (f" (it is in {live.master})" if live.master else "")
                         + "; the guest is cut off from its network.",
                         f"'ip link set {entry.name} master {entry.bridge}', or realize "
                         f"{guest} again")
        for link in self.inv.interfaces:
            if is_netmap_endpoint(link.name) and link.name not in tracked:
                self.add("ENDPOINT_UNTRACKED", WARNING,
                         f"{link.kind} {link.name} has netmap's endpoint name but no state "
                         "entry; release will not remove it.",
                         f"remove it ('ip link del {link.name}') if no guest uses it")

    def queue_mode_differs(self, entry: TrackedDevice, live: Interface) -> bool:
        """A tap in the other queue mode than its guest's NIC asks for (the guest's mapping
        changed since realize, or the tap was made anew by hand): QEMU and libvirt open a
        tap with IFF_MULTI_QUEUE exactly when they want several queues, and the kernel
        refuses (EINVAL) a tap whose mode differs, so the guest cannot start or arrive."""
        if entry.role != "tap" or live.multi_queue is None:
            return False
        want, why = entry.multi_queue, "netmap made it"
        for name in entry.guests:
            guest = (self.guests or {}).get(name)
            nic = next((n for n in guest.nics if tap_name(name, n.index) == entry.name),
                       None) if guest else None
            if guest is not None and nic is not None:
                want = nic.queues > 1
                why = f"NIC {nic.index} of {name} asks for {nic.queues} queue(s) ({guest.source})"
        if want is None or want == live.multi_queue:
            return False
        mode = {True: "multi-queue", False: "single-queue"}
        guest_name = entry.guests[0] if entry.guests else "GUEST"
        self.add("ENDPOINT_QUEUE_MODE", ERROR,
                 f"tap {entry.name} of {entry.owners} is {mode[live.multi_queue]}, but "
                 f"{why}: QEMU and libvirt would open it {mode[want]} and the kernel refuses "
                 "that (EINVAL), so the guest cannot start or arrive on this host.",
                 f"realize {guest_name} again while it is shut off (netmap makes the tap "
                 "anew), or give the NIC the queues the running guest has")
        return True

    def check_port_vlan(self, entry: TrackedDevice) -> None:
        """A VLAN netmap added to a bridge port (the uplink's trunk VLAN, a tap's access
        VLAN) that the port no longer carries: the bridge drops the network's frames there.
        A port that is gone is reported as such (its own entry, or the uplink's)."""
        live = self.inv.get(entry.name)
        if live is None or live.vlans is None or entry.vid in live.vlans or entry.pending:
            return
        guest = entry.guests[0] if entry.guests else "GUEST"
        access = is_netmap_endpoint(entry.name)  # a guest's tap; else the uplink (trunk)
        self.add("BRIDGE_VLAN_MISSING", ERROR,
                 f"port {entry.name} of bridge {live.master or '(none)'} no longer carries "
                 f"VLAN {entry.vid}, which netmap added for {entry.owners}; the bridge drops "
                 "that network's frames there.",
                 f"'bridge vlan add dev {entry.name} vid {entry.vid}"
                 + (" pvid untagged" if access else "") + f"', or realize {guest} again")

    def check_claimed_vf(self, entry: TrackedDevice) -> None:
        pool = self.inv.sriov.get(entry.pf or "")
        if pool is None or entry.vf is None:
            return  # the PF itself is judged with the uplinks
        if entry.vf >= pool.num_vfs:
            self.add("ENDPOINT_VANISHED", ERROR,
                     f"VF {entry.vf} of {entry.pf}, claimed by netmap for {entry.owners}, no "
                     f"longer exists (sriov_numvfs is {pool.num_vfs}).",
                     f"raise sriov_numvfs of {entry.pf} and realize "
                     f"{entry.guests[0] if entry.guests else 'the guest'} again")
            return
        live = next((vf for vf in pool.vfs if vf.index == entry.vf), None)
        if live is None or live.entry_mac is None or entry.mac is None or entry.pending:
            return
        if live.entry_mac.lower() != entry.mac.lower():
            # a libvirt hostdev network on the same PF picks VFs by its own count and takes
            # netmap's: the claim is lost, and the guest's MAC and VLAN are not on the VF
            guest = entry.guests[0] if entry.guests else "GUEST"
            held = f"; it is {live.used_by}" if live.netdev is None and live.used_by else ""
            self.add("VF_CLAIM_TAKEN", ERROR,
                     f"VF {entry.vf} of {entry.pf}, claimed by netmap for {entry.owners} with "
                     f"MAC {entry.mac}, carries MAC {live.entry_mac} on its PF entry now{held}: "
                     "someone else took it (a libvirt hostdev network on this PF picks VFs by "
                     "its own count), and the guest's MAC and VLAN are no longer on it.",
                     f"free the VF first (stop what holds it, or keep libvirt hostdev networks "
                     f"off {entry.pf}), then 'netmap realize {guest}' sets the entry again; "
                     f"or 'netmap release {guest}' if the guest is gone")


FEATURE_MODULE = {"vhost-net": "vhost_net", "sriov": "the NIC driver with max_vfs"}


def drift_report(host: Host, inventory: Inventory, state_entries: object = (), *,
                 networks: dict[str, Network] | None = None,
                 verify_features: Collection[str] | None = None,
                 guests: Mapping[str, Guest] | None = None) -> DriftReport:
    """Compare `host` (its mapping) with `inventory` (the live host) and netmap's state.

    `state_entries`: a netmap.state.HostState, its data dict, or TrackedDevice entries.
    `networks` (the fleet's) enables the checks that need a network's VNI or MTU.
    `verify_features`: of the features `host` declares, the ones to verify (default: all);
    what the live host offers beyond `host`'s declared features is noted either way.
    `guests` (the fleet's) enables comparing an endpoint with its guest's NIC.
    """
    drift = _Drift(host, inventory, tracked_from_state(state_entries), networks)
    if verify_features is not None:
        drift.verify_features = frozenset(verify_features)
    drift.guests = guests
    for uplink in host.uplinks.values():
        live = drift.resolve(uplink)
        drift.live[uplink.name] = live
        if live is not None:
            drift.check_uplink(uplink, live)
    for binding in host.bindings.values():
        drift.check_binding(binding)
    drift.check_features()
    drift.check_state()
    uplinks = {name: (link.name if link else None) for name, link in drift.live.items()}
    return DriftReport(host.name, inventory.netns, uplinks, tuple(drift.findings))


def drift_findings(host: Host, inventory: Inventory, state_entries: object = (), *,
                   networks: dict[str, Network] | None = None,
                   verify_features: Collection[str] | None = None) -> list[Finding]:
    """The findings of `drift_report`, for folding into `check --live`."""
    return list(drift_report(host, inventory, state_entries, networks=networks,
                             verify_features=verify_features).findings)
