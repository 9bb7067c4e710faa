"""Helpers of the VM tier's tests: read the VM's links, VF entries and bridge VLANs back
through iproute2 (never through netmap's own code), and write mappings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: frames, steady
from frames import wait_for
from steady import steady_link

HOST = "nmvm-lab"  # the VM's host name (scripts/vmlab boots it with --name nmvm-lab)


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def bridge(*args: str) -> str:
    done = subprocess.run(["bridge", *args], capture_output=True, text=True, check=False)
    return done.stdout


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def vf_entries(pf: str) -> list[dict]:
    """The PF's VF entries as iproute2 reads them (IFLA_VFINFO_LIST), not as netmap does."""
    link = json.loads(ip("-j", "link", "show", pf))[0]
    return [{"vf": e["vf"], "mac": e["address"],
             "vlan": next((v["vlan"] for v in e.get("vlan_list", []) if "vlan" in v), 0),
             "spoofchk": e.get("spoofchk"), "trust": e.get("trust")}
            for e in link.get("vfinfo_list", [])]


def host_dump() -> dict:
    """Everything iproute2 says about the host's links and bridge VLANs, minus counters."""
    links = {}
    for link in json.loads(ip("-d", "-j", "link", "show")):
        links[link["ifname"]] = steady_link(link)
    return {"links": links, "vlans": bridge("-j", "vlan", "show")}


def pfs() -> list[str]:
    return os.environ.get("NETMAP_VMLAB_PFS", "").split()


def guest(name: str, *nics: tuple[str, str]) -> str:
    text = f'[guest]\nname = "{name}"\nhost = "{HOST}"\n'
    for network, mac in nics:
        text += f'\n[[nics]]\nnetwork = "{network}"\nmac = "{mac}"\n'
    return text


def set_numvfs(pf: str, count: int) -> None:
    device = Path("/sys/class/net") / pf / "device"
    (device / "sriov_numvfs").write_text("0")
    if count:
        (device / "sriov_numvfs").write_text(str(count))

    def netdevs_ready() -> bool:
        vfs = sorted(device.glob("virtfn*"))
        return len(vfs) == count and all(any((vf / "net").glob("*")) for vf in vfs)
    wait_until(netdevs_ready, f"{count} VF netdevs on {pf}")




def tap_fd(name: str, netns: str | None = None) -> int:
    """Open an existing tap as QEMU would, but without the vnet header: raw frames."""
    import fcntl
    import struct

    from netmap.netlink.rtnl import entered_netns

    if netns:
        with entered_netns(netns):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    else:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), 0x0002 | 0x1000))
    return fd


def macvtap_fd(name: str, netns: str | None, workdir: Path) -> int:
    """Open macvtap `name`'s char device as libvirt would, but without the vnet header:
    raw frames. The node is made in `workdir` from the numbers the macvtap's own
    namespace's sysfs gives (/dev/tapN names repeat across namespaces)."""
    import fcntl
    import struct

    where = ["ip", "netns", "exec", netns] if netns else []
    index = json.loads(ip(*(["-n", netns] if netns else []), "-j", "link", "show", name)
                       )[0]["ifindex"]
    numbers = subprocess.run([*where, "cat", f"/sys/class/net/{name}/macvtap/tap{index}/dev"],
                             capture_output=True, text=True, check=True).stdout
    major, minor = (int(n) for n in numbers.split(":"))
    node = workdir / f"{name}.node"
    os.mknod(node, 0o600 | 0o020000, os.makedev(major, minor))
    fd = os.open(node, os.O_RDWR | os.O_NONBLOCK)
    node.unlink()
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"", 0x0002 | 0x1000))  # no vnet hdr
    return fd


def arrives(fd: int, token: bytes, send: Callable[[], object], timeout: float) -> bool:
    """Send (again every 200 ms) and read `fd` until a frame carries `token` (True) or
    `timeout` passes."""
    return wait_for((fd, lambda: os.read(fd, 4096)), token, send, timeout)
