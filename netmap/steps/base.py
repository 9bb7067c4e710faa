"""What every step kind shares, and the two narrow views of the host it is given. Pure.

A step kind is one class that describes itself (and its undo), decides against the live host
(``decide``), makes its change (``apply``) and undoes it (``undo``). It never touches the
kernel itself: ``decide`` reads a `LiveHost`, ``apply`` asks `Changes` and ``undo`` asks
`Kernel`, the protocols below, which netmap/netlink implements (its transaction, and plain
rtnetlink for release). Rollback stays with that implementation: each making request is sent
with the undo of what it makes (`Undo`), registered before the request leaves.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Literal, Protocol, TypedDict

from netmap.errors import ApplyError

# Bridge FDB ageing, in clock_t (1/100 s), as IFLA_BR_AGEING_TIME wants it. Not 0: os-vif
# set 0 so frames were not lost while a live-migrated guest's MAC moved (LP #1715317) and
# that turned every bridge into a hub leaking tenant frames to all ports (OSSA-2019-004,
# LP #1837252). Not the kernel's 300 s either: a stale entry pointing at the old port would
# then black-hole a migrated MAC for minutes if the guest's RARP announce is lost. 30 s
# bounds that window while still learning.
BRIDGE_AGEING = 3000
DEFAULT_PVID = 1  # the bridge's default_pvid: untagged traffic of a vlan-filtering bridge
# a port VLAN's flags as the host view reports them (linux/if_bridge.h BRIDGE_VLAN_INFO_*)
VLAN_PVID, VLAN_UNTAGGED = 0x2, 0x4

# (what it undoes, for a person; the undo itself): what rollback runs, in reverse
Undo = tuple[str, Callable[[], None]]
# How release undoes a step, phase by phase: "ovsdb" (one OVSDB transaction for them all),
# "undo" (its own undo), "delete" (the link goes in one group delete with every other),
# "undo-last" (after every link is gone: an uplink goes down once nothing rides on it)
ReleasePhase = Literal["ovsdb", "undo", "delete", "undo-last"]


class LiveLink(Protocol):
    """A live interface as the kernel reports it (netlink's rtmsg.Link)."""

    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str | None: ...
    @property
    def up(self) -> bool: ...
    @property
    def mtu(self) -> int: ...
    @property
    def address(self) -> str | None: ...
    @property
    def master(self) -> int | None: ...
    @property
    def lower(self) -> int | None: ...
    @property
    def macvlan_mode(self) -> str | None: ...
    @property
    def vlan_id(self) -> int | None: ...
    @property
    def vxlan_link(self) -> int | None: ...
    @property
    def vlan_filtering(self) -> bool | None: ...
    @property
    def ageing(self) -> int | None: ...
    @property
    def carrier(self) -> bool | None: ...
    @property
    def multi_queue(self) -> bool | None: ...
    @property
    def tun_queues(self) -> int | None: ...


class VirtualFunctionView(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def netdev(self) -> str | None: ...
    @property
    def pci(self) -> str: ...
    @property
    def driver(self) -> str | None: ...


class SriovView(Protocol):
    @property
    def num_vfs(self) -> int: ...
    @property
    def total_vfs(self) -> int: ...
    @property
    def vfs(self) -> Sequence[VirtualFunctionView]: ...
    def vf(self, index: int) -> VirtualFunctionView | None: ...


class OvsPortView(Protocol):
    """A port of an Open vSwitch bridge as OVSDB holds it (netlink's ovsdb.OvsPort)."""

    @property
    def tag(self) -> int | None: ...
    @property
    def external_ids(self) -> dict[str, str]: ...
    @property
    def interface_ids(self) -> dict[str, str]: ...


class OvsBridgeView(Protocol):
    """An Open vSwitch bridge as OVSDB holds it (netlink's ovsdb.OvsBridge)."""

    @property
    def name(self) -> str: ...
    @property
    def ports(self) -> Mapping[str, OvsPortView]: ...
    @property
    def external_ids(self) -> dict[str, str]: ...


class StateView(Protocol):
    """What state tells a decision: who uses a resource, which device netmap made."""

    def made_ifindex(self, key: str) -> int | None: ...
    def users(self, key: str) -> list[str]: ...
    def resource(self, key: str) -> dict | None: ...
    def claimed_vfs(self, pf: str) -> dict[int, str]: ...


class StateRecord(StateView, Protocol):
    """What a step writes to state once the realize made it (netmap.state.HostState)."""

    def record_identity(self, key: str, ifindex: int) -> bool: ...


class LiveHost(Protocol):
    """What a step's decision reads: the live links (one dump), state, the plan's guest."""

    host: str
    guest: str

    @property
    def links(self) -> Mapping[str, LiveLink]: ...
    @property
    def state(self) -> StateView: ...
    def claimed_in_plan(self, pf: str) -> dict[int, str]:
        """VF index -> resource of the VFs of `pf` this plan claimed before."""
    def keep_vf(self, resource: str, vf: VirtualFunctionView) -> None:
        """The VF decide chose for `resource` (apply claims it)."""
    def vfs_used_outside(self, pf: str, candidates: Sequence[VirtualFunctionView],
                         ) -> dict[int, str]:
        """VF index -> why that VF of `pf` is used outside netmap (netlink's vf_pool)."""
    def vf_entry(self, pf: str, index: int) -> dict[str, object]:
        """VF `index`'s entry on `pf` as the kernel reports it now: mac, vlan and, where the
        driver reports it, spoofchk ({}: the driver reports no entries)."""
    def macvtap_holders(self, name: str) -> list[str]:
        """The processes that hold macvtap `name`'s char device open ("qemu (pid N)"):
        a running guest's NIC ([]: none seen, or no such macvtap)."""
    def queues(self, nic: int) -> int: ...
    def bridge_vlans(self) -> dict[str, dict[int, int]]: ...
    def addresses(self) -> dict[int, list[str]]: ...
    def ours(self, name: str) -> bool: ...
    def recreated_names(self) -> set[str]: ...
    def planned_names(self) -> set[str]: ...
    def sriov(self, pf: str) -> SriovView | None: ...
    def vxlan_differences(self, step: EnsureVxlanLike, live: LiveLink) -> list[str]: ...
    def ovs_bridges(self, remote: str) -> Mapping[str, OvsBridgeView]:
        """The bridges (and the plan's own ports) of the OVSDB at `remote`."""
    def ovs_bridges_planned(self) -> set[str]:
        """The OVS bridges this plan adds (decided so far)."""


class EnsureVxlanLike(Protocol):
    """The vxlan step as the host view compares a live vxlan device with it."""

    @property
    def vni(self) -> int: ...
    @property
    def underlay(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def group(self) -> str | None: ...
    @property
    def local(self) -> str | None: ...
    @property
    def remotes(self) -> tuple[str, ...]: ...


class LinkOptions(TypedDict, total=False):
    """A new link's kind-specific attributes (IFLA_INFO_DATA), by kind."""

    ageing: int  # bridge
    vlan_filtering: bool  # bridge
    vid: int  # vlan
    mode: str  # macvtap
    vni: int  # vxlan
    underlay: str  # vxlan
    port: int  # vxlan
    group: str | None  # vxlan
    local: str | None  # vxlan
    remotes: tuple[str, ...]  # vxlan


class Kernel(Protocol):
    """What undo needs: plain changes by name, each tolerating a device already gone."""

    def index_of(self, name: str) -> int | None: ...
    def delete_link(self, name: str) -> None: ...
    def set_up(self, name: str, up: bool) -> None: ...
    def set_master(self, port: str, bridge: str | None) -> None: ...
    def drop_bridge_vlan(self, port: str, vid: int) -> None: ...
    def set_vf(self, pf: str, entry: dict[str, object]) -> None: ...
    def set_attrs(self, name: str, attrs: Mapping[str, object]) -> None: ...
    def port_vlans(self, port: str) -> dict[int, int]: ...
    def add_port_vlan(self, port: str, vid: int, *, access: bool) -> None: ...
    def make_tap(self, name: str, *, multi_queue: bool, up: bool, mtu: int | None,
                 mac: str | None, master: str | None) -> None: ...
    def remade(self, name: str) -> None:
        """`name` is netmap's again, as a new device (state learns its ifindex)."""


class Changes(Kernel, Protocol):
    """What apply needs. A making request carries the undo of what it makes: registered
    before the request is sent, withdrawn only when the kernel refuses that request."""

    def new_link(self, name: str, kind: str, *, mtu: int, lower: str | None = None,
                 options: LinkOptions, undo: Undo | None) -> None:
        """Create `name` down (None: an undo registered earlier covers it)."""
    def bring_up(self, name: str, *, mtu: int | None = None, mac: str | None = None,
                 master: str | None = None, up: bool = True) -> None: ...
    def enslave(self, port: str, bridge: str, *, undo: Undo) -> None: ...
    def add_bridge_vlan(self, port: str, vid: int, *, access: bool, undo: Undo) -> None: ...
    def add_vxlan_remotes(self, name: str, remotes: Sequence[str]) -> None: ...
    def new_tap(self, name: str, *, multi_queue: bool, mtu: int, mac: str,
                master: str, undo: Undo) -> None: ...
    def new_macvtap(self, name: str, *, lower: str, mode: str, mac: str, mtu: int,
                    undo: Undo) -> None: ...
    def claim_vf(self, pf: str, entry: dict[str, object], *, undo: Undo) -> None: ...
    def repair(self, name: str, attrs: Mapping[str, object], *, undo: Undo) -> None: ...
    def will_undo(self, undo: Undo) -> None: ...
    def ovs_add_bridge(self, remote: str, name: str, datapath_type: str | None) -> None:
        """Add OVS bridge `name` (marked as netmap's). Every OVSDB change of a realize goes
        in one OVSDB transaction per remote, after the kernel's changes, its undo (the
        inverse of each change, in reverse) registered before it is sent."""
    def ovs_set_port(self, remote: str, port: str, bridge: str, tag: int | None,
                     external_ids: tuple[tuple[str, str], ...], *,
                     before: tuple[int | None, tuple[tuple[str, str], ...]] | None,
                     ) -> None:
        """Add `port` to OVS bridge `bridge` (before None: undone by taking it out), or set
        its tag and external_ids (undone by putting back `before`: tag, external_ids)."""
    def undo_info(self, step: Step) -> dict:
        """What undoing `step` needs to know beyond the step (a VF: its index, its entry)."""


def refuse(problem: str, fix: str) -> ApplyError:
    return ApplyError(problem, fix=fix)


@dataclass
class Action:
    """A step's verdict: create | unchanged | repair | recreate | adopt."""

    nic: int
    step: Step
    verdict: str
    repair: dict | None = None  # set_link keywords that repair it
    undo_repair: dict | None = None


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(field.name for field in fields(kind))
    return names


def _plain(value: object) -> bool:
    """A str, number, bool or None, or a tuple of them (immutable: safe to share)."""
    if isinstance(value, tuple):
        return all(map(_plain, value))
    return value is None or isinstance(value, (str, int, float))


@dataclass(frozen=True)
class Step:
    """One object in one state: the base of every step kind."""

    kind: ClassVar[str] = "step"
    batched: ClassVar[bool] = False  # created in one pipelined batch with its like
    # its change joins a transaction made after every kernel change (OVSDB's): it needs
    # no batch of taps flushed before it, so many guests' taps still go in one batch
    deferred: ClassVar[bool] = False
    feature: ClassVar[str | None] = None  # what the kernel must offer to create it
    # what a later step's decide asks whether the plan creates, under the step's target:
    # "link" (LiveHost.planned_names) or "ovs-bridge" (LiveHost.ovs_bridges_planned)
    planned_as: ClassVar[str | None] = None

    @property
    def resource(self) -> str:
        raise NotImplementedError

    @property
    def target(self) -> str:
        """The interface this step is about."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def describe_undo(self) -> str | None:
        """What undoing it does, for a person (None: nothing to undo)."""
        return None

    def as_dict(self) -> dict[str, object]:
        # asdict() walks and copies every value, and state records every step of every
        # guest (5 per OVS NIC).
        # A step's fields are plain values and tuples of them, the same read as they
        # are; only something else (a nested dataclass, a list) needs the walk.
        values = {name: getattr(self, name) for name in _field_names(type(self))}
        if not all(map(_plain, values.values())):
            values = asdict(self)
        return {"kind": self.kind, **values}

    def mac_after_made(self) -> str | None:
        """The MAC netmap gives the device this step makes only after the kernel made it
        with a random one (None: made with its MAC, or no device of its own): udev may take
        such a device for one it should give a MAC of its own (netlink/udev.py)."""
        return None

    def makes(self, verdict: str) -> bool:
        """Whether carrying out `verdict` makes something release must undo."""
        return verdict == "create"

    def record_made(self, state: StateRecord, links: Mapping[str, LiveLink],
                    verdict: str) -> bool:
        """Once the realize's changes are made (`links`: the host after them): record in
        state what a later run must know of what carrying out `verdict` made. Returns
        whether state changed."""
        return False

    # --- against the live host ------------------------------------------------------------
    def decide(self, live: LiveHost, nic: int) -> Action:
        raise NotImplementedError

    def features(self, verdict: str, repair: dict | None = None) -> list[str]:
        """What the kernel must offer for realize to carry out `verdict` on this step."""
        return [self.feature] if self.feature and verdict in ("create", "recreate") else []

    def apply(self, ops: Changes, action: Action) -> None:
        """Carry out the action's verdict (create, repair, recreate)."""
        if action.verdict == "repair":
            name = self.target
            ops.repair(name, action.repair or {}, undo=(
                f"restore {name}", lambda: ops.set_attrs(name, action.undo_repair or {})))
        elif action.verdict == "create":
            self.create(ops, (self.describe_undo() or "",
                              lambda: self.undo(ops, ops.undo_info(self))))

    def create(self, ops: Changes, undo: Undo) -> None:
        raise NotImplementedError

    def undo(self, kernel: Kernel, info: dict) -> None:
        """Undo the change (from this run, or from state at release); repeatable."""

    # --- release ----------------------------------------------------------------------------
    release_phase: ClassVar[ReleasePhase] = "undo"

    def replaced(self, live: LiveLink | None, made_ifindex: int | None) -> str | None:
        """Why the live object under this step's name is not the one netmap made (None: it
        is, or this step makes no object of its own)."""
        return None

    def leaves_a_bridge_that_stays(self, going: set[str], made: set[str],
                                   foreign: set[str]) -> str | None:
        """The port this step takes out of a bridge release keeps (None: no such port).
        `made`: links netmap made; `foreign`: names netmap's links lost to someone else."""
        return None

    def gone_with_its_master(self, links: Mapping[str, LiveLink], going: set[str],
                             foreign: set[str]) -> str | None:
        """Set when what the step did goes away with another object, so release has nothing
        to undo: the text after the resource key in release's report (None: undo it)."""
        return None

    def still_needed(self, links: Mapping[str, LiveLink], going: set[str],
                     leaving: set[str]) -> str | None:
        """Why netmap's object must stay although no netmap guest uses it any more (None:
        release undoes it). `going`: links release deletes and ports leaving with their
        bridge; `leaving`: ports netmap takes out of a bridge it did not make."""
        return None

    # what a guest's repair changes on this device that other guests share, which release
    # puts back once no guest that needs the change is left (netlink/shared_changes.py)
    restored: ClassVar[tuple[str, ...]] = ()

    def needs_changed(self, attr: str, old: object) -> bool:
        """Whether this step needs `attr` changed from `old` (old was not enough for it)."""
        return False

    # --- when the kernel says no -------------------------------------------------------------
    def describe_change(self, action: Action) -> str:
        """What carrying out `action` does, for a person: a failure names it."""
        if action.verdict == "repair" and action.repair:
            changes = ", ".join(f"{key} {value}" for key, value in action.repair.items())
            return f"repair {self.target} ({changes})"
        if action.verdict == "recreate":
            return f"make {self.target} again: {self.describe()}"
        return self.describe()

    def fix_for_change(self, action: Action, err: OSError) -> str | None:
        """The fix for `err` from carrying out `action` (None: none to give)."""
        return self.fix_for(err)

    def explain(self, err: OSError) -> str:
        if err.errno == errno.EEXIST:
            return f"{self.target} appeared meanwhile (another tool made it)"
        return err.strerror or str(err)

    def fix_for(self, err: OSError) -> str | None:
        return None


def master_name(links: Mapping[str, LiveLink], live: LiveLink) -> str | None:
    return next((n for n, link in links.items() if link.index == live.master), None)
