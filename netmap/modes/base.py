"""What a mode is: the one class every mode family implements. Pure (no kernel, no I/O).

A mode says everything netmap needs to know about one way of realizing a logical network on
a host: which bindings it accepts, its forwarding class, the devices it names, the plan steps
that build them, what drift verifies, how libvirt attaches a guest to it and whether the QEMU
helper can serve it. Callers ask the registry (netmap.modes.REGISTRY) for the mode object and
then ask it; none of them compares a mode's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from netmap.model.fleet import Binding, Guest, GuestNic, Network, Uplink

if TYPE_CHECKING:
    from netmap.steps import Step

# How a mode holds its uplink, which decides what can share one uplink (load's
# _check_uplink_sharing) and what drift expects on it:
#   port      the uplink is a port of the mode's bridge (one master, one rx_handler)
#   macvlan   macvlan/macvtap devices sit on the uplink (they too need its rx_handler)
#   whole     one guest owns the uplink (macvtap passthru)
#   underlay  the uplink only carries encapsulated frames from its own address
#   vf-pool   the uplink is an SR-IOV PF whose VFs the guests get
UplinkUse = Literal["port", "macvlan", "whole", "underlay", "vf-pool"]
# What a guest NIC of the mode uses up on its uplink (capacity rules): a VF of the pool, or
# the whole uplink.
Claim = Literal["vf", "uplink"]
# How libvirt attaches a guest to the mode's endpoint: a tap on a Linux bridge, a macvtap
# (<interface type='direct'>), or a libvirt network (SR-IOV: a VF pool).
LibvirtType = Literal["bridge", "direct", "network"]
# What a drift run verifies for a binding besides its uplink (drift_bindings.BindingDrift):
#   uplink-bridge  the bridge that enslaves the uplink
#   vxlan          the vxlan device of the network's VNI and its bridge
#   underlay       an address on the underlay to send from
#   ovs            the OVS bridge, the uplink's port, the guests' ports, ovs-vswitchd
DriftCheck = Literal["uplink-bridge", "vxlan", "underlay", "ovs"]


@dataclass(frozen=True)
class NicContext:
    """What a mode's `steps` build from: one guest NIC resolved on one host."""

    guest: Guest
    nic: GuestNic
    binding: Binding
    network: Network
    uplink: str
    vlan: int | None  # the binding's VLAN, else the network's
    mtu: int  # what the guest's endpoint carries
    devices: dict[str, str]  # role -> interface name, as `devices` named them


