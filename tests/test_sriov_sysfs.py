"""SR-IOV facts from a fake sysfs tree laid out like the kernel's (no hardware needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import fake_sriov_pf

from netmap.netlink.sysfs import has_vhost_net, sriov_info, sysfs_root


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
