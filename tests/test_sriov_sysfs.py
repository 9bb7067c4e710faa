"""SR-IOV facts from a fake sysfs tree laid out like the kernel's (no hardware needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import fake_sriov_pf, guest_toml, links_by_name, needs_netns, write_fleet

from netmap.errors import ApplyError
from netmap.graph import build_graph
from netmap.load import load_fleet
from netmap.netlink.apply import realize_plan
from netmap.netlink.sysfs import has_vhost_net, sriov_info, sysfs_root
from netmap.plan import build_plan
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
    assert refused.value.step is not None and refused.value.step.kind == "vf"
    assert links_by_name(netns) == before
    assert (tmp_path / "state" / "h1.json").read_text() == saved
