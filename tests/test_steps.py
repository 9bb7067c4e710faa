"""Each step kind alone, without root: its decision against a host view it is handed, the
changes its apply asks for (each making request carrying its undo), and what that undo does.

The host view and the kernel are the protocols of netmap/steps/base.py, played here by
small fakes that record; the real implementation (netlink's transaction) is proven against
a kernel in test_realize, test_rollback_signals and test_foreign_devices.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import pytest

import netmap.steps as steps
from netmap.errors import ApplyError
from netmap.steps import (
    STEP_TYPES,
    BridgeVlan,
    ClaimVf,
    CreateMacvtap,
    CreateTap,
    EnslavePort,
    EnsureBridge,
    EnsureOvsBridge,
    EnsureOvsPort,
    EnsureVlanLink,
    EnsureVxlan,
    RequireLink,
    Step,
    step_from_dict,
)
from netmap.steps.base import Action, LinkOptions, Undo, VirtualFunctionView

SAMPLES: list[Step] = [
    RequireLink("eth0", 1500),
    EnsureBridge("br0", 1500, vlan_filtering=True),
    EnslavePort("eth0", "br0"),
    BridgeVlan("eth0", 100),
    BridgeVlan("nm0", 100, access=True),
    EnsureVlanLink("eth0.100", "eth0", 100, 1500),
    EnsureVxlan("vx7", 7, "eth0", 1450, remotes=("192.0.2.1", "192.0.2.2")),
    CreateTap("nm0", "fe:54:00:00:00:01", "52:54:00:00:00:01", 1500, "br0", multi_queue=True),
    CreateMacvtap("nm1", "eth0", "vepa", "52:54:00:00:00:02", 1500),
    ClaimVf("eno1", "52:54:00:00:00:03", 100, True, macvtap="nm2", mtu=1500),
    EnsureOvsBridge("br-int", "unix:/run/ovs/db.sock", "netdev"),
    EnsureOvsPort("nm0", "br-int", "unix:/run/ovs/db.sock", 100,
                  external_ids=(("netmap-owner", "vm1"), ("vm-id", "vm1"))),
]
OVSDB = "unix:/run/ovs/db.sock"


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None = None
    up: bool = True
    mtu: int = 1500
    address: str | None = None
    master: int | None = None
    lower: int | None = None
    macvlan_mode: str | None = None
    vlan_id: int | None = None
    vxlan_link: int | None = None
    vlan_filtering: bool | None = None
    ageing: int | None = None
    carrier: bool | None = None
    multi_queue: bool | None = None
    tun_queues: int | None = None


@dataclass(frozen=True)
class VirtualFunction:
    index: int
    netdev: str | None
    pci: str = "0000:01:10.0"
    driver: str | None = "igbvf"


@dataclass(frozen=True)
class Sriov:
    num_vfs: int
    total_vfs: int
    vfs: tuple[VirtualFunction, ...]

    def vf(self, index: int) -> VirtualFunction | None:
        return next((vf for vf in self.vfs if vf.index == index), None)


@dataclass
class State:
    """Resource key -> (guests, ifindex made, info)."""

    records: dict[str, tuple[list[str], int | None, dict]] = field(default_factory=dict)

    def made_ifindex(self, key: str) -> int | None:
        return self.records.get(key, ([], None, {}))[1]

    def users(self, key: str) -> list[str]:
        return list(self.records.get(key, ([], None, {}))[0])

    def resource(self, key: str) -> dict | None:
        record = self.records.get(key)
        return None if record is None else {"guests": record[0], "info": record[2]}

    def claimed_vfs(self, pf: str) -> dict[int, str]:
        return {int(info["index"]): key for key, (_, _, info) in self.records.items()
                if key.startswith(f"vf:{pf}:") and "index" in info}


@dataclass(frozen=True)
class OvsPort:
    tag: int | None = None
    external_ids: dict[str, str] = field(default_factory=dict)
    interface_ids: dict[str, str] = field(default_factory=dict)  # its Interface's


@dataclass(frozen=True)
class OvsBridge:
    name: str
    ports: dict[str, OvsPort] = field(default_factory=dict)
    external_ids: dict[str, str] = field(default_factory=dict)


@dataclass
class Host:
    """netmap.steps.base.LiveHost over fixed links; `mine` names the links netmap made."""

    links: dict[str, Link]
    mine: set[str] = field(default_factory=set)
    state: State = field(default_factory=State)
    vlans: dict[str, dict[int, int]] = field(default_factory=dict)
    pools: dict[str, Sriov] = field(default_factory=dict)
    host: str = "host-a"
    guest: str = "vm1"
    chosen: dict[str, VirtualFunctionView] = field(default_factory=dict)
    used_outside: dict[int, str] = field(default_factory=dict)  # VF index -> why
    ovs: dict[str, OvsBridge] = field(default_factory=dict)  # what OVSDB holds
    ovs_planned: set[str] = field(default_factory=set)  # OVS bridges the plan adds
    entries: dict[tuple[str, int], dict] = field(default_factory=dict)  # (PF, VF) -> entry
    held: dict[str, list[str]] = field(default_factory=dict)  # macvtap -> who holds it open

    def macvtap_holders(self, name: str) -> list[str]:
        return self.held.get(name, [])

    def ovs_bridges(self, remote: str) -> dict[str, OvsBridge]:
        assert remote == OVSDB
        return self.ovs

    def ovs_bridges_planned(self) -> set[str]:
        return self.ovs_planned

    def queues(self, nic: int) -> int:
        return 4

    def bridge_vlans(self) -> dict[str, dict[int, int]]:
        return self.vlans

    def addresses(self) -> dict[int, list[str]]:
        return {}

    def ours(self, name: str) -> bool:
        return name in self.mine

    def recreated_names(self) -> set[str]:
        return set()

    def planned_names(self) -> set[str]:
        return set()

    def sriov(self, pf: str) -> Sriov | None:
        return self.pools.get(pf)

    def vxlan_differences(self, step: object, live: object) -> list[str]:
        return []

    def claimed_in_plan(self, pf: str) -> dict[int, str]:
        return {vf.index: key for key, vf in self.chosen.items() if key.startswith(f"vf:{pf}:")}

    def keep_vf(self, resource: str, vf: VirtualFunctionView) -> None:
        self.chosen[resource] = vf

    def vfs_used_outside(self, pf: str, candidates: Sequence[VirtualFunctionView],
                         ) -> dict[int, str]:
        offered = {vf.index for vf in candidates}
        return {index: why for index, why in self.used_outside.items() if index in offered}

    def vf_entry(self, pf: str, index: int) -> dict[str, object]:
        return self.entries.get((pf, index), {})


class Kernel:
    """netmap.steps.base.Changes that records each call; `undos` holds the undo each making
    call carried, in the order they would be registered."""

    def __init__(self, vf: dict | None = None, vlans: dict[int, int] | None = None) -> None:
        self.calls: list[tuple] = []
        self.undos: list[Undo] = []
        self.vf = vf or {}
        self.vlans = vlans if vlans is not None else {1: 6}

    def _make(self, call: tuple, undo: Undo | None) -> None:
        if undo is not None:
            self.undos.append(undo)
        self.calls.append((*call, "undo" if undo is not None else "covered"))

    # Kernel (undo)
    def index_of(self, name: str) -> int | None:
        return 1

    def delete_link(self, name: str) -> None:
        self.calls.append(("delete", name))

    def set_up(self, name: str, up: bool) -> None:
        self.calls.append(("set_up", name, up))

    def set_master(self, port: str, bridge: str | None) -> None:
        self.calls.append(("set_master", port, bridge))

    def drop_bridge_vlan(self, port: str, vid: int) -> None:
        self.calls.append(("drop_vlan", port, vid))

    def set_vf(self, pf: str, entry: dict[str, object]) -> None:
        self.calls.append(("set_vf", pf, entry))

    def set_attrs(self, name: str, attrs: Mapping[str, object]) -> None:
        self.calls.append(("set_attrs", name, dict(attrs)))

    def port_vlans(self, port: str) -> dict[int, int]:
        return self.vlans

    def add_port_vlan(self, port: str, vid: int, *, access: bool) -> None:
        self.calls.append(("add_port_vlan", port, vid, access))

    def make_tap(self, name: str, *, multi_queue: bool, up: bool, mtu: int | None,
                 mac: str | None, master: str | None) -> None:
        self.calls.append(("make_tap", name, multi_queue, up, mtu, mac, master))

    def remade(self, name: str) -> None:
        self.calls.append(("remade", name))

    # Changes (apply)
    def new_link(self, name: str, kind: str, *, mtu: int, lower: str | None = None,
                 options: LinkOptions, undo: Undo | None) -> None:
        self._make(("new_link", name, kind, lower, dict(options)), undo)

    def bring_up(self, name: str, *, mtu: int | None = None, mac: str | None = None,
                 master: str | None = None, up: bool = True) -> None:
        self.calls.append(("up", name, mac))

    def enslave(self, port: str, bridge: str, *, undo: Undo) -> None:
        self._make(("enslave", port, bridge), undo)

    def add_bridge_vlan(self, port: str, vid: int, *, access: bool, undo: Undo) -> None:
        self._make(("add_vlan", port, vid, access), undo)

    def add_vxlan_remotes(self, name: str, remotes: Sequence[str]) -> None:
        self.calls.append(("remotes", name, tuple(remotes)))

    def new_tap(self, name: str, *, multi_queue: bool, mtu: int, mac: str, master: str,
                undo: Undo) -> None:
        self._make(("new_tap", name, multi_queue, master), undo)

    def new_macvtap(self, name: str, *, lower: str, mode: str, mac: str, mtu: int,
                    undo: Undo) -> None:
        self._make(("new_macvtap", name, lower, mode), undo)

    def claim_vf(self, pf: str, entry: dict[str, object], *, undo: Undo) -> None:
        self._make(("claim_vf", pf, entry), undo)

    def repair(self, name: str, attrs: Mapping[str, object], *, undo: Undo) -> None:
        self._make(("repair", name, dict(attrs)), undo)

    def will_undo(self, undo: Undo) -> None:
        self.undos.append(undo)
        self.calls.append(("will_undo", undo[0]))

    def undo_info(self, step: Step) -> dict:
        return self.vf

    def ovs_add_bridge(self, remote: str, name: str, datapath_type: str | None) -> None:
        self.calls.append(("ovs_add_bridge", remote, name, datapath_type))

    def ovs_set_port(self, remote: str, port: str, bridge: str, tag: int | None,
                     external_ids: tuple[tuple[str, str], ...], *,
                     before: tuple[int | None, tuple[tuple[str, str], ...]] | None,
                     ) -> None:
        self.calls.append(("ovs_set_port", remote, port, bridge, tag, external_ids, before))


def test_every_step_kind_is_registered_round_trips_and_names_its_undo() -> None:
    def kinds(cls: type[Step]) -> set[type[Step]]:
        found = set()
        for sub in cls.__subclasses__():
            found |= {sub} | kinds(sub)
        return found

    concrete = {cls for cls in kinds(Step) if cls.__module__.startswith("netmap.steps")
                and cls.kind != Step.kind}
    assert concrete == set(STEP_TYPES.values())
    assert {type(step) for step in SAMPLES} == concrete
    for step in SAMPLES:
        assert step_from_dict(step.as_dict()) == step
        assert step.describe_undo()


def test_as_dict_is_what_asdict_gives_and_never_shares_what_can_change() -> None:
    # as_dict reads plain fields directly (asdict's walk was a tenth of a realize's CPU)
    for step in SAMPLES:
        assert step.as_dict() == {"kind": step.kind, **asdict(step)}

    @dataclass(frozen=True)
    class Listed(Step):  # a field that is not a plain value takes asdict's walk, a copy
        kind = "listed-test"
        names: list[str]
        pairs: tuple[tuple[str, list[str]], ...] = ()

    step = Listed(["a"], (("k", ["v"]),))
    out = step.as_dict()
    assert out == {"kind": "listed-test", "names": ["a"], "pairs": (("k", ["v"]),)}
    out["names"].append("b")  # type: ignore[attr-defined]
    out["pairs"][0][1].append("w")  # type: ignore[index]
    assert step.names == ["a"]
    assert step.pairs == (("k", ["v"]),)


# the one making call each kind's create sends, and the kernel calls its undo makes
MADE_AND_UNDONE = [
    (EnsureBridge("br0", 1500, vlan_filtering=True),
     ("new_link", "br0", "bridge", None, {"ageing": 3000, "vlan_filtering": True}, "undo"),
     [("delete", "br0")]),
    (EnslavePort("eth0", "br0"), ("enslave", "eth0", "br0", "undo"),
     [("set_master", "eth0", None)]),
    (BridgeVlan("eth0", 100), ("add_vlan", "eth0", 100, False, "undo"),
     [("drop_vlan", "eth0", 100)]),
    (EnsureVlanLink("eth0.100", "eth0", 100, 1500),
     ("new_link", "eth0.100", "vlan", "eth0", {"vid": 100}, "undo"), [("delete", "eth0.100")]),
    (CreateTap("nm0", "fe:54:00:00:00:01", "52:54:00:00:00:01", 1500, "br0", True),
     ("new_tap", "nm0", True, "br0", "undo"), [("delete", "nm0")]),
    (CreateMacvtap("nm1", "eth0", "vepa", "52:54:00:00:00:02", 1500),
     ("new_macvtap", "nm1", "eth0", "vepa", "undo"), [("delete", "nm1")]),
]


@pytest.mark.parametrize(("step", "made", "undone"), MADE_AND_UNDONE,
                         ids=[type(s).__name__ for s, _, _ in MADE_AND_UNDONE])
def test_create_sends_one_making_request_with_its_undo(step: Step, made: tuple,
                                                       undone: list[tuple]) -> None:
    kernel = Kernel()
    step.apply(kernel, Action(0, step, "create"))
    assert [call for call in kernel.calls if call[-1] in ("undo", "covered")] == [made]
    assert [text for text, _ in kernel.undos] == [step.describe_undo()]
    kernel.calls.clear()
    kernel.undos[0][1]()
    assert kernel.calls == undone


def test_an_access_port_drops_the_default_vlan_after_the_request_that_carries_its_undo(
        ) -> None:
    kernel = Kernel(vlans={1: 6})
    step = BridgeVlan("nm0", 100, access=True)
    step.apply(kernel, Action(0, step, "create"))
    assert kernel.calls == [("add_vlan", "nm0", 100, True, "undo"), ("drop_vlan", "nm0", 1)]


def test_vxlan_create_adds_its_remotes_after_the_device_it_undoes() -> None:
    kernel = Kernel()
    step = EnsureVxlan("vx7", 7, "eth0", 1450, remotes=("192.0.2.1",))
    step.apply(kernel, Action(0, step, "create"))
    assert [call[0] for call in kernel.calls] == ["new_link", "up", "remotes"]
    assert kernel.calls[0][-1] == "undo"


GUEST_MAC = "52:54:00:00:00:03"
VF_ENTRY = {"vf": 3, "mac": GUEST_MAC, "vlan": 100, "spoofchk": 1}
ZERO = "00:00:00:00:00:00"


def test_a_vf_handed_over_whole_has_its_entry_set_and_put_back_as_found() -> None:
    found = {"mac": "02:00:00:00:00:09", "vlan": 7, "spoofchk": 0}
    kernel = Kernel(vf={"index": 3, "netdev": "eno1v3", "found": found})
    step = ClaimVf("eno1", GUEST_MAC, 100, True)
    step.apply(kernel, Action(0, step, "create"))
    assert kernel.calls == [("claim_vf", "eno1", VF_ENTRY, "undo")]
    kernel.calls.clear()
    kernel.undos[0][1]()
    assert kernel.calls == [("set_vf", "eno1", {"vf": 3, **found})]


def test_a_vf_as_passthru_macvtap_gets_the_mac_on_its_netdev_while_the_entry_holds_none(
        ) -> None:
    """igb refuses a VF netdev's MAC while the PF's entry holds one (EADDRNOTAVAIL in the VM
    on a VF reused after a release): the entry without a MAC first, then the netdev's MAC,
    then the entry's; the VF netdev up under the macvtap (a down lower sends nothing)."""
    kernel = Kernel(vf={"index": 3, "netdev": "eno1v3", "found": {}})
    step = ClaimVf("eno1", GUEST_MAC, 100, True, macvtap="nm2")
    step.apply(kernel, Action(0, step, "create"))
    assert kernel.calls == [
        ("claim_vf", "eno1", {**VF_ENTRY, "mac": ZERO}, "undo"),
        ("up", "eno1v3", None), ("set_up", "eno1v3", False),  # a reset: igb talks to it then
        ("set_attrs", "eno1v3", {"mac": GUEST_MAC}),
        ("set_vf", "eno1", VF_ENTRY),
        ("new_link", "nm2", "macvtap", "eno1v3", {"mode": "passthru"}, "covered"),
        ("up", "eno1v3", None),
        ("up", "nm2", GUEST_MAC)]


