"""The transaction behind realize: one ensure per step, each safe to repeat, each undoable.

decide() looks at the live links (one dump) and state and gives every step a verdict:
``create`` (absent), ``unchanged`` (present and as planned), ``repair`` (netmap's own object
that drifted: MTU, master, mode, MAC, link state), ``adopt`` (a shared object someone else
made that is exactly what the plan needs: used, never deleted), or it refuses with the
reason, before anything is touched. execute() then makes the changes; tap and macvtap
creation is pipelined (one sendmsg for many requests). Every change pushes its undo, and
rollback() runs them in reverse.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netmap import plan as p
from netmap.errors import ApplyError
from netmap.netlink import rtnl
from netmap.netlink.endpoints import ENDPOINTS
from netmap.netlink.sysfs import VirtualFunction, sriov_info
from netmap.state import PENDING, HostState

BATCHED = (p.CreateTap, p.CreateMacvtap)
KIND_OF = {p.EnsureBridge: "bridge", p.EnsureVlanLink: "vlan", p.EnsureVxlan: "vxlan",
           p.CreateTap: "tun", p.CreateMacvtap: "macvtap"}


@dataclass
class Action:
    nic: int
    step: p.Step
    verdict: str  # create | unchanged | repair | adopt
    repair: dict | None = None  # set_link keywords that repair it
    undo_repair: dict | None = None


def _refuse(problem: str, fix: str) -> ApplyError:
    return ApplyError(problem, fix=fix)


class Transaction:
    def __init__(self, kernel: rtnl.Rtnl, state: HostState, plan: p.Plan,
                 sysfs_root: str | Path | None = None) -> None:
        self.kernel = kernel
        self.state = state
        self.plan = plan
        self.sysfs_root = sysfs_root
        self.links = kernel.links()
        self._vlans: dict[str, dict[int, int]] | None = None
        self.actions: list[Action] = []
        self.undo: list[tuple[str, Callable[[], None]]] = []
        self.outcomes: list[tuple[int, p.Step, str]] = []
        self.vfs: dict[str, VirtualFunction] = {}  # resource -> the VF claimed
        self._queue: list[Action] = []
        self._decided: set[str] = set()
        self._pyroute = None

    # --- helpers ----------------------------------------------------------------------------
    def bridge_vlans(self) -> dict[str, dict[int, int]]:
        if self._vlans is None:
            self._vlans = self.kernel.bridge_vlans()
        return self._vlans

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
        self.actions.append(self._decide(nic, step))

    # --- decide -----------------------------------------------------------------------------
    def decide(self) -> None:
        for nic in self.plan.nics:
            ENDPOINTS[nic.mode].create(self, nic)

    def changes_planned(self) -> bool:
        return any(a.verdict in ("create", "repair") for a in self.actions)

    def _planned_names(self) -> set[str]:
        return {getattr(a.step, "name", "") for a in self.actions if a.verdict == "create"}

    def _decide(self, nic: int, step: p.Step) -> Action:
        host = self.plan.host
        if isinstance(step, p.RequireLink):
            live = self.links.get(step.name)
            if live is None:
                raise _refuse(f"uplink {step.name} does not exist on {host}",
                              "check the NIC and its driver, or fix [uplinks] in the host "
                              "mapping")
            return Action(nic, step, "unchanged" if live.up else "repair", {"up": True},
                          {"up": False})
        if isinstance(step, p.EnslavePort):
            return self._decide_port(nic, step)
        if isinstance(step, p.BridgeVlan):
            vids = self.bridge_vlans().get(step.port, {})
            flags = rtnl.BRIDGE_VLAN_INFO_PVID | rtnl.BRIDGE_VLAN_INFO_UNTAGGED
            ok = step.vid in vids and (not step.access or (vids[step.vid] & flags == flags
                                                           and set(vids) == {step.vid}))
            return Action(nic, step, "unchanged" if ok else "create")
        if isinstance(step, p.ClaimVf):
            return self._decide_vf(nic, step)
        name = step.name  # type: ignore[attr-defined]
        live = self.links.get(name)
        if live is None:
            return Action(nic, step, "create")
        want_kind = KIND_OF[type(step)]
        mine = self.ours(name)
        if live.kind != want_kind:
            raise _refuse(f"{name} exists on {host} as a {live.kind or 'plain'} device, "
                          f"not the {want_kind} netmap would create",
                          f"remove or rename {name}, or choose another name in the mapping")
        if isinstance(step, BATCHED) and not mine:
            raise _refuse(f"{name} exists on {host} but netmap did not make it (a foreign "
                          "device holds the endpoint's name)",
                          f"remove {name} if it is stale ('ip link del {name}')")
        return self._compare(nic, step, live, mine)

    def _compare(self, nic: int, step: p.Step, live: rtnl.Link, mine: bool) -> Action:
        """Same kind: what differs, repairable on netmap's own devices, else refused."""
        want: dict[str, object] = {"up": True}
        identity: list[str] = []
        if isinstance(step, p.EnsureBridge):
            want["mtu"] = step.mtu
            if step.vlan_filtering and not live.vlan_filtering:
                want["vlan_filtering"] = True
        elif isinstance(step, p.EnsureVlanLink):
            want["mtu"] = step.mtu
            if live.vlan_id != step.vid or live.lower != self.links[step.lower].index:
                identity.append(f"VLAN {live.vlan_id} on ifindex {live.lower}")
        elif isinstance(step, p.EnsureVxlan):
            want["mtu"] = step.mtu
            if live.vni != step.vni or live.vxlan_link != self.links[step.underlay].index:
                identity.append(f"VNI {live.vni} on ifindex {live.vxlan_link}")
        elif isinstance(step, p.CreateTap):
            want.update(mtu=step.mtu, mac=step.mac, master=step.bridge)
        elif isinstance(step, p.CreateMacvtap):
            want.update(mtu=step.mtu, mac=step.mac, mode=step.mode)
            lower = self.links.get(step.lower)
            if lower is None or live.lower != lower.index:
                identity.append(f"it sits on ifindex {live.lower}, not on {step.lower}")
        name = step.name  # type: ignore[attr-defined]
        if identity:
            raise _refuse(f"{name} exists on {self.plan.host} but differs in what cannot be "
                          f"changed in place: {'; '.join(identity)}",
                          f"release the guest that uses {name} (or delete it) and realize "
                          "again")
        master = next((n for n, link in self.links.items() if link.index == live.master), None)
        have = {"up": live.up, "mtu": live.mtu, "mac": live.address,
                "master": master, "mode": live.macvlan_mode,
                "vlan_filtering": live.vlan_filtering}
        diff = {k: v for k, v in want.items() if have.get(k) != v}
        if not diff:
            return Action(nic, step, "unchanged" if mine else "adopt")
        if not mine and set(diff) - {"up", "vlan_filtering"}:
            changes = ", ".join(f"{k} {have.get(k)} (want {v})" for k, v in diff.items())
            raise _refuse(f"{name} on {self.plan.host} is not netmap's and differs: {changes}",
                          f"make {name} match, or let netmap create its own bridge (set "
                          "bridge = \"...\" in the binding)")
        return Action(nic, step, "repair", diff, {k: have.get(k) for k in diff})

    def _decide_port(self, nic: int, step: p.EnslavePort) -> Action:
        live = self.links.get(step.port)
        if live is None:
            if step.port in self._planned_names():
                return Action(nic, step, "create")
            raise _refuse(f"{step.port} does not exist on {self.plan.host}",
                          "check the uplink's name in the host mapping")
        bridge = self.links.get(step.bridge)
        if live.master is None:
            return Action(nic, step, "create")
        if bridge is not None and live.master == bridge.index:
            return Action(nic, step, "unchanged")
        other = next((n for n, link in self.links.items() if link.index == live.master), "?")
        raise _refuse(f"{step.port} is already a port of {other} on {self.plan.host}; an "
                      f"interface has one master, so it cannot join {step.bridge}",
                      f"take {step.port} out of {other}, or name bridge = \"{other}\" in "
                      "the binding")

    def _decide_vf(self, nic: int, step: p.ClaimVf) -> Action:
        claimed = self.state.resource(step.resource)
        info = sriov_info(step.pf, self.sysfs_root)
        if info is None:
            raise _refuse(f"{step.pf} on {self.plan.host} has no SR-IOV (no "
                          "sriov_totalvfs in sysfs)", "bind the network to an SR-IOV PF")
        if claimed and "index" in claimed["info"]:
            vf = info.vf(int(claimed["info"]["index"]))
            if vf is not None:
                self.vfs[step.resource] = vf
                return Action(nic, step, "unchanged")
        taken = self.state.claimed_vfs(step.pf)
        taken.update({vf.index: key for key, vf in self.vfs.items()
                      if key.startswith(f"vf:{step.pf}:")})  # claimed earlier in this plan
        free = [vf for vf in info.vfs if vf.index not in taken]
        if step.macvtap:
            free = [vf for vf in free if vf.netdev]
        if not free:
            raise _refuse(f"no free VF on {step.pf} ({self.plan.host}): {info.num_vfs} VF(s) "
                          f"enabled of {info.total_vfs}, {len(taken)} claimed by netmap",
                          f"release a guest that uses {step.pf}, or raise "
                          f"/sys/class/net/{step.pf}/device/sriov_numvfs")
        self.vfs[step.resource] = free[0]
        return Action(nic, step, "create")

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
            raise ApplyError(f"{step.describe()}: {_explain(step, err)}",
                             fix=_fix_for(step, err)) from err
        self._done(action, step.inverse().describe() if step.inverse() else "",
                   lambda: self.run_inverse(self.kernel, self.links, step, self._vf_info(step)))

    def _vf_info(self, step: p.Step) -> dict:
        vf = self.vfs.get(step.resource)
        return {"index": vf.index, "netdev": vf.netdev} if vf else {}

    def _set(self, name: str, attrs: dict) -> None:
        attrs = dict(attrs)
        kind = data = None
        if "vlan_filtering" in attrs:
            kind, data = "bridge", rtnl._attr(rtnl.IFLA_BR_VLAN_FILTERING,
                                              bytes([int(bool(attrs.pop("vlan_filtering")))]))
        if "mode" in attrs:
            kind, data = "macvtap", rtnl.macvtap_data(str(attrs.pop("mode")))
        master = self.index(attrs.pop("master")) if attrs.get("master") else (
            0 if "master" in attrs else None)
        attrs.pop("master", None)
        self.kernel.call(rtnl.set_link(self.index(name), kind=kind, data=data or b"",
                                       master=master, **attrs))

    def _create(self, step: p.Step) -> None:
        k = self.kernel
        if isinstance(step, p.EnsureBridge):
            k.call(rtnl.new_link(step.name, "bridge", mtu=step.mtu,
                                 data=rtnl.bridge_data(step.ageing, step.vlan_filtering)))
            k.call(rtnl.no_ipv6(step.name))
        elif isinstance(step, p.EnslavePort):
            k.call(rtnl.set_link(self.index(step.port), master=self.index(step.bridge)))
        elif isinstance(step, p.BridgeVlan):
            k.call(rtnl.bridge_vlan(self.index(step.port), step.vid, access=step.access))
            vids = self.kernel.bridge_vlans().get(step.port, {}) if step.access else {}
            if step.access and p.DEFAULT_PVID in vids and step.vid != p.DEFAULT_PVID:
                # an access port carries its one VLAN only, not the bridge's default
                k.call(rtnl.bridge_vlan(self.index(step.port), p.DEFAULT_PVID, access=False,
                                        add=False))
        elif isinstance(step, p.EnsureVlanLink):
            k.call(rtnl.new_link(step.name, "vlan", mtu=step.mtu, lower=self.index(step.lower),
                                 data=rtnl.vlan_data(step.vid)))
        elif isinstance(step, p.EnsureVxlan):
            k.call(rtnl.new_link(step.name, "vxlan", mtu=step.mtu, data=rtnl.vxlan_data(
                step.vni, self.index(step.underlay), step.port, step.group, step.local)))
            k.call(rtnl.no_ipv6(step.name))
            for remote in step.remotes:  # unicast peers: head-end replication FDB entries
                self.pyroute().fdb("append", ifindex=self.index(step.name),
                                   lladdr="00:00:00:00:00:00", dst=remote)
        elif isinstance(step, p.ClaimVf):
            self._claim_vf(step)
        elif isinstance(step, p.RequireLink):
            self.kernel.call(rtnl.set_link(self.index(step.name), up=True))

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
            self.kernel.call(rtnl.new_link(step.macvtap, "macvtap", mtu=step.mtu,
                                           mac=step.mac, lower=self.index(vf.netdev),
                                           data=rtnl.macvtap_data("passthru")))

    def pyroute(self):  # -> pyroute2.IPRoute, opened once, only for the rare calls
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
                requests.append(rtnl.set_link(0, name=step.name, up=True, mtu=step.mtu,
                                              mac=step.mac, master=self.index(step.bridge),
                                              no_ipv6=True))
                continue
            assert isinstance(step, p.CreateMacvtap)
            # Created down, then (next message) IPv6 off and up, so IPv6 never starts on it:
            # as fast as one add, where add-up-then-disable costs the kernel 40 % more. A
            # passthru macvtap ignores IFLA_ADDRESS at creation and inherits the uplink's
            # MAC, so its MAC is set again there (the kernel restores the uplink's on delete).
            sent.append((action, len(requests), 2))
            requests.append(rtnl.new_link(step.name, "macvtap", up=False, mtu=step.mtu,
                                          mac=step.mac, lower=self.index(step.lower),
                                          data=rtnl.macvtap_data(step.mode)))
            requests.append(rtnl.set_link(0, name=step.name, up=True, no_ipv6=True,
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
            raise ApplyError(f"{step.describe()}: {_explain(step, error)}",
                             fix=_fix_for(step, error)) from error

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
        if self._pyroute is not None:
            self._pyroute.close()
            self._pyroute = None
        return failed

    @staticmethod
    def run_inverse(kernel: rtnl.Rtnl, links: dict[str, rtnl.Link], step: p.Step,
                    info: dict) -> None:
        """Undo one step (from this run, or from state at release)."""
        def index(name: str) -> int | None:
            live = kernel.get(name)
            return live.index if live else None

        if isinstance(step, (p.EnsureBridge, p.EnsureVlanLink, p.EnsureVxlan, p.CreateTap,
                             p.CreateMacvtap)):
            delete_quietly(kernel, step.name)
        elif isinstance(step, p.EnslavePort):
            port = index(step.port)
            if port is not None:
                kernel.call(rtnl.set_link(port, master=0))
        elif isinstance(step, p.BridgeVlan):
            port = index(step.port)
            if port is not None:
                kernel.call(rtnl.bridge_vlan(port, step.vid, access=False, add=False))
        elif isinstance(step, p.RequireLink):
            port = index(step.name)
            if port is not None:
                kernel.call(rtnl.set_link(port, up=False))
        elif isinstance(step, p.ClaimVf) and "index" in info:
            if step.macvtap:
                delete_quietly(kernel, step.macvtap)
            from netmap.netlink import open_iproute

            pf = index(step.pf)
            if pf is not None:
                with open_iproute(kernel.netns) as ipr:
                    ipr.link("set", index=pf, vf={"vf": int(info["index"]),
                                                  "mac": "00:00:00:00:00:00", "vlan": 0})

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


def delete_quietly(kernel: rtnl.Rtnl, name: str) -> None:
    """Delete `name`; already gone is fine (undo must be repeatable)."""
    try:
        kernel.call(rtnl.del_link(name=name))
    except OSError as err:
        if err.errno != errno.ENODEV:
            raise


def _explain(step: p.Step, err: OSError) -> str:
    if isinstance(step, p.EnsureVlanLink) and err.errno == errno.EOPNOTSUPP:
        return ("this kernel has no 802.1Q VLAN support (module 8021q), so the sub-interface "
                f"{step.name} cannot exist")
    if isinstance(step, (p.EnsureBridge, p.BridgeVlan)) and err.errno == errno.EOPNOTSUPP:
        return ("this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING, which "
                "needs 802.1Q), so a bridge cannot carry the network's VLAN")
    if isinstance(step, p.ClaimVf) and err.errno == errno.EOPNOTSUPP:
        return f"{step.pf}'s driver does not manage VFs through netlink"
    if err.errno == errno.EEXIST:
        return f"{getattr(step, 'name', '')} appeared meanwhile (another tool made it)"
    if err.errno == errno.EBUSY and isinstance(step, (p.EnslavePort, p.CreateMacvtap)):
        return ("the uplink is busy: a bridge port and a macvtap lower device exclude each "
                "other (one rx_handler per interface)")
    return err.strerror or str(err)


def _fix_for(step: p.Step, err: OSError) -> str | None:
    if isinstance(step, p.EnsureVlanLink) and err.errno == errno.EOPNOTSUPP:
        return ("load 8021q ('modprobe 8021q'), or bind the network in bridge mode, which "
                "tags on a vlan-filtering bridge instead")
    if isinstance(step, (p.EnsureBridge, p.BridgeVlan)) and err.errno == errno.EOPNOTSUPP:
        return "use a kernel with 802.1Q and bridge VLAN filtering, or an untagged network"
    if isinstance(step, p.ClaimVf) and err.errno == errno.EOPNOTSUPP:
        return (f"check that {step.pf} is an SR-IOV PF whose driver sets VF MAC/VLAN "
                "through netlink (ip link set PF vf N mac ...)")
    return None
