"""SR-IOV facts from a fake sysfs tree laid out like the kernel's (no hardware needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import fake_sriov_pf, guest_toml, links_by_name, needs_netns, write_fleet

from netmap.errors import ApplyError
from netmap.load import load_fleet
from netmap.model.inventory import Interface
from netmap.netlink.apply import realize_plan
from netmap.netlink.discover import discover, read_sriov
from netmap.netlink.ensure import Transaction
from netmap.netlink.rtnl import Rtnl
from netmap.netlink.sysfs import VirtualFunction, has_vhost_net, sriov_info, sysfs_root
from netmap.netlink.vf_pool import holder
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph
from netmap.rules.drift import drift_findings
from netmap.state import HostState


def test_reads_pool_and_vfs_in_index_order(tmp_path: Path) -> None:
    netdevs = [f"eno1v{i}" for i in range(11)]
    netdevs[3] = None
    fake_sriov_pf(tmp_path, "eno1", netdevs, total=16)
    info = sriov_info("eno1", root=tmp_path)
    assert info is not None
    assert (info.pf, info.total_vfs, info.num_vfs) == ("eno1", 16, 11)
    # virtfn10 sorts after virtfn9 numerically, not lexically
    assert [vf.index for vf in info.vfs] == list(range(11))
    assert info.vfs[10].pci == "0000:03:10.10"
    assert info.vfs[10].netdev == "eno1v10"
    assert info.vf(3).netdev is None  # bound to vfio-pci: no netdev
    assert info.vf(99) is None


def test_not_sriov_capable_or_absent(tmp_path: Path) -> None:
    (tmp_path / "class" / "net" / "eth0" / "device").mkdir(parents=True)
    assert sriov_info("eth0", root=tmp_path) is None
    assert sriov_info("nosuch", root=tmp_path) is None


def test_capable_but_no_vfs_created(tmp_path: Path) -> None:
    fake_sriov_pf(tmp_path, "ens1f0", [])
    info = sriov_info("ens1f0", root=tmp_path)
    assert info is not None
    assert info.num_vfs == 0
    assert info.vfs == ()


def test_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_sriov_pf(tmp_path, "eno1", ["v0"], total=4)
    monkeypatch.setenv("NETMAP_SYSFS", str(tmp_path))
    assert sysfs_root() == tmp_path
    assert sriov_info("eno1").num_vfs == 1
    monkeypatch.delenv("NETMAP_SYSFS")
    assert sysfs_root() == Path("/sys")


def test_vhost_net(tmp_path: Path) -> None:
    assert not has_vhost_net(tmp_path)
    (tmp_path / "vhost-net").touch()
    assert has_vhost_net(tmp_path)


# --- realize against a fake pool: a namespace holds the PF and VF netdevs (veths) ---------

NETWORKS = '[networks.storage]\nsegment = "lab-storage"\nvlan = 200\n'


def _sriov_fleet(root: Path, netns: str, guests: dict[str, str]) -> Path:
    host = f"""[host]
name = "h1"
netns = "{netns}"
features = ["sriov", "tun", "macvtap", "vhost-net"]

[uplinks.pf0]
segments = ["lab-storage"]
sriov = {{ total_vfs = 4 }}

[networks.storage]
mode = "sriov-vf"
uplink = "pf0"
"""
    write_fleet(root, NETWORKS, {"h1": host}, guests)
    return root


def _plan(root: Path, guest: str):
    fleet = load_fleet(root)
    return build_plan(build_graph(fleet), fleet.guests[guest], fleet.hosts["h1"])


@pytest.fixture
def pool_host(netns_factory, tmp_path: Path):
    """A namespace with the PF (a veth named pf0) and the netdevs of VFs 0-2 (veths pf0vN,
    down, no address); the fake sysfs says VF 3 has no netdev (bound to vfio-pci)."""
    netns = netns_factory("v1")
    commands = ["link add pf0 type veth peer name pf0peer", "link set pf0 up"]
    commands += [f"link add pf0v{i} type veth peer name pf0v{i}p" for i in range(3)]
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n",
                   text=True, check=True, capture_output=True)
    sysfs = fake_sriov_pf(tmp_path / "sys", "pf0", ["pf0v0", "pf0v1", "pf0v2", None])
    bind(sysfs, "0000:03:10.3", "vfio-pci")
    return netns, sysfs


def bind(sysfs: Path, pci: str, driver: str) -> None:
    """The VF's PCI device bound to `driver`, as sysfs shows it (a driver symlink)."""
    drivers = sysfs / "bus" / "pci" / "drivers" / driver
    drivers.mkdir(parents=True, exist_ok=True)
    (sysfs / "devices" / "pci" / pci / "driver").symlink_to(drivers)