def test_undoing_a_vf_macvtap_frees_the_entry_before_the_netdev_gets_its_mac_back() -> None:
    entry = {"mac": ZERO, "vlan": 7, "spoofchk": 0}
    netdev = {"netdev_mac": "5a:f6:d0:0d:44:93", "netdev_addr_gen_mode": 0}
    kernel = Kernel(vf={"index": 3, "netdev": "eno1v3", "found": {**entry, **netdev}})
    step = ClaimVf("eno1", GUEST_MAC, 100, True, macvtap="nm2")
    step.apply(kernel, Action(0, step, "create"))
    kernel.calls.clear()
    kernel.undos[0][1]()
    assert kernel.calls == [
        ("delete", "nm2"),
        ("set_vf", "eno1", {"vf": 3, **entry}),  # no MAC on the entry: the netdev may change
        ("set_up", "eno1v3", False),
        ("set_attrs", "eno1v3", {"mac": "5a:f6:d0:0d:44:93", "addr_gen_mode": 0}),
        ("set_vf", "eno1", {"vf": 3, **entry})]  # again: igbvf reported its MAC to the PF


def test_an_entry_found_with_the_vf_netdevs_own_mac_is_not_made_an_enforced_one() -> None:
    """igbvf reports its own MAC to the PF, which shows it on the entry. Setting that MAC
    through the PF at release would enforce it and refuse the next claim's MAC: the netdev
    gets it back itself and reports it again."""
    own = "5a:f6:d0:0d:44:93"
    kernel = Kernel(vf={"index": 3, "netdev": "eno1v3",
                        "found": {"mac": own, "vlan": 0, "spoofchk": 1, "netdev_mac": own}})
    step = ClaimVf("eno1", GUEST_MAC, None, True, macvtap="nm2")
    step.undo(kernel, kernel.vf)
    assert kernel.calls == [
        ("delete", "nm2"), ("set_vf", "eno1", {"vf": 3, "mac": ZERO, "vlan": 0, "spoofchk": 1}),
        ("set_up", "eno1v3", False), ("set_attrs", "eno1v3", {"mac": own})]


