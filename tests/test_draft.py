"""draft: an inventory becomes a host mapping that loads back through netmap.load."""

from __future__ import annotations

from pathlib import Path

from conftest import EXAMPLE_MAPPINGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netmap.load.parse import load_host, load_networks
from netmap.model.fleet import Host
from netmap.model.inventory import Interface, Inventory, SriovPf, VirtualFunctionUse
from netmap.rules.draft import draft_host

NETWORKS = load_networks(EXAMPLE_MAPPINGS / "networks.toml")


def load_draft(tmp_path: Path, text: str, name: str = "draft.toml") -> Host:
    path = tmp_path / name
    path.write_text(text)
    return load_host(path, NETWORKS)


def nic(index: int, name: str, kind: str = "physical", mtu: int = 1500, **extra) -> Interface:
    extra.setdefault("admin_up", True)
    extra.setdefault("oper_state", "up")
    return Interface(index, name, kind, mtu, **extra)


def vfs(count: int, used: int) -> tuple[VirtualFunctionUse, ...]:
    return tuple(VirtualFunctionUse(i, f"0000:3b:02.{i}", None if i < used else f"v{i}",
                                    "vfio or another non-network driver" if i < used else None)
                 for i in range(count))


def test_uplinks_with_mtu_mac_and_the_free_part_of_an_sriov_pool(tmp_path: Path) -> None:
    inv = Inventory("node7", None, (
        nic(1, "lo", "loopback", 65536),
        nic(2, "eno1", mtu=9000, mac="02:00:00:00:00:01", perm_mac="3c:fd:fe:00:00:01",
            parent="0000:3b:00.0"),
        nic(3, "eno2", mac="3c:fd:fe:00:00:02", oper_state="down"),
        nic(4, "eno1v0", mac="3c:fd:fe:00:00:10"),  # a VF netdev: a guest's, not an uplink
        nic(5, "nm0123456780", "macvtap", lower="eno2", mode="vepa"),
        nic(6, "virbr0", "bridge"),
    ), sriov={"eno1": SriovPf("eno1", 64, 8, vfs(8, 3))},
        features=frozenset({"vhost-net", "tun", "sriov"}), vf_netdevs=frozenset({"eno1v0"}))
    text = draft_host(inv)
    host = load_draft(tmp_path, text)
    assert host.name == "node7"
    assert host.features == {"vhost-net", "tun", "sriov"}
    assert set(host.uplinks) == {"eno1", "eno2"}
    eno1 = host.uplinks["eno1"]
    assert (eno1.mtu, eno1.mac, eno1.segments) == (9000, "3c:fd:fe:00:00:01", ())
    assert eno1.sriov is not None
    assert eno1.sriov.total_vfs == 5
    assert host.bindings == {}
    # what a human must decide is said where it must be decided
    assert "DECIDE: which segments" in text
    assert "0000:3b:00.0" in text
    assert "NOT running (down)" in text


def test_bridges_become_bindings_only_when_unambiguous(tmp_path: Path) -> None:
    inv = Inventory("node8", None, (
        nic(2, "eth0", master="br-mgmt"),
        nic(3, "br-mgmt", "bridge"),
        nic(4, "eth1", master="br-x"),
        nic(5, "br-x", "bridge"),  # its name says nothing: a comment, not a binding
        nic(6, "eth2", master="mixed"),
        nic(7, "eth3", master="mixed"),
        nic(8, "mixed", "bridge"),  # two uplinks: which segment it bridges is unclear
        nic(9, "eth4", mtu=9000),
        nic(10, "vx5001", "vxlan", vni=5001, lower="eth4", master="brvx5001",
            vxlan_group="239.1.1.1"),
        nic(11, "brvx5001", "bridge"),
    ))
    text = draft_host(inv, networks=NETWORKS, host_name="node8")
    host = load_draft(tmp_path, text)
    mgmt = host.bindings["mgmt"]
    assert (mgmt.mode, mgmt.uplink, mgmt.bridge) == ("bridge", "eth0", "br-mgmt")
    # the network's segment is what the bridged uplink reaches
    assert host.uplinks["eth0"].segments == ("dc1-fabric",)
    blue = host.bindings["tenant-blue"]
    assert (blue.mode, blue.uplink, blue.bridge) == ("vxlan", "eth4", None)
    assert blue.vxlan is not None
    assert blue.vxlan.group == "239.1.1.1"
    assert set(host.bindings) == {"mgmt", "tenant-blue"}
    assert '# bridge = "br-x"' in text


def test_without_networks_no_binding_is_guessed(tmp_path: Path) -> None:
    inv = Inventory("n", "lab-ns", (nic(2, "eth0", master="br-prod"),
                                    nic(3, "br-prod", "bridge")))
    text = draft_host(inv)
    host = load_draft(tmp_path, text)
    assert host.bindings == {}
    assert host.netns == "lab-ns"
    assert "[networks.NETWORK]" in text


def test_a_host_with_no_uplink_still_loads(tmp_path: Path) -> None:
    host = load_draft(tmp_path, draft_host(Inventory("bare", None, (nic(1, "lo", "loopback"),))))
    assert host.uplinks == {}


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=15)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(links=st.lists(st.tuples(names, st.sampled_from(["physical", "veth", "bridge", "tap",
                                                        "macvtap", "bond"]),
                                st.integers(68, 65535), st.booleans()),
                      max_size=8, unique_by=lambda t: t[0]),
       pools=st.lists(st.tuples(st.integers(0, 64), st.integers(0, 64)), max_size=3))
def test_any_inventory_drafts_a_mapping_that_loads(tmp_path: Path, links, pools) -> None:
    names_ = [name for name, *_ in links if name not in (".", "..")]
    interfaces = []
    for index, (name, kind, mtu, enslaved) in enumerate(links, start=2):
        if name in (".", ".."):
            continue
        bridges = [n for n, k, *_ in links if k == "bridge" and n != name]
        master = bridges[0] if enslaved and bridges and kind != "bridge" else None
        interfaces.append(nic(index, name, kind, mtu, master=master))
    sriov = {}
    for name, (total, num) in zip(names_, pools, strict=False):
        sriov[name] = SriovPf(name, total, min(num, total), vfs(min(num, total), num // 3))
    text = draft_host(Inventory("any", None, tuple(interfaces), sriov), networks=NETWORKS)
    load_draft(tmp_path, text, "any.toml")


def test_a_bridge_on_a_vlan_subinterface_is_left_to_a_human(tmp_path: Path) -> None:
    inv = Inventory("n", None, (
        nic(2, "eth0", mtu=9000),
        nic(3, "eth0.100", "vlan", lower="eth0", vlan_id=100, master="br100"),
        nic(4, "br100", "bridge"),
    ))
    text = draft_host(inv, networks=NETWORKS)
    host = load_draft(tmp_path, text)
    assert set(host.uplinks) == {"eth0"}
    assert host.bindings == {}
    assert "VLAN 100 on eth0 (networks with that VLAN: prod)" in text