@needs_netns
def test_one_mac_on_two_vfs_of_a_pf_is_refused_at_the_claim(pool_host, tmp_path: Path) -> None:
    """Two guests with one MAC on one PF (check: MAC_IN_USE): the second claim must be
    refused, not handed the first guest's VF (state keys a claim by PF and MAC)."""
    netns, sysfs = pool_host
    mac = "52:54:00:5e:09:01"
    root = _sriov_fleet(tmp_path / "m", netns, {"nb": guest_toml("nb", "h1", ("storage", mac)),
                                                "vm": guest_toml("vm", "h1", ("storage", mac))})
    state_dir = tmp_path / "state"
    state = HostState.load("h1", state_dir)
    claim = next(s for _, s in _plan(root, "nb").steps if s.kind == "vf")
    state.use("nb", claim.resource, step=claim.as_dict(), created=True,
              info={"index": 0, "pci": "0000:03:10.0", "netdev": "pf0v0"})
    state.set_guest("nb", "realized")
    state.save()
    saved = (tmp_path / "state" / "h1.json").read_text()
    before = links_by_name(netns)
    with pytest.raises(ApplyError, match="already set on VF 0 of pf0") as refused:
        realize_plan(_plan(root, "vm"), state_dir=state_dir, sysfs_root=sysfs)
    assert refused.value.step is not None
    assert refused.value.step.kind == "vf"
    assert links_by_name(netns) == before
    assert (tmp_path / "state" / "h1.json").read_text() == saved


# --- what makes a VF free (netmap.netlink.vf_pool): realize and discover give one answer ----

def test_reads_the_driver_a_vf_is_bound_to(tmp_path: Path) -> None:
    sysfs = fake_sriov_pf(tmp_path, "eno1", ["eno1v0", None, None])
    bind(sysfs, "0000:03:10.0", "igbvf")
    bind(sysfs, "0000:03:10.1", "vfio-pci")
    info = sriov_info("eno1", root=sysfs)
    assert [(vf.netdev, vf.driver) for vf in info.vfs] == [
        ("eno1v0", "igbvf"), (None, "vfio-pci"), (None, None)]


@pytest.mark.parametrize(("facts", "why"), [
    ({}, None),  # a VF netdev down, without addresses, its entry without a MAC
    ({"netdev": None, "driver": "vfio-pci"}, "bound to vfio-pci"),
    ({"netdev": None}, "bound to no network driver (vfio or none)"),
    ({"up": True}, "v0 is up"),
    ({"master": "br0"}, "port of br0"),
    ({"uppers": ["mv1"]}, "lower of mv1"),
    ({"addresses": ["10.1.2.3/24"]}, "v0 has address 10.1.2.3/24"),
    ({"entry_mac": "52:54:00:00:00:09"}, "MAC 52:54:00:00:00:09 set on the PF's VF entry"),
    # the VF driver's own MAC, reported to the PF (igbvf picks a random one): no claim
    ({"entry_mac": "AA:bb:cc:00:00:01", "netdev_mac": "aa:bb:cc:00:00:01"}, None),
    ({"entry_mac": "00:00:00:00:00:00", "netdev_mac": "aa:bb:cc:00:00:01"}, None),
])
def test_what_holds_a_vf(facts: dict, why: str | None) -> None:
    vf = VirtualFunction(0, "0000:03:10.0", facts.pop("netdev", "v0"), facts.pop("driver", None))
    assert holder(vf, **facts) == why