def test_a_vf_netdev_that_refuses_the_mac_undoes_the_claim_before_reporting() -> None:
    class Refusing(Kernel):
        def set_attrs(self, name: str, attrs: Mapping[str, object]) -> None:
            super().set_attrs(name, attrs)
            if "mac" in attrs and attrs["mac"] == GUEST_MAC:
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    found = {"mac": ZERO, "vlan": 0, "spoofchk": 1, "netdev_mac": "5a:f6:d0:0d:44:93"}
    kernel = Refusing(vf={"index": 3, "netdev": "eno1v3", "found": found})
    step = ClaimVf("eno1", GUEST_MAC, 100, True, macvtap="nm2")
    with pytest.raises(OSError):
        step.apply(kernel, Action(0, step, "create"))
    assert kernel.calls[4:] == [
        ("delete", "nm2"), ("set_vf", "eno1", {"vf": 3, **found_entry(found)}),
        ("set_up", "eno1v3", False), ("set_attrs", "eno1v3", {"mac": "5a:f6:d0:0d:44:93"}),
        ("set_vf", "eno1", {"vf": 3, **found_entry(found)})]
    refused = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    assert f"refused MAC {GUEST_MAC}" in step.explain(refused)
    assert 'vf_attach = "hostdev"' in (step.fix_for(refused) or "")


def found_entry(found: dict) -> dict:
    return {key: found[key] for key in ("mac", "vlan", "spoofchk")}


def test_a_repair_carries_the_values_found_as_its_undo() -> None:
    host = Host({"br0": Link(5, "br0", "bridge", mtu=1400, ageing=3000)}, mine={"br0"})
    step = EnsureBridge("br0", 1500)
    action = step.decide(host, 0)
    assert (action.verdict, action.repair, action.undo_repair) == (
        "repair", {"mtu": 1500}, {"mtu": 1400})
    kernel = Kernel()
    step.apply(kernel, action)
    assert kernel.calls == [("repair", "br0", {"mtu": 1500}, "undo")]
    kernel.undos[0][1]()
    assert kernel.calls[-1] == ("set_attrs", "br0", {"mtu": 1400})


