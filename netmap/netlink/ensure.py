"""The transaction behind realize: the host view a step decides against, and the kernel
changes a step's apply makes, each undoable.

decide() reads the live links (one dump) and state and has every step decide its verdict
(netmap/steps: create, unchanged, repair, adopt, or a refusal) before anything is touched.
execute() then has each step apply itself; tap and macvtap creation is pipelined (one
sendmsg for many requests). Every making request is sent with the undo of what it makes,
registered *before* the request leaves, and rollback() runs them in reverse: whatever raises
mid-way (Ctrl-C between a send and its ack, ENOBUFS inside a batch, a bad argument between
the two messages of a step) finds an undo for everything the kernel may already have made.
Each undo tolerates "already gone" (ENODEV); only a definite refusal of the making request
withdraws it (EEXIST: the name is someone else's, which must never be deleted).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from netmap import plan as p
from netmap.errors import ApplyError
from netmap.netlink import rtmsg, rtnl, shared_changes, udev, vxlan_match
from netmap.netlink.endpoints import endpoint_for
from netmap.netlink.kernel_steps import RtnlKernel, add_vxlan_remotes, link_attrs, link_data
from netmap.state import PENDING, HostState
from netmap.steps import Action
from netmap.steps.base import (
    EnsureVxlanLike,
    LinkOptions,
    LiveLink,
    Undo,
    VirtualFunctionView,
)
from netmap.steps.ovs import changes_ovsdb

# OVSDB and SR-IOV are imported where a plan uses them: the QEMU helper applies its plan
# through this transaction while QEMU waits, and a tap on a Linux bridge needs neither
if TYPE_CHECKING:
    from netmap.netlink import ovs_steps
    from netmap.netlink.ovsdb import Connections, OvsBridge
    from netmap.netlink.sysfs import SriovInfo, VirtualFunction


@dataclass
class _Queued:
    """A tap or macvtap waiting for the next pipelined batch."""

    action: Action
    name: str
    undo: Undo
    mtu: int
    mac: str
    master: str | None = None  # a tap's bridge
    multi_queue: bool = False
    lower: str | None = None  # a macvtap's lower device
    mode: str | None = None

    @property
    def tap(self) -> bool:
        return self.lower is None


class Transaction(RtnlKernel):
    """netmap.steps.base.LiveHost and Changes for the plans of one or more guests on one
    host: decided together, made together (one tap batch, one OVSDB transaction), undone
    together. A resource several guests share (a bridge, the uplink's port) is decided and
    made once, for the first guest that names it, and used by every one of them."""

    def __init__(self, kernel: rtnl.Rtnl, state: HostState, plan: p.Plan | Sequence[p.Plan],
                 sysfs_root: str | Path | None = None) -> None:
        super().__init__(kernel)
        self.state = state
        self.plans = [plan] if isinstance(plan, p.Plan) else list(plan)
        if not self.plans or len({(q.host, q.netns) for q in self.plans}) != 1:
            raise ValueError("a transaction is the plans of one host")
        self.plan = self.plans[0]  # the plan being decided (a step reads its guest)
        self.host, self.guest = self.plan.host, self.plan.guest
        self.sysfs_root = sysfs_root
        self.links: dict[str, rtmsg.Link] = {}  # read by decide(), inside realize's rollback
        self._vlans: dict[str, dict[int, int]] | None = None
        self._addresses: dict[int, list[str]] | None = None
        self.actions: list[Action] = []
        self.undo: list[Undo] = []
        self.outcomes: list[tuple[int, p.Step, str]] = []
        self.vfs: dict[str, VirtualFunction] = {}  # resource -> the VF claimed
        self._vf_found: dict[str, dict] = {}  # resource -> its VF entry before the claim
        self._queue: list[_Queued] = []
        self._current: Action | None = None  # the action whose step is applying
        # resource -> (the last guest that named it, its step, the action decided)
        self._decided: dict[str, tuple[str, p.Step, Action | None]] = {}
        self._owner: dict[str, str] = {}  # resource -> the guest it was decided for
        self._planned: dict[str, set[str]] = {"recreate": set(), "link": set(),
                                              "ovs-bridge": set()}
        self.uses: list[tuple[str, Action]] = []  # (guest, action) for every guest's step
        self._ovsdb: Connections | None = None  # opened by the first OVS step
        self._ovs: dict[str, ovs_steps.Batch] = {}  # remote -> this realize's OVS changes
        self._ovs_outcomes: list[tuple[int, p.Step, str]] = []

    @property
    def ovsdb(self) -> Connections:
        """This realize's OVSDB connections; only the plans' own OVS ports are replicated."""
        if self._ovsdb is None:
            from netmap.netlink import ovsdb

            self._ovsdb = ovsdb.Connections(ports={
                port for q in self.plans for n in q.nics for s in n.steps
                if changes_ovsdb(s) and (port := s.ovs_port)})
        return self._ovsdb

    # --- the live host, as a step's decide reads it -------------------------------------------
    def bridge_vlans(self) -> dict[str, dict[int, int]]:
        if self._vlans is None:
            self._vlans = self.kernel.bridge_vlans()
        return self._vlans

    def addresses(self) -> dict[int, list[str]]:
        """Global addresses per ifindex: one dump, only when a plan enslaves an uplink."""
        if self._addresses is None:
            self._addresses = self.kernel.addresses()
        return self._addresses

    def ours(self, name: str) -> bool:
        """State says netmap made `name`, and the live device is that one (its ifindex)."""
        if self.state.owner_of_link(name) is None:
            return False
        made, live = self.state.made_ifindex(f"link:{name}"), self.links.get(name)
        return made is None or live is None or live.index == made

    def macvtap_holders(self, name: str) -> list[str]:
        from netmap.netlink import holders

        live = self.links.get(name)
        if live is None or live.kind != "macvtap":
            return []
        return holders.macvtap_holders(name, live.index, self.kernel.netns)

    def queues(self, nic: int) -> int:
        return next((n.queues for n in self.plan.nics if n.nic == nic), 1)

    def sriov(self, pf: str) -> SriovInfo | None:
        from netmap.netlink.sysfs import sriov_info

        return sriov_info(pf, self.sysfs_root)

    def vxlan_differences(self, step: EnsureVxlanLike, live: LiveLink) -> list[str]:
        assert isinstance(live, rtmsg.Link)  # the links decide reads are this dump's
        underlay = self.links.get(step.underlay)
        return vxlan_match.differences(
            self.kernel, live, vni=step.vni, underlay=underlay.index if underlay else None,
            port=step.port, group=step.group, local=step.local, remotes=step.remotes,
            name_of=lambda index: next((n for n, link in self.links.items()
                                        if link.index == index), f"ifindex {index}"))

    def claimed_in_plan(self, pf: str) -> dict[int, str]:
        return {vf.index: key for key, vf in self.vfs.items() if key.startswith(f"vf:{pf}:")}

    def keep_vf(self, resource: str, vf: VirtualFunctionView) -> None:
        from netmap.netlink.sysfs import VirtualFunction

        assert isinstance(vf, VirtualFunction)  # one of sriov()'s
        self.vfs[resource] = vf

    def recreated_names(self) -> set[str]:
        return self._planned["recreate"]

    def planned_names(self) -> set[str]:
        """The links these plans create (a port may be one: the vxlan device)."""
        return self._planned["link"]

    def ovs_bridges(self, remote: str) -> dict[str, OvsBridge]:
        return self.ovsdb(remote).bridges()

    def ovs_bridges_planned(self) -> set[str]:
        return self._planned["ovs-bridge"]

    def vf_for(self, nic: p.NicPlan) -> VirtualFunction | None:
        return next((self.vfs[s.resource] for s in nic.steps if s.resource in self.vfs), None)

    def vfs_used_outside(self, pf: str, candidates: Sequence[VirtualFunctionView],
                         ) -> dict[int, str]:
        from netmap.netlink import vf_pool

        if not candidates:
            return {}
        by_index = {link.index: name for name, link in self.links.items()}
        uppers: dict[str, list[str]] = {}
        for name, upper in self.links.items():
            if upper.kind in vf_pool.UPPER_KINDS and upper.lower in by_index:
                uppers.setdefault(by_index[upper.lower], []).append(name)
        addresses = self.kernel.addresses(scopes=(rtmsg.RT_SCOPE_UNIVERSE, rtmsg.RT_SCOPE_SITE))
        macs = vf_pool.read_entry_macs(self.pyroute(), self.index(pf))
        held = {}
        for vf in candidates:
            link = self.links.get(vf.netdev or "")
            master = by_index.get(link.master) if link and link.master else None
            why = vf_pool.holder(
                vf, up=bool(link and link.up), master=master,
                uppers=uppers.get(vf.netdev or "", []),
                addresses=addresses.get(link.index, []) if link else [],
                entry_mac=macs.get(vf.index), netdev_mac=link.address if link else None)
            if why:
                held[vf.index] = why
        return held

    def index(self, name: str) -> int:
        live = self.links.get(name) or self.kernel.get(name)
        if live is None:
            raise ApplyError(f"{name} vanished while realizing")
        self.links[name] = live
        return live.index

    # --- decide -----------------------------------------------------------------------------
    def ensure(self, nic: int, step: p.Step) -> None:
        """Used by the endpoint classes: the decide pass for one step (once per resource;
        a later guest naming it uses what the first one decided)."""
        decided = self._decided.get(step.resource)
        if decided is not None:
            first, first_step, action = decided
            if first != self.guest and action is not None:
                if first_step != step:  # decided against the host as it is, not as the
                    # first guest leaves it: what the second needs more would go unmade
                    raise ApplyError(
                        f"{first} and {self.guest} need {step.resource} differently on "
                        f"{self.host} ({first_step.describe()}; {step.describe()})",
                        fix=f"realize {first} and {self.guest} one after the other",
                        step=step)
                self.uses.append((self.guest, action))
                self._decided[step.resource] = (self.guest, step, action)
            return
        self._decided[step.resource] = (self.guest, step, None)
        try:
            action = step.decide(self, nic)
        except ApplyError as err:
            err.step = err.step or step  # the refusal is this step's
            raise
        self.actions.append(action)
        self._plan_names(action)
        self.uses.append((self.guest, action))
        self._decided[step.resource] = (self.guest, step, action)
        self._owner[step.resource] = self.guest

    def _plan_names(self, action: Action) -> None:
        """Keep the names decided so far that a later step asks about (kept as they are
        decided: asked once per step, a set built each time made N guests O(N²))."""
        step = action.step
        if action.verdict == "recreate":
            self._planned["recreate"].add(step.target)
        elif action.verdict == "create" and step.planned_as is not None:
            self._planned[step.planned_as].add(step.target)

    def decide(self) -> None:
        self.links = self.kernel.links()
        for plan in self.plans:
            self._for(plan)
            try:
                for nic in plan.nics:
                    endpoint_for(nic.mode).create(self, nic)
            except ApplyError as err:
                if len(self.plans) > 1:  # which guest of the batch was refused
                    err.problem = f"{plan.guest}: {err.problem}"
                raise
        self._for(self.plans[0])

    def _for(self, plan: p.Plan) -> None:
        """Decide the steps of `plan` next (a step reads the guest and its NICs)."""
        self.plan, self.guest = plan, plan.guest

    def changes_planned(self) -> bool:
        return any(a.verdict in ("create", "repair", "recreate") for a in self.actions)

    # --- state ------------------------------------------------------------------------------
    def record_pending(self) -> None:
        """Before any change: each guest is pending and owns what it is about to create."""
        for plan in self.plans:
            self.state.set_guest(plan.guest, PENDING)
        for guest, action in self.uses:
            step = action.step
            if self._owner[step.resource] != guest:  # shared: the first guest makes it
                self.state.use(guest, step.resource, step=step.as_dict(), created=False)
                continue
            info = {}
            if step.resource in self.vfs:
                vf = self.vfs[step.resource]
                info = {"index": vf.index, "pci": vf.pci, "netdev": vf.netdev}
                if action.verdict == "create":  # release puts the entry back as it was
                    info["found"] = self._vf_found[step.resource] = self.vf_entry(
                        step.target, vf.index, vf.netdev)
                elif action.verdict == "repair":  # a claim a killed run half made: the
                    # entry now is that run's work; as found is what that run recorded
                    recorded = self.state.resource(step.resource) or {"info": {}}
                    self._vf_found[step.resource] = recorded["info"].get("found", {})
            self.state.use(guest, step.resource, step=step.as_dict(),
                           created=step.makes(action.verdict), info=info)
            shared_changes.hold(self.state, guest, step, action.verdict, action.undo_repair)
            if action.verdict == "recreate":  # state tells what the device is now
                self.state.resources[step.resource]["step"] = step.as_dict()

    def record_identities(self) -> bool:
        """After the changes: which device is netmap's, for every link it made (also one a
        crashed run made, finished now), and that each VF claim is done (a later realize
        then repairs it in place, never claims it again). Returns whether state changed."""
        changed = False
        for action in self.actions:
            changed = action.step.record_made(self.state, self.links, action.verdict) or changed
        return changed

    def restore_identities(self) -> bool:
        """After a rollback restored state: the devices the rollback made again."""
        changed = False
        for key, index in self.reidentified.items():
            changed = self.state.record_identity(key, index) or changed
        return changed

    # --- execute ----------------------------------------------------------------------------
    def execute(self, on_step: Callable[[int, p.Step], None] | None = None) -> None:
        for position, action in enumerate(self.actions):
            if on_step is not None:
                self._flush()  # a test hook sees every earlier step really done
                on_step(position, action.step)
            # a step that changes nothing (a second NIC's uplink, already up) needs
            # nothing made before it: the taps queued so far stay in the one batch
            if not ((action.verdict == "create" and action.step.batched)
                    or action.step.deferred or action.verdict in ("unchanged", "adopt")):
                self._flush()
            self._run(action)
        self._flush()
        self._flush_ovs()
        self.links = self.kernel.links()
        self._macs_after_udev()

    def _macs_after_udev(self) -> None:
        """Each device made with a random MAC has netmap's once udev has handled it: udev
        may have read the random one and written its own after netmap's (netlink/udev.py)."""
        # also one a killed run made: udev may handle it only now
        wanted = {action.step.target: mac for action in self.actions
                  if action.verdict != "adopt" and (mac := action.step.mac_after_made())}
        if not wanted or not udev.manages(self.kernel.netns):
            return
        udev.wait_handled([self.links[name].index for name in wanted if name in self.links])
        self.links = self.kernel.links()
        again = [(live.index, mac) for name, mac in wanted.items()
                 if (live := self.links.get(name)) is not None
                 and (live.address or "").lower() != mac.lower()]
        for index, mac in again:  # a device netmap made this run: deleting it undoes this too
            self.kernel.call(rtmsg.set_link(index, mac=mac))
        if again:
            self.links = self.kernel.links()

    def _run(self, action: Action) -> None:
        step = action.step
        if action.verdict in ("unchanged", "adopt"):
            self.outcomes.append((action.nic, step, action.verdict))
            return
        queued, ovs_queued = len(self._queue), len(self._ovs_outcomes)
        self._current = action
        try:
            step.apply(self, action)
        except OSError as err:  # a repair's too: what failed, where, and the fix
            raise ApplyError(f"{step.describe_change(action)}: {step.explain(err)}",
                             fix=step.fix_for_change(action, err), step=step) from err
        finally:
            self._current = None
        # else the batch, or the OVSDB transaction, reports it once made
        if len(self._queue) == queued and len(self._ovs_outcomes) == ovs_queued:
            self.outcomes.append((action.nic, step, action.verdict))

    def _flush_ovs(self) -> None:
        """All OVS changes of this realize, after the taps they name: one OVSDB transaction
        per database (a host has one), its undo registered before it is sent."""
        batches, self._ovs = self._ovs, {}
        for remote, batch in batches.items():
            connection = self.ovsdb(remote)
            # the undo does not wait for ovs-vswitchd: the database is what netmap changed,
            # and a vswitchd that is down (why the change failed) must not block it
            self.will_undo((f"undo the OVSDB changes on {remote}", functools.partial(
                connection.apply, list(reversed(batch.undo)), wait_vswitchd=False)))
            connection.apply(batch.changes)
        self.outcomes += self._ovs_outcomes
        self._ovs_outcomes = []

    # --- the changes, as a step's apply makes them ----------------------------------------------
    def will_undo(self, undo: Undo) -> None:
        """Register an undo before the kernel is asked: from here on, whatever happens,
        rollback() runs it (and it must tolerate the change never having happened)."""
        self.undo.append(undo)

    def _not_made(self, entry: Undo) -> None:
        """The kernel refused the making request: nothing of ours to undo."""
        with contextlib.suppress(ValueError):
            self.undo.remove(entry)

    def _make(self, request: tuple[int, int, bytes], undo: Undo | None) -> None:
        """Send the request that makes what `undo` undoes (None: covered already)."""
        if undo is not None:
            self.will_undo(undo)
        try:
            self.kernel.call(request)
        except rtnl.NetlinkError:
            if undo is not None:
                self._not_made(undo)
            raise

    def _ovs_batch(self, remote: str) -> ovs_steps.Batch:
        from netmap.netlink import ovs_steps

        assert self._current is not None  # called from a step's apply
        action = self._current
        self._ovs_outcomes.append((action.nic, action.step, action.verdict))
        return self._ovs.setdefault(remote, ovs_steps.Batch())

    def ovs_add_bridge(self, remote: str, name: str, datapath_type: str | None) -> None:
        self._ovs_batch(remote).add_bridge(name, datapath_type)

    def ovs_set_port(self, remote: str, port: str, bridge: str, tag: int | None,
                     external_ids: tuple[tuple[str, str], ...], *,
                     before: tuple[int | None, tuple[tuple[str, str], ...]] | None,
                     ) -> None:
        self._ovs_batch(remote).set_port(port, bridge, tag, external_ids, before)

    def undo_info(self, step: p.Step) -> dict:
        vf = self.vfs.get(step.resource)
        if vf is None:
            return {}
        return {"index": vf.index, "netdev": vf.netdev,
                "found": self._vf_found.get(step.resource, {})}

    def new_link(self, name: str, kind: str, *, mtu: int, lower: str | None = None,
                 options: LinkOptions, undo: Undo | None) -> None:
        self._make(rtmsg.new_link(name, kind, up=False, mtu=mtu,
                                  lower=self.index(lower) if lower else None,
                                  data=link_data(kind, options, self.index)), undo)

    def bring_up(self, name: str, *, mtu: int | None = None, mac: str | None = None,
                 master: str | None = None, up: bool = True) -> None:
        for request in rtmsg.up_without_ipv6(name=name, up=up, mtu=mtu, mac=mac,
                                             master=self.index(master) if master else None):
            self.kernel.call(request)

    def enslave(self, port: str, bridge: str, *, undo: Undo) -> None:
        self._make(rtmsg.set_link(self.index(port), master=self.index(bridge)), undo)

    def add_bridge_vlan(self, port: str, vid: int, *, access: bool, undo: Undo) -> None:
        self._make(rtmsg.bridge_vlan(self.index(port), vid, access=access), undo)

    def add_vxlan_remotes(self, name: str, remotes: Sequence[str]) -> None:
        for _remote, error in add_vxlan_remotes(self.kernel, self.index(name), remotes):
            raise error

    def repair(self, name: str, attrs: Mapping[str, object], *, undo: Undo) -> None:
        self.will_undo(undo)
        self.kernel.call(link_attrs(self.index(name), attrs, self.index))

    def delete_link(self, name: str) -> None:
        super().delete_link(name)
        self.links.pop(name, None)

    def remade(self, name: str) -> None:
        super().remade(name)
        self.links.pop(name, None)  # the next lookup reads the new device

    def claim_vf(self, pf: str, entry: dict[str, object], *, undo: Undo) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        self.will_undo(undo)
        try:  # IFLA_VFINFO_LIST on the PF: MAC, VLAN, spoof-check of one VF entry
            self.pyroute().link("set", index=self.index(pf), vf=dict(entry))
        except NetlinkError as err:
            self._not_made(undo)  # refused: the VF entry is as it was
            raise OSError(err.code, os.strerror(err.code)) from err

    def vf_entry(self, pf: str, index: int, vf_netdev: str | None = None) -> dict[str, object]:
        """What netmap changes on VF `index`'s entry of `pf` (MAC, VLAN, spoof-check), as
        it is now; {} if the driver does not report it."""
        reply = self.pyroute().link("get", index=self.index(pf), ext_mask=1)  # RTEXT_FILTER_VF
        entries = reply[0].get_attr("IFLA_VFINFO_LIST")
        for entry in entries.get_attrs("IFLA_VF_INFO") if entries is not None else ():
            mac = entry.get_attr("IFLA_VF_MAC") or {}
            if mac.get("vf") != index:
                continue
            found = {"mac": mac["mac"], "vlan": (entry.get_attr("IFLA_VF_VLAN") or {}).get(
                "vlan", 0)}
            spoofchk = entry.get_attr("IFLA_VF_SPOOFCHK")
            if spoofchk is not None and spoofchk.get("spoofchk") in (0, 1):
                found["spoofchk"] = spoofchk["spoofchk"]
            return {**found, **self._netdev_found(vf_netdev)} if vf_netdev else found
        return {}

    def _netdev_found(self, netdev: str) -> dict:
        """What a passthru macvtap and bringing it up change on a VF's netdev (its MAC, its
        IPv6 address generation), as it is now, for undo to put back."""
        reply = self.pyroute().link("get", index=self.index(netdev))[0]
        found: dict[str, object] = {"netdev_mac": reply.get_attr("IFLA_ADDRESS")}
        spec = reply.get_attr("IFLA_AF_SPEC")
        inet6 = spec.get_attr("AF_INET6") if spec is not None else None
        mode = inet6.get_attr("IFLA_INET6_ADDR_GEN_MODE") if inet6 is not None else None
        if mode is not None:
            found["netdev_addr_gen_mode"] = int(mode)
        return found

    def new_tap(self, name: str, *, multi_queue: bool, mtu: int, mac: str, master: str,
                undo: Undo) -> None:
        assert self._current is not None
        self._queue.append(_Queued(self._current, name, undo, mtu, mac, master=master,
                                   multi_queue=multi_queue))

    def new_macvtap(self, name: str, *, lower: str, mode: str, mac: str, mtu: int,
                    undo: Undo) -> None:
        assert self._current is not None
        self._queue.append(_Queued(self._current, name, undo, mtu, mac, lower=lower,
                                   mode=mode))

    def _flush(self) -> None:
        """Create the queued taps and macvtaps: one pipelined batch, acks matched back."""
        if not self._queue:
            return
        queue, self._queue = self._queue, []
        for queued in queue:  # every undo first: an interrupt inside the batch leaves nothing
            self.will_undo(queued.undo)
        taps = [q.name for q in queue if q.tap]
        multi_queue = [q.name for q in queue if q.tap and q.multi_queue]
        tap_errors = dict(zip(taps, self.kernel.create_taps(taps, multi_queue), strict=True))
        requests: list[tuple[int, int, bytes]] = []
        sent: list[tuple[_Queued, int, int]] = []  # queued, first request, request count
        first: tuple[p.Step, OSError] | None = None
        for queued in queue:
            if queued.tap:
                error = tap_errors[queued.name]
                if error is not None:
                    self._not_made(queued.undo)
                    first = first or (queued.action.step, error)
                    continue
                sent.append((queued, len(requests), 2))
                requests += rtmsg.up_without_ipv6(name=queued.name, mtu=queued.mtu,
                                                  mac=queued.mac,
                                                  master=self.index(queued.master)
                                                  if queued.master else None)
                continue
            # Created down, then IPv6 off, then up (up_without_ipv6), so IPv6 never starts on
            # it: add-up-then-disable costs the kernel 40 % more, and sends DAD. A
            # passthru macvtap ignores IFLA_ADDRESS at creation and inherits the uplink's
            # MAC, so its MAC is set again there (the kernel restores the uplink's on delete).
            sent.append((queued, len(requests), 3))
            requests.append(rtmsg.new_link(queued.name, "macvtap", up=False, mtu=queued.mtu,
                                           mac=queued.mac, lower=self.index(str(queued.lower)),
                                           data=rtmsg.macvtap_data(str(queued.mode))))
            requests += rtmsg.up_without_ipv6(
                name=queued.name, mac=queued.mac if queued.mode == "passthru" else None)
        errors = self.kernel.batch(requests)
        for queued, at, count in sent:
            action = queued.action
            if not queued.tap and errors[at] is not None:
                self._not_made(queued.undo)
            else:
                self.outcomes.append((action.nic, action.step, action.verdict))
            error = next((e for e in errors[at:at + count] if e is not None), None)
            if error is not None:
                first = first or (action.step, error)
        if first is not None:
            step, error = first
            raise ApplyError(f"{step.describe()}: {step.explain(error)}",
                             fix=step.fix_for(error), step=step) from error

    # --- undo -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._ovsdb is not None:
            self._ovsdb.close()
        super().close()

    def rollback(self) -> list[str]:
        """Undo this run's changes in reverse; what could not be undone."""
        failed = []
        while self.undo:
            what, undo = self.undo.pop()
            try:
                undo()
            except Exception as err:  # keep undoing the rest; report each failure
                failed.append(f"{what}: {err}")
        return failed

    # --- results ----------------------------------------------------------------------------
    def verify(self) -> list[str]:
        self._vlans = None
        problems = []
        for plan in self.plans:
            found = [problem for nic in plan.nics
                     for problem in endpoint_for(nic.mode).verify(nic, self.links, self)]
            problems += [f"{plan.guest}: {x}" for x in found] if len(self.plans) > 1 else found
        return problems

    def attachments(self, plan: p.Plan) -> list[dict[str, object]]:
        return [endpoint_for(nic.mode).attachment(nic, self.links, self)
                for nic in plan.nics]

    def owner(self, step: p.Step) -> str:
        """The guest `step` was decided for."""
        return self._owner[step.resource]

    def outcomes_by_guest(self) -> dict[str, list[tuple[int, p.Step, str]]]:
        """The outcomes of what was decided for each guest (a shared resource: for the
        first guest that named it)."""
        out: dict[str, list[tuple[int, p.Step, str]]] = {plan.guest: [] for plan in self.plans}
        for outcome in self.outcomes:
            out[self._owner[outcome[1].resource]].append(outcome)
        return out
