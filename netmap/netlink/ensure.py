"""The transaction behind realize: one ensure per step, each safe to repeat, each undoable.

decide() reads the live links (one dump) and state and gives every step a verdict
(verdicts.py: create, unchanged, repair, adopt, or a refusal) before anything is touched.
execute() then makes the changes; tap and macvtap creation is pipelined (one sendmsg for
many requests). Every change pushes its undo, and rollback() runs them in reverse.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from netmap import plan as p
from netmap.errors import ApplyError
from netmap.netlink import rtmsg, rtnl
from netmap.netlink.endpoints import ENDPOINTS
from netmap.netlink.kernel_steps import (
    add_vxlan_remotes,
    delete_quietly,
    explain,
    fix_for,
    make_access_port,
    run_inverse,
)
from netmap.netlink.sysfs import VirtualFunction
from netmap.netlink.verdicts import BATCHED, Action, decide_step
from netmap.state import PENDING, HostState


class Transaction:
    def __init__(self, kernel: rtnl.Rtnl, state: HostState, plan: p.Plan,
                 sysfs_root: str | Path | None = None) -> None:
        self.kernel = kernel
        self.state = state
        self.plan = plan
        self.sysfs_root = sysfs_root
        self.links = kernel.links()
        self._vlans: dict[str, dict[int, int]] | None = None
        self._addresses: dict[int, list[str]] | None = None
        self.actions: list[Action] = []
        self.undo: list[tuple[str, Callable[[], None]]] = []
        self.outcomes: list[tuple[int, p.Step, str]] = []
        self.vfs: dict[str, VirtualFunction] = {}  # resource -> the VF claimed
        self._vf_found: dict[str, dict] = {}  # resource -> its VF entry before the claim
        self._queue: list[Action] = []
        self._decided: set[str] = set()
        self._pyroute = None

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
        return self.state.owner_of_link(name) is not None

    def vf_for(self, nic: p.NicPlan) -> VirtualFunction | None:
        return next((self.vfs[s.resource] for s in nic.steps if s.resource in self.vfs), None)

    def ensure(self, nic: int, step: p.Step) -> None:
        """Used by the endpoint classes: the decide pass for one step (once per resource)."""
        if step.resource in self._decided:
            return
        self._decided.add(step.resource)
        self.actions.append(decide_step(self, nic, step))

    # --- decide -----------------------------------------------------------------------------
    def decide(self) -> None:
        for nic in self.plan.nics:
            ENDPOINTS[nic.mode].create(self, nic)

    def changes_planned(self) -> bool:
        return any(a.verdict in ("create", "repair") for a in self.actions)

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

    # --- execute ----------------------------------------------------------------------------
    def execute(self, on_step: Callable[[int, p.Step], None] | None = None) -> None:
        for position, action in enumerate(self.actions):
            if on_step is not None:
                self._flush()  # a test hook sees every earlier step really done
                on_step(position, action.step)
            if action.verdict == "create" and isinstance(action.step, BATCHED):
                self._queue.append(action)
                continue
            self._flush()
            self._run(action)
        self._flush()
        self.links = self.kernel.links()

    def _done(self, action: Action, what: str, undo: Callable[[], None]) -> None:
        self.undo.append((what, undo))
        self.outcomes.append((action.nic, action.step, action.verdict))

    def _run(self, action: Action) -> None:
        step = action.step
        if action.verdict in ("unchanged", "adopt"):
            self.outcomes.append((action.nic, step, action.verdict))
            return
        name = getattr(step, "name", None) or getattr(step, "port", "")
        if action.verdict == "repair":
            self._set(name, action.repair or {})
            self._done(action, f"restore {name}", lambda: self._set(
                name, action.undo_repair or {}))
            return
        try:
            self._create(step)
        except OSError as err:
            raise ApplyError(f"{step.describe()}: {explain(step, err)}",
                             fix=fix_for(step, err)) from err
        self._done(action, step.inverse().describe() if step.inverse() else "",
                   lambda: run_inverse(self.kernel, self.links, step, self._vf_info(step)))

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
        if "mode" in attrs:
            kind, data = "macvtap", rtmsg.macvtap_data(str(attrs.pop("mode")))
        master = self.index(attrs.pop("master")) if attrs.get("master") else (
            0 if "master" in attrs else None)
        attrs.pop("master", None)
        self.kernel.call(rtmsg.set_link(self.index(name), kind=kind, data=data or b"",
                                       master=master, **attrs))

    def _create(self, step: p.Step) -> None:
        k = self.kernel
        if isinstance(step, p.EnsureBridge):
            k.call(rtmsg.new_link(step.name, "bridge", mtu=step.mtu,
                                 data=rtmsg.bridge_data(step.ageing, step.vlan_filtering)))
            k.call(rtmsg.no_ipv6(step.name))
        elif isinstance(step, p.EnslavePort):
            k.call(rtmsg.set_link(self.index(step.port), master=self.index(step.bridge)))
        elif isinstance(step, p.BridgeVlan) and step.access:
            vids = self.kernel.bridge_vlans().get(step.port, {})
            make_access_port(k, self.index(step.port), step.vid,
                             drop_default=p.DEFAULT_PVID in vids)
        elif isinstance(step, p.BridgeVlan):
            k.call(rtmsg.bridge_vlan(self.index(step.port), step.vid, access=False))
        elif isinstance(step, p.EnsureVlanLink):
            k.call(rtmsg.new_link(step.name, "vlan", mtu=step.mtu, lower=self.index(step.lower),
                                 data=rtmsg.vlan_data(step.vid)))
        elif isinstance(step, p.EnsureVxlan):
            k.call(rtmsg.new_link(step.name, "vxlan", mtu=step.mtu, data=rtmsg.vxlan_data(
                step.vni, self.index(step.underlay), step.port, step.group, step.local)))
            k.call(rtmsg.no_ipv6(step.name))
            if step.remotes:  # unicast peers: head-end replication FDB entries
                for _remote, error in add_vxlan_remotes(k, self.index(step.name), step.remotes):
                    raise error
        elif isinstance(step, p.ClaimVf):
            self._claim_vf(step)
        elif isinstance(step, p.RequireLink):
            self.kernel.call(rtmsg.set_link(self.index(step.name), up=True))

    def _claim_vf(self, step: p.ClaimVf) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        vf = self.vfs[step.resource]
        try:  # IFLA_VFINFO_LIST on the PF: MAC, VLAN, spoof-check of one VF entry
            self.pyroute().link("set", index=self.index(step.pf), vf={
                "vf": vf.index, "mac": step.mac, "vlan": step.vlan or 0,
                "spoofchk": int(step.spoofchk)})
        except NetlinkError as err:
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
            self.kernel.call(rtmsg.set_link(0, name=step.macvtap, mac=step.mac, up=True,
                                           no_ipv6=True))

    def pyroute(self):  # -> pyroute2.IPRoute, opened once, only for SR-IOV VF entries
        if self._pyroute is None:
            from netmap.netlink import open_iproute

            self._pyroute = open_iproute(self.plan.netns)
        return self._pyroute

    def _flush(self) -> None:
        """Create the queued taps and macvtaps: one pipelined batch, acks matched back."""
        if not self._queue:
            return
        queue, self._queue = self._queue, []
        taps = [a.step.name for a in queue if isinstance(a.step, p.CreateTap)]  # type: ignore[attr-defined]
        tap_errors = dict(zip(taps, self.kernel.create_taps(taps), strict=True))
        requests: list[tuple[int, int, bytes]] = []
        sent: list[tuple[Action, int, int]] = []  # action, first request, request count
        first: tuple[p.Step, OSError] | None = None
        for action in queue:
            step = action.step
            if isinstance(step, p.CreateTap):
                error = tap_errors[step.name]
                if error is not None:
                    first = first or (step, error)
                    continue
                self._done(action, f"delete {step.name}",
                           lambda s=step: delete_quietly(self.kernel, s.name))
                sent.append((action, len(requests), 1))
                requests.append(rtmsg.set_link(0, name=step.name, up=True, mtu=step.mtu,
                                              mac=step.mac, master=self.index(step.bridge),
                                              no_ipv6=True))
                continue
            assert isinstance(step, p.CreateMacvtap)
            # Created down, then (next message) IPv6 off and up, so IPv6 never starts on it:
            # as fast as one add, where add-up-then-disable costs the kernel 40 % more. A
            # passthru macvtap ignores IFLA_ADDRESS at creation and inherits the uplink's
            # MAC, so its MAC is set again there (the kernel restores the uplink's on delete).
            sent.append((action, len(requests), 2))
            requests.append(rtmsg.new_link(step.name, "macvtap", up=False, mtu=step.mtu,
                                          mac=step.mac, lower=self.index(step.lower),
                                          data=rtmsg.macvtap_data(step.mode)))
            requests.append(rtmsg.set_link(0, name=step.name, up=True, no_ipv6=True,
                                          mac=step.mac if step.mode == "passthru" else None))
        errors = self.kernel.batch(requests)
        for action, at, count in sent:
            if isinstance(action.step, p.CreateMacvtap) and errors[at] is None:
                self._done(action, f"delete {action.step.name}",
                           lambda s=action.step: delete_quietly(self.kernel, s.name))
            error = next((e for e in errors[at:at + count] if e is not None), None)
            if error is not None:
                first = first or (action.step, error)
        if first is not None:
            step, error = first
            raise ApplyError(f"{step.describe()}: {explain(step, error)}",
                             fix=fix_for(step, error)) from error

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
        if self._pyroute is not None:
            self._pyroute.close()
            self._pyroute = None

    # --- results ----------------------------------------------------------------------------
    def verify(self) -> list[str]:
        self._vlans = None
        problems = []
        for nic in self.plan.nics:
            problems += ENDPOINTS[nic.mode].verify(nic, self.links, self)
        return problems

    def attachments(self) -> list[dict[str, object]]:
        return [ENDPOINTS[nic.mode].attachment(nic, self.links, self)
                for nic in self.plan.nics]