def test_netmaps_link_left_down_by_a_killed_run_comes_up_without_ipv6_as_create_does(
        ) -> None:
    """A run killed between making an 802.1Q link (down) and bringing it up: the next
    realize's repair brought it up in one request, with IPv6 address generation on (a
    link-local address, DAD), unlike every link realize makes (seen in the VM)."""
    vlan = EnsureVlanLink("eth0.100", "eth0", 100, 1500)
    host = Host({"eth0": Link(2, "eth0"),
                 "eth0.100": Link(9, "eth0.100", "vlan", up=False, lower=2, vlan_id=100)},
                mine={"eth0.100"})
    action = vlan.decide(host, 0)
    assert (action.verdict, action.repair) == ("repair", {"up": True})
    kernel = Kernel()
    vlan.apply(kernel, action)
    assert kernel.calls == [("will_undo", "restore eth0.100"), ("up", "eth0.100", None)]
    kernel.undos[0][1]()
    assert kernel.calls[-1] == ("set_attrs", "eth0.100", {"up": False})
    tap = SAMPLES[7]  # made, killed before the request that sets its MAC, bridge and up
    host = Host({"br0": Link(5, "br0", "bridge"),
                 "nm0": Link(9, "nm0", "tun", up=False, address="aa:bb:cc:00:00:01",
                             multi_queue=True)}, mine={"nm0"})
    kernel = Kernel()
    tap.apply(kernel, tap.decide(host, 0))
    assert kernel.calls == [
        ("repair", "nm0", {"mac": "fe:54:00:00:00:01", "master": "br0"}, "undo"),
        ("up", "nm0", None)]


def test_a_foreign_bridge_as_planned_is_adopted_and_one_that_differs_refused() -> None:
    same = Host({"br0": Link(5, "br0", "bridge", mtu=1500, ageing=3000)})
    assert EnsureBridge("br0", 1500).decide(same, 0).verdict == "adopt"
    other = Host({"br0": Link(5, "br0", "bridge", mtu=1500, ageing=30000)})
    with pytest.raises(ApplyError, match="not netmap's and differs: ageing 300s"):
        EnsureBridge("br0", 1500).decide(other, 0)


def test_a_foreign_device_with_an_endpoints_name_is_refused() -> None:
    host = Host({"nm0": Link(9, "nm0", "tun", multi_queue=False)})
    with pytest.raises(ApplyError, match="foreign device holds the endpoint's name"):
        SAMPLES[7].decide(host, 0)


def test_a_device_that_replaced_netmaps_is_refused_by_its_ifindex() -> None:
    host = Host({"br0": Link(12, "br0", "bridge")}, mine={"br0"},
                state=State({"link:br0": (["vm2"], 5, {})}))
    with pytest.raises(ApplyError, match=r"not the bridge netmap made \(ifindex 5, for vm2\)"):
        EnsureBridge("br0", 1500).decide(host, 0)


def test_a_tap_in_the_other_queue_mode_is_made_again_only_while_no_guest_holds_it() -> None:
    tap = SAMPLES[7]
    assert isinstance(tap, CreateTap)
    free = Host({"nm0": Link(9, "nm0", "tun", multi_queue=False, address="fe:00:00:00:00:01"),
                 "br0": Link(5, "br0", "bridge")}, mine={"nm0"})
    action = tap.decide(free, 0)
    assert action.verdict == "recreate"
    kernel = Kernel()
    tap.apply(kernel, action)
    # the undo that makes it again as it was comes before the delete
    assert [call[0] for call in kernel.calls] == ["will_undo", "delete", "new_tap"]
    held = replace(free, links={**free.links, "nm0": replace(free.links["nm0"], carrier=True)})
    with pytest.raises(ApplyError, match="a guest holds this one"):
        tap.decide(held, 0)


def test_an_uplink_too_small_is_refused_and_one_down_is_brought_up() -> None:
    with pytest.raises(ApplyError, match="has MTU 1500; the guest's endpoints need 9000"):
        RequireLink("eth0", 9000).decide(Host({"eth0": Link(2, "eth0")}), 0)
    action = RequireLink("eth0", 1500).decide(Host({"eth0": Link(2, "eth0", up=False)}), 0)
    assert (action.verdict, action.repair) == ("repair", {"up": True})
    assert RequireLink("eth0").makes("repair")
    assert not EnsureBridge("br0", 1500).makes("repair")


def test_a_vf_is_chosen_free_of_state_and_of_earlier_claims_in_the_plan() -> None:
    pool = Sriov(3, 8, tuple(VirtualFunction(i, f"eno1v{i}") for i in range(3)))
    host = Host({}, pools={"eno1": pool},
                state=State({"vf:eno1:52:54:00:00:00:aa": (["vm2"], None, {"index": 0})}))
    first = ClaimVf("eno1", "52:54:00:00:00:01", None, True)
    second = ClaimVf("eno1", "52:54:00:00:00:02", None, True)
    third = ClaimVf("eno1", "52:54:00:00:00:03", None, True)
    assert first.decide(host, 0).verdict == "create"
    assert second.decide(host, 1).verdict == "create"
    assert [host.chosen[s.resource].index for s in (first, second)] == [1, 2]
    with pytest.raises(ApplyError, match="no free VF on eno1"):
        third.decide(host, 2)


def test_a_vf_used_outside_netmap_is_skipped_and_named_when_none_is_left() -> None:
    pool = Sriov(2, 8, tuple(VirtualFunction(i, f"eno1v{i}") for i in range(2)))
    host = Host({}, pools={"eno1": pool}, used_outside={0: "eno1v0 is up"})
    first = ClaimVf("eno1", "52:54:00:00:00:01", None, True)
    assert first.decide(host, 0).verdict == "create"
    assert host.chosen[first.resource].index == 1
    with pytest.raises(ApplyError, match="1 used outside netmap; VF 0: eno1v0 is up"):
        ClaimVf("eno1", "52:54:00:00:00:02", None, True).decide(host, 1)


def test_a_mac_another_guest_holds_on_the_pf_is_refused_at_the_claim() -> None:
    pool = Sriov(2, 8, tuple(VirtualFunction(i, f"eno1v{i}") for i in range(2)))
    claim = ClaimVf("eno1", "52:54:00:00:00:aa", None, True)
    host = Host({}, pools={"eno1": pool},
                state=State({claim.resource: (["vm2"], None, {"index": 0})}))
    with pytest.raises(ApplyError, match=r"already set on VF 0 of eno1 .* for vm2"):
        claim.decide(host, 0)


def claimed_by_a_killed_run(step: ClaimVf, entry: dict, links: dict[str, Link]) -> Host:
    """A host whose state records `step`'s claim of VF 3 for vm1 (recorded before the
    kernel was asked, as realize does) and whose VF 3 entry and links are `entry`, `links`."""
    pool = Sriov(4, 8, tuple(VirtualFunction(i, f"eno1v{i}") for i in range(4)))
    found = {"mac": ZERO, "vlan": 0, "spoofchk": 1, "netdev_mac": "5a:f6:d0:0d:44:93"}
    return Host(links, pools={"eno1": pool}, entries={("eno1", 3): entry},
                state=State({step.resource: (["vm1"], None, {"index": 3, "found": found})}))