def _vf_links(netns: str, commands: list[str]) -> None:
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n",
                   text=True, check=True, capture_output=True)


@needs_netns
def test_realize_and_discover_agree_on_the_free_vfs(pool_host, tmp_path: Path) -> None:
    """VF 0's netdev is up, VF 1's has an address, VF 3 is bound to vfio-pci: realize
    claims VF 2, whose netdev has only an IPv6 link-local address; discover counts the
    same three used and the same one free, and drift that the mapping's total_vfs counts
    on more; with VF 2 up too, realize finds none free and says why for each."""
    netns, sysfs = pool_host
    _vf_links(netns, ["link set pf0v0 up", "addr add 10.9.9.1/24 dev pf0v1",
                      "addr add fe80::2/64 dev pf0v2"])
    root = _sriov_fleet(tmp_path / "m", netns,
                        {"vm": guest_toml("vm", "h1", ("storage", "52:54:00:5e:09:02"))})
    state = HostState.load("h1", tmp_path / "state")
    with Rtnl(netns) as kernel:
        txn = Transaction(kernel, state, _plan(root, "vm"), sysfs)
        txn.decide()
        txn.close()
    assert [vf.index for vf in txn.vfs.values()] == [2]

    pool = discover(netns, sysfs_root=sysfs).sriov["pf0"]
    assert {vf.index: vf.used_by for vf in pool.vfs} == {
        0: "pf0v0 is up", 1: "pf0v1 has address 10.9.9.1/24", 2: None, 3: "bound to vfio-pci"}
    assert (pool.num_vfs, pool.used_vfs, pool.free_vfs) == (4, 3, 1)

    # check counts on the mapping's total_vfs = 4; drift says that only 1 is free
    fleet = load_fleet(root)
    low = [f for f in drift_findings(fleet.hosts["h1"], discover(netns, sysfs_root=sysfs),
                                     networks=fleet.networks) if f.code == "VF_FREE_LOW"]
    assert len(low) == 1, low
    assert "so 1 of the 4 VFs the mapping counts on are free" in low[0].message, low

    _vf_links(netns, ["link set pf0v2 up"])
    with Rtnl(netns) as kernel, pytest.raises(ApplyError) as refused:
        Transaction(kernel, state, _plan(root, "vm"), sysfs).decide()
    assert refused.value.problem == (
        "no free VF on pf0 (h1): 4 VF(s) enabled of 8, 0 claimed by netmap, 4 used outside "
        "netmap; VF 0: pf0v0 is up; VF 1: pf0v1 has address 10.9.9.1/24; VF 2: pf0v2 is up; "
        "VF 3: bound to vfio-pci")
    assert discover(netns, sysfs_root=sysfs).sriov["pf0"].free_vfs == 0


def test_discover_counts_a_mac_set_on_the_pf_entry_as_used(tmp_path: Path) -> None:
    """A MAC on a VF's entry (netmap's own claim of a VF handed over whole, or anyone's)
    holds it, unless it is the VF netdev's own; the entries come from the PF."""
    sysfs = fake_sriov_pf(tmp_path, "pf0", ["pf0v0", "pf0v1", "pf0v2"])
    links = [Interface(2, "pf0", "physical", 1500),
             Interface(3, "pf0v0", "physical", 1500, mac="aa:00:00:00:00:01"),
             Interface(4, "pf0v1", "physical", 1500, mac="aa:00:00:00:00:02"),
             Interface(5, "pf0v2", "physical", 1500, mac="aa:00:00:00:00:03")]
    macs = {0: "52:54:00:5e:09:03", 1: "aa:00:00:00:00:02", 2: "00:00:00:00:00:00"}
    pool = read_sriov(links, sysfs, lambda pf: macs if pf.name == "pf0" else {})["pf0"]
    assert [vf.used_by for vf in pool.vfs] == [
        "MAC 52:54:00:5e:09:03 set on the PF's VF entry", None, None]
    assert (pool.used_vfs, pool.free_vfs) == (1, 2)