class Mode:
    """One mode (`name` as host files write it). Subclasses set the attributes and override
    the hooks that differ from these defaults."""

    name: str = ""
    family: ClassVar[str] = ""  # the module under netmap/modes that defines it
    semantic: str = ""  # forwarding class (DESIGN.md, "Modes and their forwarding semantics")
    uplink_use: ClassVar[UplinkUse]
    claims: ClassVar[Claim | None] = None
    overlay: ClassVar[bool] = False  # binds overlay (VNI) networks, never segment networks
    takes_bridge: ClassVar[bool] = False  # a binding may name its bridge (bridge = "...")
    # what kind of bridge `guest_bridge` is: a kernel (Linux) bridge, or an Open vSwitch one
    # (its own device of that name); a host holds one device of a name, so one kind each
    bridge_kind: ClassVar[str] = "Linux"
    takes_vxlan: ClassVar[bool] = False  # a binding may carry a [vxlan] table
    # Binding fields only this mode reads: a binding of another mode that sets one (to other
    # than its default) is refused, naming this mode
    owns_fields: ClassVar[tuple[str, ...]] = ()
    kernel_features: ClassVar[tuple[str, ...]] = ()  # what drift wants the kernel to offer
    drift_checks: ClassVar[tuple[DriftCheck, ...]] = ()
    # why macvlans on the uplink that netmap did not make break the mode (None: they do not)
    foreign_uppers_break: ClassVar[str | None] = None
    endpoint: ClassVar[str] = ""  # the kernel endpoint kind (netlink/endpoints.py) that builds it
    macvlan_mode: str | None = None  # the kernel's macvlan mode of its macvtap, if it makes one
    libvirt_type: ClassVar[LibvirtType]
    libvirt_forward: str | None = None  # <network><forward mode=...> (None: a VF pool's own)
    libvirt_direct_mode: str | None = None  # <interface type='direct'><source mode=...>
    # <virtualport type=...> a libvirt interface or network on the mode's bridge carries
    # (openvswitch: libvirt adds the port through OVSDB and tags it with <vlan>)
    libvirt_virtualport: str | None = None
    # the fd the QEMU bridge helper hands over: a tap on a bridge, a macvtap, a tap that is
    # an OVS port ("ovs-tap"), or None (it
    # cannot serve the mode; `qemu_refusal` says why)
    qemu_fd: ClassVar[Literal["tap", "macvtap", "ovs-tap"] | None] = None

    def __repr__(self) -> str:
        return f"<mode {self.name}>"

    # --- binding validation (load) ----------------------------------------------------------
    def network_problem(self, network: Network) -> tuple[str, str] | None:
        """(what is wrong, fix) when the mode cannot bind `network`, at the binding's mode key.
        The default: a segment network is fine, an overlay wants an overlay mode."""
        if network.vni is None or self.overlay:
            return None
        from netmap.modes import REGISTRY

        overlay = [m.name for m in REGISTRY.values() if m.overlay]
        return (f"is {self.name}, but network {network.name} is an overlay (vni "
                f"{network.vni})", " or ".join(f'use mode = "{name}"' for name in overlay))

    def uplink_problem(self, uplink: Uplink) -> tuple[str, str] | None:
        """(what is wrong, fix) when the mode cannot use `uplink`, at the mode key."""
        return None

    def fields_problem(self, binding: Binding) -> tuple[str, str, str] | None:
        """(key under the binding's table, what is wrong, fix) for values of the fields the
        mode owns (`owns_fields`)."""
        return None

    def sharing_problem(self, uplink: str,
                        users: list[Binding]) -> tuple[str, str, str, str] | None:
        """(network, key under its table, what is wrong, fix) when this mode's bindings
        cannot share `uplink` with the others in `users` (every binding on the uplink, two or
        more, this mode's among them). Asked before the rules every mode shares (its
        `uplink_use`)."""
        return None

    # --- MTU --------------------------------------------------------------------------------
    def underlay_overhead(self, binding: Binding) -> int:
        """Bytes the uplink carries on top of each guest frame (encapsulation)."""
        return 0

    def mtu_ceiling(self, binding: Binding, uplink: Uplink) -> tuple[int, str]:
        """The largest guest MTU the uplink allows, and what to name as the limit."""
        return uplink.mtu, f"uplink {uplink.name} MTU {uplink.mtu}"

    # --- device names -----------------------------------------------------------------------
    def devices(self, guest: str, nic: int, binding: Binding,
                network: Network) -> tuple[tuple[str, str], ...]:
        """The interfaces realize creates or uses for guest `guest`'s NIC `nic`, by role
        (bridge, tap, vxlan, vlan, macvtap)."""
        raise NotImplementedError

    def uplink_master(self, binding: Binding) -> str | None:
        """The bridge the mode enslaves the uplink to (None: it leaves the uplink alone)."""
        return None

    def guest_bridge(self, binding: Binding, network: Network) -> str | None:
        """The bridge a guest's tap joins (None: the guest gets no tap on a bridge)."""
        return None

    # --- plan -------------------------------------------------------------------------------
    def steps(self, ctx: NicContext) -> list[Step]:
        """The steps after the uplink's RequireLink that realize the NIC, in order."""
        raise NotImplementedError

    # --- rules ------------------------------------------------------------------------------
    def uses_vhost(self, devices: tuple[tuple[str, str], ...]) -> bool:
        """Whether the guest's frames pass through vhost-net (a tap or a macvtap does)."""
        return True

    # --- libvirt ----------------------------------------------------------------------------
    def libvirt_bridge_note(self, binding: Binding, network: Network) -> str:
        """What must exist before a libvirt <network> on the mode's bridge works."""
        return ""

    # --- QEMU helper ------------------------------------------------------------------------
    def qemu_refusal(self, network: Network, host: str) -> tuple[str, str]:
        """(why, fix) when the QEMU helper cannot serve the mode (qemu_fd is None)."""
        return (f"network {network.name!r} is {self.name} on {host}: the helper cannot "
                "serve it", "run 'netmap realize' and attach the guest as it prints")
