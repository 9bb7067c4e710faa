"""discover: links read by netmap's own RTM_GETLINK dump, checked against iproute2 in real
throw-away namespaces (prefix nmB); SR-IOV and features from a fake sysfs tree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, fake_sriov_pf, links_by_name, needs_netns

from netmap.cli import main
from netmap.errors import InputError
from netmap.lab import namespace_exists
from netmap.load.parse import load_host, load_networks
from netmap.model.inventory import Interface, Inventory, SriovPf, VirtualFunctionUse
from netmap.netlink.discover import discover, read_features, read_sriov

PREFIX = "nmB"


def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)


@pytest.fixture
def zoo(netns_factory) -> str:
    """One namespace holding every kind discovery tells apart (this kernel has no bond,
    dummy or 802.1q: veths stand in for NICs)."""
    ns = netns_factory(PREFIX)
    batch = "\n".join([
        "link set lo up",
        "link add up0 mtu 9000 type veth peer name up0p",
        "link set up0 up", "link set up0p up",
        "link add lonely type veth peer name lonelyp",  # peer down: no carrier
        "link set lonely up",
        "link add br-up0 type bridge",
        "link add up1 type veth peer name up1p",
        "link set up1 master br-up0", "link set br-up0 up",
        "link add mvt0 link up0 type macvtap mode vepa",
        "link add mvt1 link up0 type macvtap mode bridge",
        "link add mvl0 link up0 type macvlan mode private",
        "link add vx5001 type vxlan id 5001 dev up0 dstport 4790 group 239.1.1.1",
        "link set vx5001 master br-up0",
        "tuntap add tp0 mode tap", "tuntap add tn0 mode tun",
        "link set tp0 master br-up0",
        "link property add dev up0 altname uplink-zero",
        "address add 10.250.9.1/24 dev up0",
        "address add 2001:db8::1/64 dev up0",
    ])
    done = subprocess.run(["ip", "-n", ns, "-force", "-batch", "-"], input=batch + "\n",
                          text=True, capture_output=True, check=False)
    assert "Unknown device type" not in done.stderr, done.stderr
    return ns


@needs_netns
def test_kinds_relations_and_state_match_iproute2(zoo: str) -> None:
    inventory = discover(zoo)
    links = {link.name: link for link in inventory.interfaces}
    reference = links_by_name(zoo)
    assert set(links) == set(reference)
    for name, ref in reference.items():
        link = links[name]
        assert link.index == ref["ifindex"]
        assert link.mtu == ref["mtu"]
        assert link.mac == ref.get("address")
        assert link.master == ref.get("master")
        assert link.oper_state == ref["operstate"].lower()
        assert link.admin_up == ("UP" in ref["flags"])
    kinds = {name: link.kind for name, link in links.items()}
    assert kinds["lo"] == "loopback"
    assert kinds["up0"] == kinds["lonely"] == "veth"
    assert kinds["br-up0"] == "bridge"
    assert (kinds["mvt0"], links["mvt0"].mode, links["mvt0"].lower) == ("macvtap", "vepa", "up0")
    assert (links["mvt1"].mode, links["mvl0"].kind, links["mvl0"].mode) == (
        "bridge", "macvlan", "private")
    vx = links["vx5001"]
    assert (vx.kind, vx.vni, vx.vxlan_port, vx.vxlan_group, vx.lower, vx.master) == (
        "vxlan", 5001, 4790, "239.1.1.1", "up0", "br-up0")
    assert (kinds["tp0"], kinds["tn0"]) == ("tap", "tun")
    assert links["up0"].altnames == ("uplink-zero",)
    # global addresses only: not lo's 127.0.0.1 (host scope) nor fe80:: (link scope)
    assert set(links["up0"].addresses) == {"10.250.9.1/24", "2001:db8::1/64"}
    assert links["lo"].addresses == ()
    assert inventory.by_altname("uplink-zero") is links["up0"]
    assert links["up0"].running
    assert links["up0"].carrier is True
    assert not links["lonely"].running
    assert links["lonely"].carrier is False
    assert {p.name for p in inventory.ports_of("br-up0")} == {"up1", "vx5001", "tp0"}
    # a veth's IFLA_LINK is its peer, never reported as a lower device
    assert links["up0"].lower is None
    assert links["up0p"].lower is None


@needs_netns
def test_realize_reads_the_same_links_through_the_same_parser(zoo: str) -> None:
    """realize's Rtnl.links() and discover() share one dump and one parser (link_fields):
    the same facts, realize's kept as the kernel gives them (ifindexes, not names; a tap
    is "tun"; a NIC and lo have no kind)."""
    from netmap.netlink.rtnl import Rtnl

    with Rtnl(zoo) as kernel:
        raw = kernel.links()
        addresses = kernel.addresses()
    links = {link.name: link for link in discover(zoo).interfaces}
    assert set(raw) == set(links)
    name_of = {link.index: name for name, link in raw.items()}
    for name, link in links.items():
        live = raw[name]
        assert (live.index, live.mtu, live.address, live.up, name_of.get(live.master)) == (
            link.index, link.mtu, link.mac, link.admin_up, link.master)
    assert (raw["tp0"].kind, raw["tn0"].kind, raw["up0"].kind, raw["lo"].kind) == (
        "tun", "tun", "veth", None)
    assert (raw["mvt0"].macvlan_mode, name_of[raw["mvt0"].lower]) == ("vepa", "up0")
    vx = raw["vx5001"]
    assert (vx.vni, name_of[vx.vxlan_link], vx.vxlan_port, vx.vxlan_group) == (
        5001, "up0", 4790, "239.1.1.1")
    assert (raw["br-up0"].vlan_filtering, raw["br-up0"].ageing) == (False, 30000)
    # realize asks for global scope only: the same two as discover, not lo's 127.0.0.1
    assert sorted(addresses[raw["up0"].index]) == ["10.250.9.1/24", "2001:db8::1/64"]
    assert raw["lo"].index not in addresses


@needs_netns
def test_uplink_candidates_leave_out_endpoints_and_bridges(zoo: str) -> None:
    names = {link.name for link in discover(zoo).uplink_candidates()}
    assert {"up0", "up1", "lonely"} <= names
    assert not names & {"lo", "br-up0", "mvt0", "mvl0", "vx5001", "tp0", "tn0"}


def test_missing_namespace_is_bad_input_and_is_not_created() -> None:
    name = f"{PREFIX}-absent-0"
    with pytest.raises(InputError, match="does not exist"):
        discover(name)
    assert not namespace_exists(name)


def test_sriov_usage_from_a_fake_tree(tmp_path: Path) -> None:
    root = fake_sriov_pf(tmp_path, "pf0", ["vf0", None, "vf2", "vf3"], bus="0000:3b")
    links = [
        Interface(2, "pf0", "physical", 9000),
        Interface(3, "vf0", "physical", 1500, master="br0"),
        Interface(4, "vf2", "physical", 1500),
        Interface(5, "nm0123456780", "macvtap", 1500, lower="vf3", mode="passthru"),
        Interface(6, "vf3", "physical", 1500),
        Interface(7, "br0", "bridge", 1500),
    ]
    pool = read_sriov(links, root)["pf0"]
    assert (pool.total_vfs, pool.num_vfs) == (8, 4)
    used = {vf.index: vf.used_by for vf in pool.vfs}
    assert used[0] == "port of br0"
    assert used[1] is not None
    assert "vfio" in used[1]
    assert used[2] is None
    assert used[3] == "lower of nm0123456780"
    assert (pool.used_vfs, pool.free_vfs) == (3, 1)
    assert [vf.pci for vf in pool.vfs] == [f"0000:3b:10.{i}" for i in range(4)]


def test_features_from_fake_roots(tmp_path: Path) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    (sysfs / "module" / "bridge").mkdir(parents=True)
    (sysfs / "class" / "macvtap").mkdir(parents=True)
    (dev / "net").mkdir(parents=True)
    (dev / "net" / "tun").touch()
    pools = {"pf0": SriovPf("pf0", 8, 2, (VirtualFunctionUse(0, "a", "v0"),))}
    assert read_features(pools, sysfs_root=sysfs, dev_root=dev) == {
        "bridge", "macvtap", "tun", "sriov"}
    (dev / "vhost-net").touch()
    (sysfs / "module" / "vxlan").mkdir()
    assert read_features({}, sysfs_root=sysfs, dev_root=dev) == {
        "bridge", "macvtap", "tun", "vhost-net", "vxlan"}


@needs_netns
def test_discover_reads_sriov_of_a_namespace_only_from_an_explicit_root(
        netns_factory, tmp_path: Path) -> None:
    ns = netns_factory(PREFIX)
    ip(ns, "link", "add", "eno1", "type", "veth", "peer", "name", "eno1p")
    root = fake_sriov_pf(tmp_path, "eno1", ["v0", None], total=16)
    assert discover(ns, sysfs_root=root).sriov["eno1"].num_vfs == 2
    # the machine's /sys lists the root namespace's links, not this namespace's eno1
    assert discover(ns).sriov == {}


@needs_netns
def test_cli_discover_json_tree_and_draft(zoo: str, tmp_path: Path, capsys,
                                          mappings: Path) -> None:
    assert main(["discover", "--netns", zoo, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["netns"] == zoo
    assert {i["name"]: i["kind"] for i in data["interfaces"]}["mvt0"] == "macvtap"

    assert main(["discover", "--netns", zoo]) == 0
    tree = capsys.readouterr().out
    assert "vx5001" in tree
    assert "VNI 5001" in tree
    assert "macvtap vepa on up0" in tree

    target = tmp_path / "draft.toml"
    assert main(["--mappings", str(mappings), "discover", "--netns", zoo, "--host", "zoo",
                 "--write", str(target)]) == 0
    capsys.readouterr()
    host = load_host(target, load_networks(mappings / "networks.toml"))
    assert host.name == "zoo"
    assert host.netns == zoo
    assert host.uplinks["up0"].mtu == 9000
    assert host.uplinks["up0"].mac == links_by_name(zoo)["up0"]["address"]
    # the vxlan device carries tenant-blue's VNI 5001 over up0: a binding, with its options
    blue = host.bindings["tenant-blue"]
    assert (blue.mode, blue.uplink, blue.bridge) == ("vxlan", "up0", "br-up0")
    assert blue.vxlan is not None
    assert (blue.vxlan.port, blue.vxlan.group) == (4790, "239.1.1.1")

    # a second --write does not clobber the first
    assert main(["discover", "--netns", zoo, "--write", str(target)]) == 2
    assert "exists" in capsys.readouterr().err


def test_cli_discover_unknown_namespace_exits_2(capsys) -> None:
    assert main(["discover", "--netns", f"{PREFIX}-absent-1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inventory_json_round_trip_is_plain_data() -> None:
    inv = Inventory("h", None, (Interface(1, "lo", "loopback", 65536),
                                Interface(2, "eth0", "physical", 1500, altnames=("enp1",))))
    data = json.loads(json.dumps(inv.as_dict()))
    assert data["interfaces"][1]["altnames"] == ["enp1"]
    assert inv.get("eth0") is not None
    assert inv.get("eth9") is None


@needs_netns
def test_reading_a_namespace_leaves_this_thread_in_its_own(netns_factory) -> None:
    import os

    ns = netns_factory(PREFIX)
    ip(ns, "link", "add", "only-here", "type", "veth", "peer", "name", "only-herep")
    before = os.readlink("/proc/thread-self/ns/net")
    by_name = discover(ns)
    by_path = discover(f"/run/netns/{ns}")
    assert os.readlink("/proc/thread-self/ns/net") == before
    assert by_name.get("only-here") is not None
    assert by_path.get("only-here") is not None
    assert discover().get("only-here") is None  # and this namespace is untouched


def rtattr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes as the kernel lays it out."""
    import struct

    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def test_parser_decodes_kinds_this_kernel_cannot_build() -> None:
    """802.1Q and bond links, laid out byte for byte as in linux/if_link.h: this kernel has
    neither module, so the parser is fed the message a kernel that has them sends."""
    import struct

    from netmap.netlink import rtmsg as d
    from netmap.netlink.linkdump import _resolve

    def message(index: int, name: str, kind: str, data: bytes, link: int = 0,
                master: int = 0) -> bytes:
        body = struct.pack("=BxHiII", 0, 1, index, d.IFF_UP, 0)
        body += rtattr(d.IFLA_IFNAME, name.encode() + b"\0")
        body += rtattr(d.IFLA_MTU, struct.pack("=I", 1500))
        body += rtattr(d.IFLA_ADDRESS, bytes.fromhex("3cfdfe000001"))
        body += rtattr(d.IFLA_OPERSTATE, bytes([6]))
        if link:
            body += rtattr(d.IFLA_LINK, struct.pack("=I", link))
        if master:
            body += rtattr(d.IFLA_MASTER, struct.pack("=I", master))
        info = rtattr(d.IFLA_INFO_KIND, kind.encode() + b"\0")
        info += rtattr(d.IFLA_INFO_DATA | 0x8000, data)
        return body + rtattr(d.IFLA_LINKINFO | 0x8000, info)

    eth0 = struct.pack("=BxHiII", 0, 1, 2, d.IFF_UP, 0) + rtattr(d.IFLA_IFNAME, b"eth0\0") \
        + rtattr(d.IFLA_LINK, struct.pack("=I", 2)) \
        + rtattr(d.IFLA_MASTER, struct.pack("=I", 4))
    vlan = message(3, "eth0.100", "vlan", rtattr(d.IFLA_VLAN_ID, struct.pack("=H", 100)), link=2)
    bond = message(4, "bond0", "bond", rtattr(d.IFLA_BOND_MODE, bytes([4])))
    raw = [d.link_fields(buf, 0, len(buf)) for buf in (eth0, vlan, bond)]
    links = {link.name: link for link in _resolve(raw)}
    assert (links["eth0"].kind, links["eth0"].lower, links["eth0"].master) == (
        "physical", None, "bond0")
    assert (links["eth0.100"].kind, links["eth0.100"].vlan_id, links["eth0.100"].lower) == (
        "vlan", 100, "eth0")
    assert (links["bond0"].kind, links["bond0"].bond_mode, links["bond0"].mac) == (
        "bond", 4, "3c:fd:fe:00:00:01")
    inventory = Inventory("h", None, tuple(links.values()))
    # the bond is the uplink, not its slave
    assert [i.name for i in inventory.uplink_candidates()] == ["bond0"]


