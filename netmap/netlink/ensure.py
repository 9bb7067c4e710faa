"""The transaction behind realize: one ensure per step, each safe to repeat, each undoable.

decide() reads the live links (one dump) and state and gives every step a verdict
(verdicts.py: create, unchanged, repair, adopt, or a refusal) before anything is touched.
execute() then makes the changes; tap and macvtap creation is pipelined (one sendmsg for
many requests). Every change pushes its undo *before* the request that makes it is sent, and
rollback() runs them in reverse: whatever raises mid-way (Ctrl-C between a send and its ack,
ENOBUFS inside a batch, a bad argument between the two messages of a step) finds an undo for
everything the kernel may already have made. Each undo tolerates "already gone" (ENODEV);
only a definite refusal of the creating request withdraws it (EEXIST: the name is someone
else's, which must never be deleted).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from netmap import plan as p
from netmap.errors import ApplyError
from netmap.netlink import ovs_steps, ovsdb, rtmsg, rtnl
from netmap.netlink.endpoints import endpoint_for
from netmap.netlink.kernel_steps import (
    add_vxlan_remotes,
    delete_quietly,
    explain,
    fix_for,
    make_access_port,
    run_inverse,
)
from netmap.netlink.sysfs import VirtualFunction
from netmap.netlink.verdicts import BATCHED, KIND_OF, Action, decide_step
from netmap.state import PENDING, HostState

if TYPE_CHECKING:
    from pyroute2 import IPRoute

Undo = tuple[str, Callable[[], None]]


class Transaction:
    def __init__(self, kernel: rtnl.Rtnl, state: HostState, plan: p.Plan,
                 sysfs_root: str | Path | None = None) -> None:
        self.kernel = kernel
        self.state = state
        self.plan = plan
        self.sysfs_root = sysfs_root
        self.links: dict[str, rtmsg.Link] = {}  # read by decide(), inside realize's rollback
        self._vlans: dict[str, dict[int, int]] | None = None
        self._addresses: dict[int, list[str]] | None = None
        self.actions: list[Action] = []
        self.undo: list[tuple[str, Callable[[], None]]] = []
        self.outcomes: list[tuple[int, p.Step, str]] = []
        self.vfs: dict[str, VirtualFunction] = {}  # resource -> the VF claimed
        self._vf_found: dict[str, dict] = {}  # resource -> its VF entry before the claim
        self._queue: list[Action] = []
        self._decided: set[str] = set()
        self._pyroute: IPRoute | None = None
        self.reidentified: dict[str, int] = {}  # link resource -> ifindex, set by rollback
        # only the plan's own OVS ports are replicated
        self.ovsdb = ovsdb.Connections(ports={s.port for n in plan.nics for s in n.steps
                                              if isinstance(s, p.EnsureOvsPort)})
        self._ovs_queue: list[Action] = []

    # --- helpers ----------------------------------------------------------------------------
    def bridge_vlans(self) -> dict[str, dict[int, int]]:
        if self._vlans is None:
            self._vlans = self.kernel.bridge_vlans()
        return self._vlans

    def addresses(self) -> dict[int, list[str]]:
        """Global addresses per ifindex: one dump, only when a plan enslaves an uplink."""
        if self._addresses is None:
            self._addresses = self.kernel.addresses()
        return self._addresses

    def index(self, name: str) -> int:
        live = self.links.get(name) or self.kernel.get(name)
        if live is None:
            raise ApplyError(f"{name} vanished while realizing")
        self.links[name] = live
        return live.index

    def ours(self, name: str) -> bool:
        """State says netmap made `name`, and the live device is that one (its ifindex)."""
        if self.state.owner_of_link(name) is None:
            return False
        made, live = self.state.made_ifindex(f"link:{name}"), self.links.get(name)
        return made is None or live is None or live.index == made

    def vf_for(self, nic: p.NicPlan) -> VirtualFunction | None:
        return next((self.vfs[s.resource] for s in nic.steps if s.resource in self.vfs), None)

    def ensure(self, nic: int, step: p.Step) -> None:
        """Used by the endpoint classes: the decide pass for one step (once per resource)."""
        if step.resource in self._decided:
            return
        self._decided.add(step.resource)
        try:
            if isinstance(step, p.OVS_STEPS):
                planned = {a.step.name for a in self.actions
                           if isinstance(a.step, p.EnsureOvsBridge) and a.verdict == "create"}
                self.actions.append(ovs_steps.decide(self.ovsdb(step.ovsdb), self.plan.guest,
                                                     self.plan.host, nic, step, planned))
                return
            self.actions.append(decide_step(self, nic, step))
        except ApplyError as err:
            err.step = err.step or step  # the refusal is this step's
            raise

    # --- decide -----------------------------------------------------------------------------
    def decide(self) -> None:
        self.links = self.kernel.links()
        for nic in self.plan.nics:
            endpoint_for(nic.mode).create(self, nic)

    def changes_planned(self) -> bool:
        return any(a.verdict in ("create", "repair", "recreate") for a in self.actions)

    def recreated_names(self) -> set[str]:
        return {getattr(a.step, "name", "") for a in self.actions if a.verdict == "recreate"}

    def planned_names(self) -> set[str]:
        return {getattr(a.step, "name", "") for a in self.actions if a.verdict == "create"}

    # --- state ------------------------------------------------------------------------------
    def record_pending(self) -> None:
        """Before any change: the guest is pending and owns what it is about to create."""
        self.state.set_guest(self.plan.guest, PENDING)
        for action in self.actions:
            step = action.step
            created = action.verdict == "create" or (
                action.verdict == "repair" and isinstance(step, p.RequireLink))
            info = {}
            if step.resource in self.vfs:
                vf = self.vfs[step.resource]
                info = {"index": vf.index, "pci": vf.pci, "netdev": vf.netdev}
                if action.verdict == "create" and isinstance(step, p.ClaimVf):
                    # release puts the entry back as it was
                    info["found"] = self._vf_found[step.resource] = self._vf_entry(
                        step.pf, vf.index)
            self.state.use(self.plan.guest, step.resource, step=step.as_dict(),
                           created=created, info=info)
            if action.verdict == "recreate":  # state tells what the device is now
                self.state.resources[step.resource]["step"] = step.as_dict()

    def record_identities(self) -> bool:
        """After the changes: which device is netmap's, for every link it made (also one a
        crashed run made, finished now). Returns whether state changed."""
        changed = False
        for action in self.actions:
            kind = KIND_OF.get(type(action.step))
            live = self.links.get(getattr(action.step, "name", ""))
            if kind and live is not None and live.kind == kind and action.verdict != "adopt":
                changed = self.state.record_identity(action.step.resource, live.index) or changed
        return changed

    # --- execute ----------------------------------------------------------------------------
    def execute(self, on_step: Callable[[int, p.Step], None] | None = None) -> None:
        for position, action in enumerate(self.actions):
            if on_step is not None:
                self._flush()  # a test hook sees every earlier step really done
                on_step(position, action.step)
            if action.verdict == "create" and isinstance(action.step, BATCHED):
                self._queue.append(action)
                continue
            if isinstance(action.step, p.OVS_STEPS) and action.verdict in ("create", "repair"):
                self._ovs_queue.append(action)  # one OVSDB transaction, after the taps
                continue
            self._flush()
            self._run(action)
        self._flush()
        self._flush_ovs()
        self.links = self.kernel.links()

    def _flush_ovs(self) -> None:
        """All OVS changes of this realize: one OVSDB transaction per database (a host has
        one), its undo registered before it is sent."""
        batches: dict[str, ovs_steps.Batch] = {}
        for action in self._ovs_queue:
            assert isinstance(action.step, p.OVS_STEPS)
            batches.setdefault(action.step.ovsdb, ovs_steps.Batch()).add(action)
        for remote, batch in batches.items():
            connection = self.ovsdb(remote)
            # the undo does not wait for ovs-vswitchd: the database is what netmap changed,
            # and a vswitchd that is down (why the change failed) must not block it
            self._will_undo(f"undo the OVSDB changes on {remote}", functools.partial(
                connection.apply, list(reversed(batch.undo)), wait_vswitchd=False))
            connection.apply(batch.changes)
        self.outcomes += [(a.nic, a.step, a.verdict) for a in self._ovs_queue]
        self._ovs_queue = []

    def _will_undo(self, what: str, undo: Callable[[], None]) -> Undo:
        """Register an undo before the kernel is asked: from here on, whatever happens,
        rollback() runs it (and it must tolerate the change never having happened)."""
        entry = (what, undo)
        self.undo.append(entry)
        return entry

    def _not_made(self, entry: Undo) -> None:
        """The kernel refused the creating request: nothing of ours to undo."""
        with contextlib.suppress(ValueError):
            self.undo.remove(entry)

    def _run(self, action: Action) -> None:
        step = action.step
        if action.verdict in ("unchanged", "adopt"):
            self.outcomes.append((action.nic, step, action.verdict))
            return
        name: str = getattr(step, "name", "") or getattr(step, "port", "")
        if action.verdict == "recreate":
            assert isinstance(step, p.CreateTap)
            self._recreate_tap(step, action.undo_repair or {})
            self.outcomes.append((action.nic, step, action.verdict))
            return
        if action.verdict == "repair":
            self._will_undo(f"restore {name}", lambda: self._set(name, action.undo_repair or {}))
            self._set(name, action.repair or {})
            self.outcomes.append((action.nic, step, action.verdict))
            return
        inverse = step.inverse()
        entry = self._will_undo(inverse.describe() if inverse else "", lambda: run_inverse(
            self.kernel, self.links, step, self._vf_info(step)))
        try:
            self._create(step, entry)
        except OSError as err:
            raise ApplyError(f"{step.describe()}: {explain(step, err)}",
                             fix=fix_for(step, err), step=step) from err
        self.outcomes.append((action.nic, step, action.verdict))

    def _recreate_tap(self, step: p.CreateTap, old: dict) -> None:
        """Delete netmap's tap (no guest holds it: verdicts._requeue) and make it again in
        the queue mode the plan needs; undone by making it once more as it was."""
        self._will_undo(f"make {step.name} again as it was",
                        lambda: self._make_tap_again(step.name, old))
        delete_quietly(self.kernel, step.name)
        self.links.pop(step.name, None)
        error = self.kernel.create_taps([step.name], [step.name] if step.multi_queue else [])[0]
        if error is not None:
            raise ApplyError(f"{step.describe()}: {explain(step, error)}",
                             fix=fix_for(step, error)) from error
        for request in rtmsg.up_without_ipv6(name=step.name, mtu=step.mtu, mac=step.mac,
                                             master=self._master(step)):
            self.kernel.call(request)

    def _master(self, step: p.CreateTap) -> int | None:
        """The kernel bridge a tap joins; none for an OVS port (OVSDB adds it)."""
        return self.index(step.bridge) if step.bridge else None

    def _make_tap_again(self, name: str, old: dict) -> None:
        """The undo of a recreate: the tap as it was (queue mode, MTU, MAC, bridge, VLANs,
        link state). It is a new device, so its ifindex is remembered for state."""
        delete_quietly(self.kernel, name)
        error = self.kernel.create_taps([name], [name] if old.get("multi_queue") else [])[0]
        if error is not None:
            raise error
        master = self.index(old["master"]) if old.get("master") else None
        for request in rtmsg.up_without_ipv6(name=name, up=bool(old.get("up")),
                                             mtu=old.get("mtu"), mac=old.get("mac"),
                                             master=master):
            self.kernel.call(request)
        live = self.kernel.get(name)
        if live is None:
            raise ApplyError(f"{name} vanished while it was made again")
        vlans: dict[int, int] = old.get("vlans") or {}
        if master and vlans:  # the port's VLANs, and not the bridge's default one it got
            for vid, flags in vlans.items():
                self.kernel.call(rtmsg.bridge_vlan(
                    live.index, vid, access=bool(flags & rtmsg.BRIDGE_VLAN_INFO_PVID)))
            for vid in set(self.kernel.bridge_vlans().get(name, {})) - set(vlans):
                self.kernel.call(rtmsg.bridge_vlan(live.index, vid, access=False, add=False))
        self.links[name] = live
        self.reidentified[f"link:{name}"] = live.index

    def restore_identities(self) -> bool:
        """After a rollback restored state: the devices the rollback made again."""
        changed = False
        for key, index in self.reidentified.items():
            changed = self.state.record_identity(key, index) or changed
        return changed

    def _make(self, request: tuple[int, int, bytes], entry: Undo) -> None:
        """Send the request that creates what `entry` undoes."""
        try:
            self.kernel.call(request)
        except rtnl.NetlinkError:
            self._not_made(entry)
            raise

    def _vf_info(self, step: p.Step) -> dict:
        vf = self.vfs.get(step.resource)
        if vf is None:
            return {}
        return {"index": vf.index, "netdev": vf.netdev,
                "found": self._vf_found.get(step.resource, {})}

    def _vf_entry(self, pf: str, index: int) -> dict:
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
            return found
        return {}

    def _set(self, name: str, attrs: dict) -> None:
        attrs = dict(attrs)
        kind = data = None
        if "vlan_filtering" in attrs:
            kind, data = "bridge", rtmsg.vlan_filtering_data(bool(attrs.pop("vlan_filtering")))
        if "ageing" in attrs:
            kind = "bridge"
            data = (data or b"") + rtmsg._u32(rtmsg.IFLA_BR_AGEING_TIME, int(attrs.pop("ageing")))
        if "mode" in attrs:
            kind, data = "macvtap", rtmsg.macvtap_data(str(attrs.pop("mode")))
        master = self.index(attrs.pop("master")) if attrs.get("master") else (
            0 if "master" in attrs else None)
        attrs.pop("master", None)
        self.kernel.call(rtmsg.set_link(self.index(name), kind=kind, data=data or b"",
                                       master=master, **attrs))

    def _create(self, step: p.Step, entry: Undo) -> None:
        k = self.kernel
        if isinstance(step, p.EnsureBridge):
            self._make(rtmsg.new_link(step.name, "bridge", up=False, mtu=step.mtu,
                                      data=rtmsg.bridge_data(step.ageing, step.vlan_filtering)),
                       entry)
            for request in rtmsg.up_without_ipv6(name=step.name):
                k.call(request)
        elif isinstance(step, p.EnslavePort):
            self._make(rtmsg.set_link(self.index(step.port), master=self.index(step.bridge)),
                       entry)
        elif isinstance(step, p.BridgeVlan) and step.access:
            vids = self.kernel.bridge_vlans().get(step.port, {})
            make_access_port(k, self.index(step.port), step.vid,
                             drop_default=p.DEFAULT_PVID in vids,
                             send=lambda request: self._make(request, entry))
        elif isinstance(step, p.BridgeVlan):
            self._make(rtmsg.bridge_vlan(self.index(step.port), step.vid, access=False), entry)
        elif isinstance(step, p.EnsureVlanLink):
            self._make(rtmsg.new_link(step.name, "vlan", up=False, mtu=step.mtu,
                                      lower=self.index(step.lower),
                                      data=rtmsg.vlan_data(step.vid)), entry)
            for request in rtmsg.up_without_ipv6(name=step.name):
                k.call(request)
        elif isinstance(step, p.EnsureVxlan):
            self._make(rtmsg.new_link(step.name, "vxlan", up=False, mtu=step.mtu,
                                      data=rtmsg.vxlan_data(
                step.vni, self.index(step.underlay), step.port, step.group, step.local,
                step.remotes)), entry)
            for request in rtmsg.up_without_ipv6(name=step.name):
                k.call(request)
            if step.remotes:  # unicast peers: head-end replication FDB entries
                for _remote, error in add_vxlan_remotes(k, self.index(step.name), step.remotes):
                    raise error
        elif isinstance(step, p.ClaimVf):
            self._claim_vf(step, entry)
        elif isinstance(step, p.RequireLink):
            self.kernel.call(rtmsg.set_link(self.index(step.name), up=True))

    def _claim_vf(self, step: p.ClaimVf, entry: Undo) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        vf = self.vfs[step.resource]
        try:  # IFLA_VFINFO_LIST on the PF: MAC, VLAN, spoof-check of one VF entry
            self.pyroute().link("set", index=self.index(step.pf), vf={
                "vf": vf.index, "mac": step.mac, "vlan": step.vlan or 0,
                "spoofchk": int(step.spoofchk)})
        except NetlinkError as err:
            self._not_made(entry)  # refused: the VF entry is as it was
            raise OSError(err.code, os.strerror(err.code)) from err
        if step.macvtap and vf.netdev:
            try:
                self.kernel.call(rtmsg.new_link(step.macvtap, "macvtap", up=False, mtu=step.mtu,
                                               lower=self.index(vf.netdev),
                                               data=rtmsg.macvtap_data("passthru")))
            except OSError:  # the VF entry was set: give it back before reporting
                run_inverse(self.kernel, self.links, p.ClaimVf(step.pf, step.mac, step.vlan,
                                                               step.spoofchk), self._vf_info(step))
                raise
            # passthru ignores the MAC at creation (see _flush)
            for request in rtmsg.up_without_ipv6(name=step.macvtap, mac=step.mac):
                self.kernel.call(request)

    def pyroute(self) -> IPRoute:  # opened once, only for SR-IOV VF entries
        if self._pyroute is None:
            from netmap.netlink import open_iproute

            self._pyroute = open_iproute(self.plan.netns)
        return self._pyroute

    def _flush(self) -> None:
        """Create the queued taps and macvtaps: one pipelined batch, acks matched back."""
        if not self._queue:
            return
        queue, self._queue = self._queue, []
        # every undo first: an interrupt inside create_taps or the batch leaves nothing
        undos: dict[int, Undo] = {}
        for queued in queue:
            assert isinstance(queued.step, BATCHED)  # execute() queues nothing else
            name = queued.step.name
            undos[id(queued)] = self._will_undo(
                f"delete {name}", functools.partial(delete_quietly, self.kernel, name))
        taps = [a.step.name for a in queue if isinstance(a.step, p.CreateTap)]
        multi_queue = [a.step.name for a in queue
                       if isinstance(a.step, p.CreateTap) and a.step.multi_queue]
        tap_errors = dict(zip(taps, self.kernel.create_taps(taps, multi_queue), strict=True))
        requests: list[tuple[int, int, bytes]] = []
        sent: list[tuple[Action, int, int]] = []  # action, first request, request count
        first: tuple[p.Step, OSError] | None = None
        for action in queue:
            step = action.step
            if isinstance(step, p.CreateTap):
                error = tap_errors[step.name]
                if error is not None:
                    self._not_made(undos[id(action)])
                    first = first or (step, error)
                    continue
                sent.append((action, len(requests), 2))
                requests += rtmsg.up_without_ipv6(name=step.name, mtu=step.mtu, mac=step.mac,
                                                  master=self._master(step))
                continue
            assert isinstance(step, p.CreateMacvtap)
            # Created down, then IPv6 off, then up (up_without_ipv6), so IPv6 never starts on
            # it: add-up-then-disable costs the kernel 40 % more, and sends DAD. A
            # passthru macvtap ignores IFLA_ADDRESS at creation and inherits the uplink's
            # MAC, so its MAC is set again there (the kernel restores the uplink's on delete).
            sent.append((action, len(requests), 3))
            requests.append(rtmsg.new_link(step.name, "macvtap", up=False, mtu=step.mtu,
                                          mac=step.mac, lower=self.index(step.lower),
                                          data=rtmsg.macvtap_data(step.mode)))
            requests += rtmsg.up_without_ipv6(
                name=step.name, mac=step.mac if step.mode == "passthru" else None)
        errors = self.kernel.batch(requests)
        for action, at, count in sent:
            if isinstance(action.step, p.CreateMacvtap) and errors[at] is not None:
                self._not_made(undos[id(action)])
            else:
                self.outcomes.append((action.nic, action.step, action.verdict))
            error = next((e for e in errors[at:at + count] if e is not None), None)
            if error is not None:
                first = first or (action.step, error)
        if first is not None:
            step, error = first
            raise ApplyError(f"{step.describe()}: {explain(step, error)}",
                             fix=fix_for(step, error), step=step) from error

    # --- undo -------------------------------------------------------------------------------
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

    def close(self) -> None:
        self.ovsdb.close()
        if self._pyroute is not None:
            self._pyroute.close()
            self._pyroute = None

    # --- results ----------------------------------------------------------------------------
    def verify(self) -> list[str]:
        self._vlans = None
        problems = []
        for nic in self.plan.nics:
            problems += endpoint_for(nic.mode).verify(nic, self.links, self)
        return problems

    def attachments(self) -> list[dict[str, object]]:
        return [endpoint_for(nic.mode).attachment(nic, self.links, self)
                for nic in self.plan.nics]