def test_a_vf_claim_a_killed_run_recorded_but_never_made_is_made_again() -> None:
    """realize records a claim before it sets the VF's entry; killed in between, the next
    realize found the record and called the claim done: a hostdev VF without its MAC and
    VLAN, a vf_attach = "macvtap" VF without its macvtap (the next realize's verify failed,
    seen in the VM). The live entry and links decide, on the VF the record names."""
    whole = ClaimVf("eno1", GUEST_MAC, 100, True)
    untouched = {"mac": ZERO, "vlan": 0, "spoofchk": 1}
    action = whole.decide(claimed_by_a_killed_run(whole, untouched, {}), 0)
    assert (action.verdict, whole.makes(action.verdict)) == ("repair", True)
    done = {"mac": GUEST_MAC.upper(), "vlan": 100, "spoofchk": 1}
    host = claimed_by_a_killed_run(whole, done, {})
    assert whole.decide(host, 0).verdict == "unchanged"
    assert host.chosen[whole.resource].index == 3
    step = ClaimVf("eno1", GUEST_MAC, 100, True, macvtap="nm2")
    netdev = Link(7, "eno1v3", up=True, address=GUEST_MAC)
    tap = Link(8, "nm2", "macvtap", lower=7, macvlan_mode="passthru", address=GUEST_MAC)
    halves = [{"eno1v3": netdev},  # killed before the macvtap
              {"eno1v3": replace(netdev, up=False), "nm2": replace(tap, up=False)},
              {"eno1v3": netdev, "nm2": tap}]
    for links in halves:
        host = claimed_by_a_killed_run(step, {**done, "mac": ZERO}, links)
        assert step.decide(host, 0).verdict == "repair", links
    assert step.decide(claimed_by_a_killed_run(step, done, halves[-1]), 0).verdict == \
        "unchanged"
    foreign = {"eno1v3": netdev, "nm2": Link(8, "nm2", "tun")}
    with pytest.raises(ApplyError, match="a foreign device holds the name"):
        step.decide(claimed_by_a_killed_run(step, done, foreign), 0)


def test_a_vf_claim_made_again_first_puts_back_what_the_killed_run_made() -> None:
    """The killed run may have made the macvtap and given the VF netdev the guest's MAC
    (igb then refuses the claim's first step while the entry holds it): undone as release
    would undo it, from the entry as that run found it, then claimed as a first claim; the
    undo that restores the VF as found comes before any change."""
    found = {"mac": ZERO, "vlan": 0, "spoofchk": 1, "netdev_mac": "5a:f6:d0:0d:44:93"}
    kernel = Kernel(vf={"index": 3, "netdev": "eno1v3", "found": found})
    step = ClaimVf("eno1", GUEST_MAC, 100, True, macvtap="nm2")
    step.apply(kernel, Action(0, step, "repair", repair={"redo": ["nm2 is missing"]}))
    assert kernel.calls[0] == ("will_undo", step.describe_undo())
    assert kernel.calls[1:6] == [
        ("delete", "nm2"), ("set_vf", "eno1", {"vf": 3, **found_entry(found)}),
        ("set_up", "eno1v3", False), ("set_attrs", "eno1v3", {"mac": found["netdev_mac"]}),
        ("set_vf", "eno1", {"vf": 3, **found_entry(found)})]
    assert kernel.calls[6] == ("claim_vf", "eno1", {**VF_ENTRY, "mac": ZERO}, "undo")
    assert kernel.calls[-1] == ("up", "nm2", GUEST_MAC)
    whole = ClaimVf("eno1", GUEST_MAC, 100, True)
    kernel = Kernel(vf={"index": 3, "netdev": "eno1v3", "found": found_entry(found)})
    whole.apply(kernel, Action(0, whole, "repair", repair={"redo": ["VF 3 ..."]}))
    assert kernel.calls == [("will_undo", whole.describe_undo()),
                            ("claim_vf", "eno1", VF_ENTRY, "undo")]


MACVTAP_CLAIM = ClaimVf("eno1", GUEST_MAC, 100, True, macvtap="nm2")
CLAIMED_NETDEV = Link(7, "eno1v3", up=True, address=GUEST_MAC)
CLAIMED_TAP = Link(8, "nm2", "macvtap", lower=7, macvlan_mode="passthru", address=GUEST_MAC)
CLAIMED_ENTRY = {"mac": GUEST_MAC, "vlan": 100, "spoofchk": 1}
QEMU = ["qemu-system-x86 (pid 4242)"]


def claimed_and_done(entry: dict, links: dict[str, Link], *, done: bool = True,
                     held: list[str] | None = None) -> Host:
    """MACVTAP_CLAIM's VF 3 as a realize that finished left it (state marks it done), then
    changed by someone to `entry` and `links`; `held`: who holds nm2 open."""
    host = claimed_by_a_killed_run(MACVTAP_CLAIM, entry, links)
    host.state.records[MACVTAP_CLAIM.resource][2]["done"] = done
    host.held = {"nm2": held or []}
    return host


def test_a_done_vf_claim_that_drifted_is_repaired_in_place_and_never_made_again() -> None:
    """A running guest holds its passthru macvtap (QEMU has /dev/tapN open): the repair of a
    done claim that drifted deleted the macvtap and claimed the VF again, which cut the
    guest's NIC. Now each drifted value is set in place (the VF netdev's MTU before the
    macvtap's: a macvtap's MTU never exceeds its lower's), with an undo that sets back
    each value found, in reverse."""
    drifted = {"eno1v3": replace(CLAIMED_NETDEV, mtu=1400),
               "nm2": replace(CLAIMED_TAP, mtu=1400, up=False)}
    for held in (QEMU, []):  # in use or not: a done claim is never claimed again
        host = claimed_and_done({**CLAIMED_ENTRY, "vlan": 999, "spoofchk": 0}, drifted,
                                held=held)
        action = MACVTAP_CLAIM.decide(host, 0)
        assert action.verdict == "repair"
        assert "redo" not in (action.repair or {})
        kernel = Kernel(vf={"index": 3, "netdev": "eno1v3", "found": {}})
        MACVTAP_CLAIM.apply(kernel, action)
        assert kernel.calls == [
            ("will_undo", "put VF 3 of eno1 back as it was before the repair"),
            ("set_vf", "eno1", {"vf": 3, "vlan": 100, "spoofchk": 1}),
            ("set_attrs", "eno1v3", {"mtu": 1500}),
            ("set_attrs", "nm2", {"mtu": 1500}), ("up", "nm2", None)]
        kernel.calls.clear()
        kernel.undos[0][1]()
        assert kernel.calls == [
            ("set_up", "nm2", False), ("set_attrs", "nm2", {"mtu": 1400}),
            ("set_attrs", "eno1v3", {"mtu": 1400}),
            ("set_vf", "eno1", {"vf": 3, "vlan": 999, "spoofchk": 0})]
    asked = claimed_and_done(CLAIMED_ENTRY, {"eno1v3": CLAIMED_NETDEV, "nm2": CLAIMED_TAP})
    assert MACVTAP_CLAIM.decide(asked, 0).verdict == "unchanged"