# What `discover --json` needs: no renderer, graph, TOML loader or mapping (its start-up is
# most of a run timed against `ip -j -d link show`, README's Benchmarks).
DISCOVER_SKIPS = ("rich", "networkx", "pyroute2", "msgspec", "tomli", "netmap.load",
                  "netmap.query.graph", "netmap.model.fleet")


@needs_netns
def test_discover_json_as_a_process_imports_nothing_heavy(netns_factory) -> None:
    import sys

    ns = netns_factory("nmsp")
    ip(ns, "link", "add", "sp0", "type", "veth", "peer", "name", "sp0p")
    ip(ns, "link", "add", "spbr", "type", "bridge")
    ip(ns, "link", "add", "spvx", "type", "vxlan", "id", "7", "dstport", "4789")
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "netmap", "discover",
                           "--netns", ns, "--json"], capture_output=True, text=True,
                          cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    names = {link["name"] for link in json.loads(done.stdout)["interfaces"]}
    assert {"lo", "sp0", "sp0p", "spbr", "spvx"} <= names
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "netmap.netlink.discover" in imported  # the parse is right: the path was taken
    assert sorted(imported & set(DISCOVER_SKIPS)) == []


def test_json_without_msgspec_is_the_same_bytes(capsysbinary, monkeypatch) -> None:
    """discover --json writes with the json module when nothing loaded msgspec: the same
    bytes as msgspec's encoder, which commands that load mappings use."""
    import sys

    import msgspec

    from netmap.commands._common import print_json

    data = {"name": "é\u2028\x00\x1f\x7f\"\\/\n\t", "n": [0, -1, 10**18, None, True, False],
            "nested": {"": [], "x": {}}, "emoji": "😀"}
    print_json(data)
    with_msgspec = capsysbinary.readouterr().out
    monkeypatch.delitem(sys.modules, "msgspec")
    print_json(data)
    without = capsysbinary.readouterr().out
    assert without == with_msgspec == msgspec.json.encode(data) + b"\n"
