"""SR-IOV facts from a fake sysfs tree laid out like the kernel's (no hardware needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netmap.netlink.sysfs import has_vhost_net, sriov_info, sysfs_root


def make_pf(root: Path, pf: str, total: int, vf_netdevs: list[str | None],
            bus: str = "0000:03") -> None:
    """A PF with len(vf_netdevs) VFs created; None means bound to vfio (no netdev)."""
    device = root / "devices" / "pci" / f"{bus}:00.0"
    device.mkdir(parents=True)
    (root / "class" / "net" / pf).mkdir(parents=True)
    os.symlink(device, root / "class" / "net" / pf / "device")
    (device / "sriov_totalvfs").write_text(f"{total}\n")
    (device / "sriov_numvfs").write_text(f"{len(vf_netdevs)}\n")
    for index, netdev in enumerate(vf_netdevs):
        vf_dir = root / "devices" / "pci" / f"{bus}:10.{index}"
        (vf_dir / "net").mkdir(parents=True)
        if netdev:
            (vf_dir / "net" / netdev).mkdir()
        os.symlink(vf_dir, device / f"virtfn{index}")


def test_reads_pool_and_vfs_in_index_order(tmp_path: Path) -> None:
    netdevs = [f"eno1v{i}" for i in range(11)]
    netdevs[3] = None
    make_pf(tmp_path, "eno1", 16, netdevs)
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
    make_pf(tmp_path, "ens1f0", 8, [])
    info = sriov_info("ens1f0", root=tmp_path)
    assert info is not None and info.num_vfs == 0 and info.vfs == ()


def test_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_pf(tmp_path, "eno1", 4, ["v0"])
    monkeypatch.setenv("NETMAP_SYSFS", str(tmp_path))
    assert sysfs_root() == tmp_path
    assert sriov_info("eno1").num_vfs == 1
    monkeypatch.delenv("NETMAP_SYSFS")
    assert sysfs_root() == Path("/sys")


def test_vhost_net(tmp_path: Path) -> None:
    assert not has_vhost_net(tmp_path)
    (tmp_path / "vhost-net").touch()
    assert has_vhost_net(tmp_path)
