"""Benchmark: netmap-qemu-helper against QEMU's own qemu-bridge-helper (the raw baseline),
both measured in the same run, in one lab namespace, on an existing bridge: wall time from
exec to the tap fd received, as QEMU sees it. Needs root; builds and removes its own lab
(prefix nmDb, or $PREFIX); QEMU's ACL lives in a private mount namespace (tmpfs over /etc)."""

from __future__ import annotations

import array
import ctypes
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
QEMU_HELPER = "/usr/lib/qemu/qemu-bridge-helper"
RUNS = int(os.environ.get("RUNS", "30"))
PREFIX = os.environ.get("PREFIX", "nmDb")  # the lab's namespace names; only those are deleted


def call(argv: list[str], env: dict[str, str]) -> float:
    ours, theirs = socket.socketpair()
    start = time.perf_counter()
    proc = subprocess.Popen([*argv, f"--fd={theirs.fileno()}"], pass_fds=[theirs.fileno()],
                            env=env, stderr=subprocess.PIPE)
    theirs.close()
    _, anc, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(4))
    elapsed = time.perf_counter() - start
    err = proc.stderr.read()
    proc.wait()
    assert anc and proc.returncode == 0, err
    os.close(array.array("i", anc[0][2][:4])[0])
    ours.close()
    return elapsed


def main() -> int:
    from netmap.lab import build_lab, teardown_lab
    from netmap.load import load_fleet
    from netmap.netlink.tapfd import enter_netns

    work = Path(tempfile.mkdtemp(prefix="nmdbench"))
    shutil.copytree(REPO / "mappings", work / "m")
    host_file = work / "m" / "hosts" / "host-a.toml"
    host_file.write_text(host_file.read_text().replace('netns = "nm-lab-host-a"',
                                                       f'netns = "{PREFIX}-host-a"'))
    (work / "acl.conf").write_text("allow mgmt\n")
    lab = build_lab(load_fleet(work / "m"), PREFIX, ["host-a"])
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "NETMAP_MAPPINGS": str(work / "m"),
               "NETMAP_HOST": "host-a", "NETMAP_QEMU_ACL": str(work / "acl.conf"),
               "NETMAP_STATE_DIR": str(work / "state")}
        netmap = [sys.executable, "-m", "netmap.qemu.helper", "--use-vnet", "--br=mgmt"]
        call(netmap, env)  # makes br-eth1 (as realize would): both then attach to it
        enter_netns(lab.hosts["host-a"])
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.unshare(0x00020000) == 0
        assert libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0
        assert libc.mount(b"tmpfs", b"/etc", b"tmpfs", 0, None) == 0
        os.mkdir("/etc/qemu")
        Path("/etc/qemu/bridge.conf").write_text("allow br-eth1\n")
        qemu = [QEMU_HELPER, "--use-vnet", "--br=br-eth1"]
        times: dict[str, list[float]] = {"qemu-bridge-helper": [], "netmap-qemu-helper": []}
        for _ in range(RUNS):  # interleaved, so drift hits both alike
            times["qemu-bridge-helper"].append(call(qemu, env))
            times["netmap-qemu-helper"].append(call(netmap, env))
        base = statistics.median(times["qemu-bridge-helper"])
        for name, values in times.items():
            med = statistics.median(values)
            print(f"{name:20s} median {med * 1000:7.1f} ms  p90 "
                  f"{sorted(values)[int(len(values) * 0.9)] * 1000:7.1f} ms  "
                  f"ratio {med / base:5.1f}x")
    finally:
        teardown_lab(lab)
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
