"""The SR-IOV step: claim a free VF of a PF and set its entry. Pure."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from netmap.model.nic_values import ZERO_MAC
from netmap.steps import vf_repair
from netmap.steps.base import (
    Action,
    Changes,
    Kernel,
    LiveHost,
    LiveLink,
    StateRecord,
    Step,
    Undo,
    VirtualFunctionView,
    refuse,
)


@dataclass(frozen=True)
class ClaimVf(Step):
    """A free VF of `pf`, chosen under the host lock: MAC, VLAN and spoof-check are set on
    the PF's VF entry. With `macvtap`, the VF netdev then carries a passthru macvtap."""

    kind: ClassVar[str] = "vf"
    pf: str
    mac: str
    vlan: int | None
    spoofchk: bool
    macvtap: str | None = None
    mtu: int = 1500

    @property
    def resource(self) -> str:
        return f"vf:{self.pf}:{self.mac}"

    @property
    def target(self) -> str:
        return self.pf

    def describe(self) -> str:
        vlan = f"VLAN {self.vlan}" if self.vlan else "untagged"
        tail = f", VF netdev as passthru macvtap {self.macvtap}" if self.macvtap else ""
        return (f"claim a free VF of {self.pf}: MAC {self.mac}, {vlan}, spoofchk "
                f"{'on' if self.spoofchk else 'off'}{tail}")

    def describe_undo(self) -> str | None:
        netdev = ", its netdev" if self.macvtap else ""
        return f"put the VF of {self.pf} that holds {self.mac} back as found (its entry{netdev})"

    def decide(self, live: LiveHost, nic: int) -> Action:
        claimed = live.state.resource(self.resource)
        if claimed and live.guest not in claimed["guests"]:
            # one MAC on two VF entries of one PF: the NIC's switch delivers by MAC, so one of
            # the two would get the other's frames (and state keys a claim by PF and MAC)
            users = ", ".join(claimed["guests"]) or "no guest"
            index = claimed["info"].get("index", "?")
            raise refuse(f"MAC {self.mac} is already set on VF {index} of {self.pf} "
                         f"({live.host}), claimed by netmap for {users}",
                         f"give NIC {nic} of {live.guest} another MAC, or release {users} "
                         f"on {live.host} first")
        info = live.sriov(self.pf)
        if info is None:
            raise refuse(f"{self.pf} on {live.host} has no SR-IOV (no "
                         "sriov_totalvfs in sysfs)", "bind the network to an SR-IOV PF")
        if claimed and "index" in claimed["info"]:
            vf = info.vf(int(claimed["info"]["index"]))
            if vf is not None:
                live.keep_vf(self.resource, vf)
                return self._decide_claimed(live, nic, vf, bool(claimed["info"].get("done")))
        taken: dict[int, str] = dict(live.state.claimed_vfs(self.pf))
        taken.update(live.claimed_in_plan(self.pf))
        held = live.vfs_used_outside(self.pf, [vf for vf in info.vfs if vf.index not in taken])
        free = [vf for vf in info.vfs if vf.index not in taken and vf.index not in held]
        if not free:
            outside = "".join(f"; VF {index}: {why}" for index, why in sorted(held.items()))
            raise refuse(f"no free VF on {self.pf} ({live.host}): {info.num_vfs} VF(s) "
                         f"enabled of {info.total_vfs}, {len(taken)} claimed by netmap, "
                         f"{len(held)} used outside netmap{outside}",
                         f"release a guest that uses {self.pf}, free a VF used outside "
                         f"netmap, or raise /sys/class/net/{self.pf}/device/sriov_numvfs")
        live.keep_vf(self.resource, free[0])
        return Action(nic, self, "create")

    def _decide_claimed(self, live: LiveHost, nic: int, vf: VirtualFunctionView,
                        finished: bool) -> Action:
        """The claim state records on VF `vf`, against the live VF. State records a claim
        before the kernel is asked, and a realize that finished marks it done: one not
        done (a run killed after the record left half a claim, or none) is made again
        on the same VF as a first claim makes it, unless a process holds its macvtap.
        A done claim that drifted is repaired in place: a running guest may hold it."""
        if finished:
            self._refuse_if_taken(live, nic, vf)
        drift = vf_repair.compare(self, live, vf)
        if not drift.differs:
            return Action(nic, self, "unchanged")
        # who holds the macvtap open decides only here, and names them in a refusal
        asked = drift.macvtap_there and not (finished and not drift.fixed)
        held = live.macvtap_holders(str(self.macvtap)) if asked else []
        if not (finished or held):
            return Action(nic, self, "repair", repair={"redo": drift.differs, "vf": vf.index})
        if drift.fixed:
            holding = f"; {', '.join(held)} hold(s) it open" if held else ""
            shut = f"shut {live.guest} down, then " if held else ""
            raise refuse(f"VF {vf.index} of {self.pf} on {live.host}, claimed for NIC {nic} "
                         f"of {live.guest}, differs in what cannot be changed in place: "
                         f"{'; '.join(drift.fixed)}{holding}",
                         f"{shut}release {live.guest} on {live.host} ('netmap release "
                         f"{live.guest}') and realize again: the VF is claimed and its "
                         f"macvtap {self.macvtap} made anew")
        repair, found = drift.as_repair()
        return Action(nic, self, "repair", repair=repair, undo_repair=found)

    def _refuse_if_taken(self, live: LiveHost, nic: int, vf: VirtualFunctionView) -> None:
        """A done claim whose VF left the host's VF driver (no netdev: vfio-pci, for a
        guest) while its entry carries a MAC that is not the claim's: someone else's guest
        has it, as a libvirt hostdev network's takes a VF of its pool by its own count
        (drift says VF_CLAIM_TAKEN). Setting the entry back would change the MAC and VLAN
        under that running guest. With a netdev on the host the VF is still where netmap
        put it (the driver may have put its own MAC on the entry at a reset): repaired."""
        mac = str(live.vf_entry(self.pf, vf.index).get("mac") or ZERO_MAC).lower()
        if mac in (ZERO_MAC, self.mac.lower()) or (vf.netdev and vf.netdev in live.links):
            return
        raise refuse(f"VF {vf.index} of {self.pf} on {live.host}, claimed for NIC {nic} of "
                     f"{live.guest}, is taken: bound to {vf.driver or 'no driver'} with MAC "
                     f"{mac} on its entry, not {self.mac} (a guest of someone else's, such "
                     "as a libvirt hostdev network's, holds it)",
                     f"release {live.guest} on {live.host} ('netmap release {live.guest}') "
                     "and realize again to claim another free VF; keep a PF out of libvirt's "
                     "hostdev pools when netmap claims its VFs")

    def entry_differences(self, index: int, entry: Mapping[str, object]) -> list[str]:
        """How VF `index`'s entry (as the kernel reports it; {}: not at all) differs from
        this claim's."""
        return [f"VF {index} of {self.pf} has {key} {have}, want {want}"
                for key, (have, want) in vf_repair.entry_changes(self, entry).items()]

    def record_made(self, state: StateRecord, links: Mapping[str, LiveLink],
                    verdict: str) -> bool:
        """The claim is done: a later realize repairs it in place, never claims it again."""
        record = state.resource(self.resource)
        if record is None or record["info"].get("done"):
            return False
        record["info"]["done"] = True
        return True

    def makes(self, verdict: str) -> bool:
        # a repair claims the VF again or sets the claim's values back: netmap's either way
        return verdict in ("create", "repair")

    def apply(self, ops: Changes, action: Action) -> None:
        undo = (self.describe_undo() or "", lambda: self.undo(ops, ops.undo_info(self)))
        if action.verdict == "repair" and "redo" not in (action.repair or {}):
            vf_repair.repair(self, ops, action.repair or {}, action.undo_repair or {})
        elif action.verdict == "repair":
            # What the killed run made goes first (its macvtap, the netdev's MAC), as
            # release would undo it, so the claim starts from the VF as found, as the
            # first did; the undo that restores that is registered before
            ops.will_undo(undo)
            if self.macvtap:
                self.undo(ops, ops.undo_info(self))
            self.create(ops, undo)
        elif action.verdict == "create":
            self.create(ops, undo)

    def create(self, ops: Changes, undo: Undo) -> None:
        vf = ops.undo_info(self)  # the VF decide chose
        # IFLA_VFINFO_LIST on the PF: MAC, VLAN, spoof-check of one VF entry
        entry = {"vf": vf["index"], "mac": self.mac, "vlan": self.vlan or 0,
                 "spoofchk": int(self.spoofchk)}
        netdev = vf.get("netdev")
        if not (self.macvtap and netdev):
            ops.claim_vf(self.pf, entry, undo=undo)
            return
        # The guest's MAC must be the VF netdev's own, under the macvtap. igb refuses a VF's
        # MAC change while the PF's entry holds a MAC (igbvf: EADDRNOTAVAIL), and igbvf takes
        # the entry's MAC only at its next reset. So: the entry without a MAC, the MAC on the
        # VF netdev (igbvf reports it to the PF), then the same MAC on the entry. igb also
        # refuses every request of a VF that has not completed a reset with it since its own
        # (a fresh VF, probed while the PF was resetting): igbvf resets at ifdown, so the VF
        # netdev goes up and down first.
        ops.claim_vf(self.pf, {**entry, "mac": ZERO_MAC}, undo=undo)
        try:
            ops.bring_up(str(netdev))
            ops.set_up(str(netdev), False)
            ops.set_attrs(str(netdev), {"mac": self.mac})
            ops.set_vf(self.pf, entry)
            ops.new_link(self.macvtap, "macvtap", mtu=self.mtu, lower=str(netdev),
                         options={"mode": "passthru"}, undo=None)
            # a macvtap sends nothing through a lower device that is down, and a free VF's
            # netdev is down (netlink/vf_pool): up with the macvtap, down again in undo()
            ops.bring_up(str(netdev))
        except OSError:  # the VF entry was set: give it back before reporting
            self.undo(ops, ops.undo_info(self))
            raise
        ops.bring_up(self.macvtap, mac=self.mac)  # the MAC it took from the VF netdev

    def undo(self, kernel: Kernel, info: dict) -> None:
        if "index" not in info:
            return
        found = info.get("found") or {}  # the entry as found at the claim (older state: cleared)
        entry: dict[str, object] = {"vf": int(info["index"]),
                                    "mac": found.get("mac", ZERO_MAC),
                                    "vlan": found.get("vlan", 0)}
        if "spoofchk" in found:
            entry["spoofchk"] = found["spoofchk"]
        netdev = info.get("netdev")
        if not (self.macvtap and netdev):
            kernel.set_vf(self.pf, entry)
            return
        kernel.delete_link(self.macvtap)
        # The VF netdev as found (down, its MAC, its IPv6 address generation), once the entry
        # holds no MAC: igb lets a VF change its own MAC only then (see create)
        kernel.set_vf(self.pf, {**entry, "mac": ZERO_MAC})
        kernel.set_up(str(netdev), False)
        before = {key: found[f"netdev_{key}"] for key in ("mac", "addr_gen_mode")
                  if found.get(f"netdev_{key}") is not None}
        if before and kernel.index_of(str(netdev)) is not None:
            kernel.set_attrs(str(netdev), before)
        if str(entry["mac"]).lower() != str(found.get("netdev_mac", "")).lower():
            # igbvf reported its MAC to the PF, which wrote it into the entry. An entry found
            # with the netdev's own MAC has it now; setting it through the PF instead would
            # enforce it (and refuse the next claim's MAC).
            kernel.set_vf(self.pf, entry)

    def describe_change(self, action: Action) -> str:
        repair = action.repair or {}
        if action.verdict != "repair" or "vf" not in repair:
            return super().describe_change(action)
        where = f"VF {repair['vf']} of {self.pf} (MAC {self.mac})"
        if "redo" in repair:
            return (f"claim {where} again, which a killed run left unfinished: "
                    f"{'; '.join(repair['redo'])}")
        return f"repair the claim of {where} in place: {'; '.join(repair['differs'])}"

    def fix_for_change(self, action: Action, err: OSError) -> str | None:
        fix = self.fix_for(err)
        repair = action.repair or {}
        if action.verdict != "repair" or "differs" not in repair:
            return fix
        # the repair was undone with the rest: the VF is as the realize found it
        return (f"{fix + '; or ' if fix else ''}see what {self.pf}'s driver logged (dmesg); "
                f"set by hand what differs ('ip link set {self.pf} vf {repair['vf']} ...', "
                "'ip link set DEV mtu N'), or shut the guest down, release it and realize "
                "again")

    def explain(self, err: OSError) -> str:
        if err.errno == errno.EOPNOTSUPP:
            return f"{self.pf}'s driver does not manage VFs through netlink"
        if err.errno == errno.EADDRNOTAVAIL and self.macvtap:
            return (f"the VF's netdev refused MAC {self.mac} ({self.pf}'s driver lets no VF "
                    "change its MAC)")
        return super().explain(err)

    def fix_for(self, err: OSError) -> str | None:
        if err.errno == errno.EOPNOTSUPP:
            return (f"check that {self.pf} is an SR-IOV PF whose driver sets VF MAC/VLAN "
                    "through netlink (ip link set PF vf N mac ...)")
        if err.errno == errno.EADDRNOTAVAIL and self.macvtap:
            return (f"see what {self.pf}'s driver logged (dmesg), or hand the VF over whole: "
                    'vf_attach = "hostdev" in the binding')
        return None
