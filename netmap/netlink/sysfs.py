"""SR-IOV and vhost-net facts read from sysfs and /dev, under a configurable root.

The root is a parameter (or $NETMAP_SYSFS) so that tests and discovery can read a fake tree
laid out like the kernel's: ``<root>/class/net/<pf>/device/sriov_totalvfs``,
``sriov_numvfs`` and one ``virtfn<N>`` symlink per VF to the VF's PCI device directory,
whose ``net/`` directory holds the VF netdev's name (empty while the VF is bound to vfio)
and whose ``driver`` symlink names the PCI driver bound to it.
No pyroute2 here: plain file reads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SYSFS = "/sys"
_VIRTFN = re.compile(r"^virtfn(\d+)$")


@dataclass(frozen=True)
class VirtualFunction:
    """One VF of a PF: its index on the PF (the `vf` number netlink wants), PCI address and
    netdev name (None while the VF is bound to a non-network driver such as vfio-pci)."""

    index: int
    pci: str
    netdev: str | None = None
    driver: str | None = None  # the PCI driver bound to it (igbvf, vfio-pci), None: none


@dataclass(frozen=True)
class SriovInfo:
    pf: str
    total_vfs: int
    num_vfs: int
    vfs: tuple[VirtualFunction, ...] = ()

    def vf(self, index: int) -> VirtualFunction | None:
        return next((vf for vf in self.vfs if vf.index == index), None)


def sysfs_root(root: str | Path | None = None) -> Path:
    """The sysfs root to read: the argument, else $NETMAP_SYSFS, else /sys."""
    return Path(root if root is not None else os.environ.get("NETMAP_SYSFS") or DEFAULT_SYSFS)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return None


def _vf_netdev(vf_dir: Path) -> str | None:
    try:
        names = sorted(entry.name for entry in (vf_dir / "net").iterdir())
    except OSError:
        return None
    return names[0] if names else None


def sriov_info(pf: str, root: str | Path | None = None) -> SriovInfo | None:
    """The SR-IOV pool of netdev `pf`, or None when `pf` is absent or not SR-IOV capable."""
    device = sysfs_root(root) / "class" / "net" / pf / "device"
    total = _read_int(device / "sriov_totalvfs")
    if total is None:
        return None
    num = _read_int(device / "sriov_numvfs") or 0
    vfs = []
    try:
        entries = list(device.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        match = _VIRTFN.match(entry.name)
        if not match:
            continue
        # virtfnN is a symlink to the VF's PCI device directory, named by its address.
        pci = os.path.basename(os.path.realpath(entry)) if entry.is_symlink() else entry.name
        driver = entry / "driver"
        vfs.append(VirtualFunction(int(match.group(1)), pci, _vf_netdev(entry),
                                   os.path.basename(os.path.realpath(driver))
                                   if driver.is_symlink() else None))
    vfs.sort(key=lambda vf: vf.index)
    return SriovInfo(pf=pf, total_vfs=total, num_vfs=num, vfs=tuple(vfs))


def has_vhost_net(dev_root: Path = Path("/dev")) -> bool:
    """Whether the vhost-net accelerator is available (its character device exists)."""
    return (Path(dev_root) / "vhost-net").exists()


def has_tun(dev_root: Path = Path("/dev")) -> bool:
    return (Path(dev_root) / "net" / "tun").exists()
