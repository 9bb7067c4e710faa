"""QEMU's -netdev option for a NIC realize built (the helper is the other way in). Pure."""

from __future__ import annotations

from collections.abc import Mapping


def _queues(nic: Mapping[str, object]) -> str:
    """QEMU's side of several queues: the netdev's queues, and virtio-net's mq with
    2N+2 MSI-X vectors (one per queue and direction, config, control)."""
    queues = int(str(nic.get("queues") or 1))
    if queues <= 1:
        return ""
    return (f",queues={queues}  (and -device virtio-net-pci,netdev=net{nic['nic']},mq=on,"
            f"vectors={2 * queues + 2})")


def netdev_option(nic: Mapping[str, object]) -> str | None:
    """-netdev for one NIC of a realize result: the tap by name, or the macvtap's
    /dev/tapN opened once per queue; None for a VF (a PCI device, -device vfio-pci)."""
    device, tapdev = nic.get("device"), nic.get("tapdev")
    if not device or "pf" in nic:  # a VF (its netdev's macvtap too): libvirt attaches it
        return None
    index = nic["nic"]
    if "tapdev" not in nic:  # a tap (on a bridge or an OVS port): QEMU opens it by name
        return (f"-netdev tap,id=net{index},ifname={device},script=no,downscript=no,"
                "vhost=on" + _queues(nic))
    queues = int(str(nic.get("queues") or 1))
    if queues <= 1:
        return f"-netdev tap,id=net{index},fd=N,vhost=on  (N: {tapdev} opened read-write)"
    return (f"-netdev tap,id=net{index},fds=N1:N2:...,vhost=on  (one fd per queue: {tapdev} "
            f"opened read-write {queues} times)")