def test_a_vf_whose_mac_moved_gets_it_back_while_its_entry_holds_none() -> None:
    """Someone set another MAC on the VF's entry and the VF took it: igb refuses a VF's own
    MAC change while its entry enforces one, so the entry holds none meanwhile, as at the
    claim; the undo puts the other MAC back the same way."""
    other = "02:00:00:00:00:99"
    host = claimed_and_done({**CLAIMED_ENTRY, "mac": other},
                            {"eno1v3": replace(CLAIMED_NETDEV, address=other),
                             "nm2": replace(CLAIMED_TAP, address=other)}, held=QEMU)
    action = MACVTAP_CLAIM.decide(host, 0)
    kernel = Kernel()
    MACVTAP_CLAIM.apply(kernel, action)
    assert kernel.calls[1:] == [
        ("set_vf", "eno1", {"vf": 3, "mac": ZERO}),
        ("set_attrs", "eno1v3", {"mac": GUEST_MAC}), ("set_attrs", "nm2", {"mac": GUEST_MAC}),
        ("set_vf", "eno1", {"vf": 3, "mac": GUEST_MAC})]
    kernel.calls.clear()
    kernel.undos[0][1]()
    assert kernel.calls == [
        ("set_vf", "eno1", {"vf": 3, "mac": ZERO}),
        ("set_attrs", "nm2", {"mac": other}), ("set_attrs", "eno1v3", {"mac": other}),
        ("set_vf", "eno1", {"vf": 3, "mac": other})]


def test_a_done_claim_whose_vf_someone_elses_guest_took_is_refused_not_repaired() -> None:
    """A libvirt hostdev network takes a VF of its pool by its own count, netmap's claim or
    not: the VF leaves igbvf for vfio-pci and its entry gets that guest's MAC and VLAN (seen
    in the VM lab). realize "repaired" the entry under the running guest; now it refuses,
    changing nothing, and names the VF, the driver, the MAC found and the fix."""
    whole = ClaimVf("eno1", GUEST_MAC, 100, True)
    other = "52:54:00:77:00:01"
    host = claimed_by_a_killed_run(whole, {"mac": other, "vlan": 300, "spoofchk": 1}, {})
    host.state.records[whole.resource][2]["done"] = True
    host.pools["eno1"] = Sriov(4, 8, tuple(
        VirtualFunction(i, None if i == 3 else f"eno1v{i}", driver="vfio-pci" if i == 3
                        else "igbvf") for i in range(4)))
    with pytest.raises(ApplyError) as refused:
        whole.decide(host, 0)
    assert "VF 3 of eno1" in refused.value.problem
    assert "vfio-pci" in refused.value.problem
    assert other in refused.value.problem
    assert "release vm1" in str(refused.value.fix)
    # still on the host's VF driver, with the driver's own MAC after a reset: repaired
    host.pools["eno1"] = Sriov(4, 8, tuple(VirtualFunction(i, f"eno1v{i}") for i in range(4)))
    host.links["eno1v3"] = Link(7, "eno1v3", up=True, address=other)
    assert whole.decide(host, 0).verdict == "repair"


def test_an_unfinished_claim_is_made_again_only_while_no_process_holds_its_macvtap(
        ) -> None:
    """A claim a killed run left unfinished (not done) is made again as a first claim, from
    the VF as found; but a macvtap someone holds open is in a guest's hands (state older
    than the done mark, or a later realize killed): repaired in place, never deleted."""
    links = {"eno1v3": CLAIMED_NETDEV, "nm2": replace(CLAIMED_TAP, up=False)}
    free = claimed_and_done(CLAIMED_ENTRY, links, done=False)
    action = MACVTAP_CLAIM.decide(free, 0)
    assert action.repair == {"redo": ["nm2 is down"], "vf": 3}
    held = claimed_and_done(CLAIMED_ENTRY, links, done=False, held=QEMU)
    action = MACVTAP_CLAIM.decide(held, 0)
    kernel = Kernel()
    MACVTAP_CLAIM.apply(kernel, action)
    assert [call[0] for call in kernel.calls] == ["will_undo", "up"]


def test_what_a_claimed_vf_cannot_change_in_place_is_refused_with_what_and_the_fix() -> None:
    """A macvtap never changes to or from passthru in place, nor moves to another lower
    device: for a done or held claim that is refused (naming what differs, who holds it
    and the fix), not deleted."""
    eth3 = Link(11, "eth3")
    cases = {"in mode vepa, not passthru": replace(CLAIMED_TAP, macvlan_mode="vepa"),
             "sits on eth3, not on VF 3 of eno1's netdev eno1v3": replace(CLAIMED_TAP,
                                                                         lower=11)}
    for what, tap in cases.items():
        links = {"eno1v3": CLAIMED_NETDEV, "eth3": eth3, "nm2": tap}
        for done, held in ((True, []), (True, QEMU), (False, QEMU)):
            host = claimed_and_done(CLAIMED_ENTRY, links, done=done, held=held)
            with pytest.raises(ApplyError) as refused:
                MACVTAP_CLAIM.decide(host, 0)
            assert "cannot be changed in place" in refused.value.problem
            assert what in refused.value.problem
            assert "release vm1 on host-a" in (refused.value.fix or "")
            if held:
                assert "qemu-system-x86 (pid 4242) hold(s) it open" in refused.value.problem
                assert (refused.value.fix or "").startswith("shut vm1 down")
    unheld = claimed_and_done(CLAIMED_ENTRY, {"eno1v3": CLAIMED_NETDEV, "nm2": cases[
        "in mode vepa, not passthru"]}, done=False)
    assert MACVTAP_CLAIM.decide(unheld, 0).repair == {
        "redo": ["nm2 is in mode vepa, not passthru (a macvtap never changes to or from "
                 "passthru in place)"], "vf": 3}


def test_a_failing_vf_repair_names_the_vf_explains_the_error_and_gives_a_fix() -> None:
    host = claimed_and_done({**CLAIMED_ENTRY, "vlan": 999},
                            {"eno1v3": CLAIMED_NETDEV, "nm2": CLAIMED_TAP}, held=QEMU)
    action = MACVTAP_CLAIM.decide(host, 0)
    refused = OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    assert MACVTAP_CLAIM.describe_change(action) == (
        f"repair the claim of VF 3 of eno1 (MAC {GUEST_MAC}) in place: VF 3 of eno1 has "
        "vlan 999, want 100")
    assert MACVTAP_CLAIM.explain(refused) == "eno1's driver does not manage VFs through netlink"
    fix = MACVTAP_CLAIM.fix_for_change(action, refused) or ""
    assert fix.startswith("check that eno1 is an SR-IOV PF")
    assert "ip link set eno1 vf 3" in fix
    redo = Action(0, MACVTAP_CLAIM, "repair", repair={"redo": ["nm2 is missing"], "vf": 3})
    assert MACVTAP_CLAIM.describe_change(redo) == (
        f"claim VF 3 of eno1 (MAC {GUEST_MAC}) again, which a killed run left unfinished: "
        "nm2 is missing")


def test_the_kernel_features_a_step_needs_come_from_its_class() -> None:
    assert steps.EnsureBridge("br0", 1500, vlan_filtering=True).features("create") == [
        "bridge", "vlan_filtering"]
    assert CreateTap("nm0", "fe", "52", 1500, "br0").features("unchanged") == []


# --- Open vSwitch ---------------------------------------------------------------------------
GUEST_PORT = SAMPLES[-1]
UPLINK_PORT = EnsureOvsPort("eth0", "br-int", OVSDB, external_ids=(("netmap-owner", "uplink"),))


def test_an_ovs_bridge_is_created_once_and_someone_elses_used_as_it_is() -> None:
    step = SAMPLES[-2]
    assert isinstance(step, EnsureOvsBridge)
    action = step.decide(Host({}), 0)
    kernel = Kernel()
    step.apply(kernel, action)
    assert kernel.calls == [("ovs_add_bridge", OVSDB, "br-int", "netdev")]
    mine = Host({}, ovs={"br-int": OvsBridge("br-int", external_ids={"netmap-owner": "netmap"})})
    assert step.decide(mine, 0).verdict == "unchanged"
    theirs = Host({}, ovs={"br-int": OvsBridge("br-int")})
    assert step.decide(theirs, 0).verdict == "adopt"
    kernel = Kernel()
    step.apply(kernel, step.decide(theirs, 0))
    assert kernel.calls == []


def test_an_ovs_port_is_added_only_to_a_bridge_that_is_there_or_planned() -> None:
    with pytest.raises(ApplyError, match="OVS bridge br-int vanished"):
        GUEST_PORT.decide(Host({}), 0)
    action = GUEST_PORT.decide(Host({}, ovs_planned={"br-int"}), 0)
    kernel = Kernel()
    GUEST_PORT.apply(kernel, action)
    assert kernel.calls == [("ovs_set_port", OVSDB, "nm0", "br-int", 100,
                             GUEST_PORT.external_ids, None)]


def test_an_ovs_port_netmap_did_not_add_for_the_guest_is_refused() -> None:
    foreign = Host({}, ovs={"br-int": OvsBridge("br-int", {"nm0": OvsPort(100)})})
    with pytest.raises(ApplyError, match="a foreign port holds the endpoint's name"):
        GUEST_PORT.decide(foreign, 0)
    others = Host({}, ovs={"br-int": OvsBridge("br-int", {
        "nm0": OvsPort(100, {"netmap-owner": "vm2"})})})
    with pytest.raises(ApplyError, match="it is vm2's"):
        GUEST_PORT.decide(others, 0)
    elsewhere = Host({}, ovs={"br-int": OvsBridge("br-int"), "br-ex": OvsBridge(
        "br-ex", {"nm0": OvsPort(100, {"netmap-owner": "vm1"})})})
    with pytest.raises(ApplyError, match="is a port of OVS bridge br-ex"):
        GUEST_PORT.decide(elsewhere, 0)


def test_an_ovs_port_repair_carries_the_tag_and_ids_found_as_its_undo() -> None:
    found = OvsPort(200, {"netmap-owner": "vm1"})
    host = Host({}, ovs={"br-int": OvsBridge("br-int", {"nm0": found})})
    action = GUEST_PORT.decide(host, 0)
    assert action.verdict == "repair"
    kernel = Kernel()
    GUEST_PORT.apply(kernel, action)
    assert kernel.calls == [("ovs_set_port", OVSDB, "nm0", "br-int", 100,
                             GUEST_PORT.external_ids, (200, (("netmap-owner", "vm1"),)))]
    same = Host({}, ovs={"br-int": OvsBridge("br-int", {"nm0": OvsPort(
        100, dict(GUEST_PORT.external_ids), dict(GUEST_PORT.external_ids))})})
    assert GUEST_PORT.decide(same, 0).verdict == "unchanged"
    # the Interface's ids (where OVN binds iface-id) lost: repaired too
    bare = Host({}, ovs={"br-int": OvsBridge("br-int", {"nm0": OvsPort(
        100, dict(GUEST_PORT.external_ids))})})
    assert GUEST_PORT.decide(bare, 0).verdict == "repair"


def test_an_uplink_that_is_an_access_port_is_refused_and_a_trunk_adopted() -> None:
    access = Host({}, ovs={"br-int": OvsBridge("br-int", {"eth0": OvsPort(5)})})
    with pytest.raises(ApplyError, match="uplink eth0 is an access port of br-int"):
        UPLINK_PORT.decide(access, 0)
    trunk = Host({}, ovs={"br-int": OvsBridge("br-int", {"eth0": OvsPort()})})
    assert UPLINK_PORT.decide(trunk, 0).verdict == "adopt"
    ours = Host({}, ovs={"br-int": OvsBridge("br-int", {"eth0": OvsPort(
        None, {"netmap-owner": "uplink"})})})
    assert UPLINK_PORT.decide(ours, 0).verdict == "unchanged"


def test_verify_of_a_vf_nic_compares_the_live_vf_entry_with_the_claim() -> None:
    """verify read only the passthru macvtap: a VF handed over whole whose entry lacked the
    guest's MAC and VLAN (a claim a killed run recorded, then called done) passed."""
    from netmap.netlink.endpoints import endpoint_for
    from netmap.plan import NicPlan

    claim = ClaimVf("eno1", GUEST_MAC, 100, True)
    nic = NicPlan(2, "vf-whole", "sriov-vf", GUEST_MAC, "virtio", None, "eno1", 100, 1500,
                  steps=(RequireLink("eno1", 1500), claim))

    @dataclass
    class Txn:
        entry: dict

        def vf_for(self, nic: NicPlan) -> VirtualFunction:
            return VirtualFunction(3, "eno1v3")

        def vf_entry(self, pf: str, index: int) -> dict:
            assert (pf, index) == ("eno1", 3)
            return self.entry

    verify = endpoint_for("sriov-vf").verify
    done = {"mac": GUEST_MAC.upper(), "vlan": 100, "spoofchk": 1}
    assert verify(nic, {}, Txn(done)) == []  # type: ignore[arg-type]
    assert verify(nic, {}, Txn({})) == []  # type: ignore[arg-type]  # no entries reported
    assert verify(nic, {}, Txn({"mac": ZERO, "vlan": 0, "spoofchk": 1})) == [  # type: ignore[arg-type]
        f"NIC 2: VF 3 of eno1 has mac {ZERO}, want {GUEST_MAC}",
        "NIC 2: VF 3 of eno1 has vlan 0, want 100"]


# --- how release treats each kind: the class says it, release.py only reads it ------------

def test_each_kind_names_its_release_phase() -> None:
    phases = {type(step).__name__: step.release_phase for step in SAMPLES}
    assert phases == {
        "RequireLink": "undo-last",  # the uplink goes down once nothing rides on it
        "EnsureBridge": "delete", "EnsureVlanLink": "delete", "EnsureVxlan": "delete",
        "CreateTap": "delete", "CreateMacvtap": "delete",  # one group delete
        "EnslavePort": "undo", "BridgeVlan": "undo", "ClaimVf": "undo",
        "EnsureOvsBridge": "ovsdb", "EnsureOvsPort": "ovsdb",  # one OVSDB transaction
    }


def test_a_link_is_netmaps_only_while_its_kind_and_ifindex_are_the_ones_made() -> None:
    tap = CreateTap("nm0", "fe:54:00:00:00:01", "52:54:00:00:00:01", 1500, "br0")
    assert tap.replaced(None, 7) is None  # gone: nothing to protect
    assert tap.replaced(Link(7, "nm0", "tun"), 7) is None
    assert tap.replaced(Link(7, "nm0", "tun"), None) is None  # made before ifindex was kept
    assert tap.replaced(Link(7, "nm0", "bridge"), 7) == "now a bridge, not netmap's"
    assert "ifindex 9; netmap's was ifindex 7" in str(tap.replaced(Link(9, "nm0", "tun"), 7))
    for step in SAMPLES:  # what makes no link of its own is never someone else's
        if step.release_phase != "delete":
            assert step.replaced(Link(1, step.target, "veth"), 99) is None


def test_a_port_goes_with_its_bridge_and_comes_out_of_one_netmap_keeps_but_did_not_make(
        ) -> None:
    port = EnslavePort("eth0", "br0")
    links = {"br0": Link(2, "br0", "bridge"), "eth0": Link(1, "eth0", master=2)}
    assert port.gone_with_its_master(links, going={"br0"}, foreign=set()) == ""
    assert port.gone_with_its_master(links, going=set(), foreign=set()) is None
    assert port.gone_with_its_master(links, going=set(), foreign={"br0"}) == \
        " (no longer a port of netmap's br0)"
    moved = {**links, "eth0": Link(1, "eth0", master=5)}
    assert port.gone_with_its_master(moved, going=set(), foreign=set()) == \
        " (no longer a port of netmap's br0)"
    # a bridge netmap adopted stays: the uplink netmap enslaved there is taken out
    assert port.leaves_a_bridge_that_stays(going=set(), made=set(), foreign=set()) == "eth0"
    assert port.still_needed(links, going=set(), leaving={"eth0"}) is None
    # a bridge netmap made and keeps (someone else's port on it) keeps the uplink too
    assert port.leaves_a_bridge_that_stays(going=set(), made={"br0"}, foreign=set()) is None
    assert port.still_needed(links, going=set(), leaving=set()) == "bridge br0 stays"
    for step in SAMPLES:
        if not isinstance(step, EnslavePort):
            assert step.leaves_a_bridge_that_stays(set(), set(), set()) is None
            assert step.gone_with_its_master({}, set(), set()) is None


def test_a_made_link_records_its_ifindex_and_a_vf_claim_that_it_is_done() -> None:
    """What each kind writes to state once the realize made it: a later run tells netmap's
    device from one of the same name (ifindex), and repairs a done claim in place."""

    class Recorded(State):
        def record_identity(self, key: str, ifindex: int) -> bool:
            changed = self.records[key][1] != ifindex
            self.records[key] = (self.records[key][0], ifindex, self.records[key][2])
            return changed

    tap = CreateTap("nm0", "fe:54:00:00:00:01", "52:54:00:00:00:01", 1500, "br0")
    state = Recorded({tap.resource: (["vm1"], None, {}),
                      MACVTAP_CLAIM.resource: (["vm1"], None, {"index": 3})})
    links = {"nm0": Link(7, "nm0", "tun")}
    assert tap.record_made(state, links, "adopt") is False  # someone else's
    assert tap.record_made(state, {"nm0": Link(7, "nm0", "bridge")}, "create") is False
    assert tap.record_made(state, links, "create") is True
    assert state.made_ifindex(tap.resource) == 7
    assert tap.record_made(state, links, "unchanged") is False  # known already
    assert MACVTAP_CLAIM.record_made(state, links, "create") is True
    assert state.records[MACVTAP_CLAIM.resource][2] == {"index": 3, "done": True}
    assert MACVTAP_CLAIM.record_made(state, links, "repair") is False  # done already
    for step in SAMPLES:
        if not isinstance(step, (CreateTap, ClaimVf)) and step.release_phase != "delete":
            assert step.record_made(state, links, "create") is False


def test_a_shared_device_says_what_release_puts_back_and_who_needs_it() -> None:
    bridge, vlan_link = EnsureBridge("br0", 9000, vlan_filtering=True), SAMPLES[5]
    assert bridge.restored == ("mtu", "vlan_filtering")
    assert bridge.needs_changed("mtu", 1500) is True
    assert bridge.needs_changed("mtu", 9000) is False
    assert bridge.needs_changed("vlan_filtering", False) is True
    assert EnsureBridge("br0", 1500).needs_changed("vlan_filtering", False) is False
    assert isinstance(vlan_link, EnsureVlanLink)
    assert vlan_link.restored == ("mtu",)
    assert vlan_link.needs_changed("mtu", 1400) is True
    assert vlan_link.needs_changed("vlan_filtering", False) is False
    others = [s for s in SAMPLES if not isinstance(s, (EnsureBridge, EnsureVlanLink))]
    assert [s for s in others if s.restored or s.needs_changed("mtu", 0)] == []


@dataclass
class OvsRelease:
    """netmap.steps.ovs.OvsRelease that records the removals the steps add."""

    bridges: dict[str, OvsBridge]
    going: set[str] = field(default_factory=set)
    leaving: set[str] = field(default_factory=set)
    staying: set[str] = field(default_factory=set)
    deleted: list[tuple[str, ...]] = field(default_factory=list)

    def delete_bridge(self, name: str) -> None:
        self.deleted.append(("bridge", name))

    def delete_port(self, port: str, bridge: str) -> None:
        self.deleted.append(("port", port, bridge))


def test_an_ovs_step_decides_its_part_in_release_s_ovsdb_transaction() -> None:
    bridge = EnsureOvsBridge("br-int", OVSDB)
    mark = {"netmap-owner": "netmap"}
    ports = {"eth0": OvsPort(external_ids={"netmap-owner": "uplink"}),
             "nm0": OvsPort(external_ids={"netmap-owner": "vm1"})}
    ovs = OvsRelease({"br-int": OvsBridge("br-int", ports, mark)}, leaving={"eth0", "nm0"})
    assert bridge.release_ovsdb(ovs) == ("delete", "")
    assert UPLINK_PORT.release_ovsdb(ovs) == ("delete", "")
    assert GUEST_PORT.release_ovsdb(ovs) == ("delete", "")
    assert ovs.deleted == [("bridge", "br-int"), ("port", "eth0", "br-int"),
                           ("port", "nm0", "br-int")]
    assert (bridge.ovs_port, UPLINK_PORT.ovs_port) == (None, "eth0")
    assert bridge.release_order < UPLINK_PORT.release_order  # the bridge says if it stays
    assert (bridge.reads_every_port, UPLINK_PORT.reads_every_port) == (True, False)

    # someone else's port keeps netmap's bridge, and the bridge its uplink
    foreign = {**ports, "vnet9": OvsPort()}
    ovs = OvsRelease({"br-int": OvsBridge("br-int", foreign, mark)}, leaving={"eth0", "nm0"})
    assert bridge.release_ovsdb(ovs) == (
        "keep", "OVS bridge still has ports netmap did not add: vnet9")
    assert ovs.staying == {"br-int"}
    assert UPLINK_PORT.release_ovsdb(ovs) == (
        "keep", "the uplink of OVS bridge br-int, which stays")
    assert GUEST_PORT.release_ovsdb(ovs) == ("delete", "")
    assert ovs.deleted == [("port", "nm0", "br-int")]

    # gone, or no longer netmap's
    unmarked = OvsRelease({"br-int": OvsBridge("br-int", {"nm0": OvsPort()})},
                          leaving={"nm0"})
    assert bridge.release_ovsdb(unmarked) == ("keep", "not netmap's bridge any more, left alone")
    assert GUEST_PORT.release_ovsdb(unmarked) == (
        "keep", "now someone else's port (no netmap mark), left alone")
    assert UPLINK_PORT.release_ovsdb(unmarked) == ("gone", "")
    assert bridge.release_ovsdb(OvsRelease({})) == ("gone", "")
    assert unmarked.deleted == []
