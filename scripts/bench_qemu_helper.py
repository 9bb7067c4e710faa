"""Benchmark: netmap-qemu-helper against `python -c pass` (the target: at most 4x, since QEMU
waits for the helper at every guest start and hotplug) and QEMU's own qemu-bridge-helper
(the raw floor), all measured in the same run, interleaved, in one lab namespace, on an
existing bridge: wall time from exec to the tap fd received, as QEMU sees it.

Two mappings shapes, so that the helper is seen not to slow down with the fleet: the
example host-a among 10 generated hosts, and among 2,000 (scripts/gen_fleet.py; $HOSTS
overrides the large one). Needs root; builds and removes its own lab (prefix nmDb, or
$PREFIX); QEMU's ACL lives in a private mount namespace (tmpfs over /etc)."""

from __future__ import annotations

import array
import ctypes
import json
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
SHAPES = (10, int(os.environ.get("HOSTS", "2000")))  # generated hosts besides host-a
TARGET = 4.0  # at most this many times `python -c pass`
PREFIX = os.environ.get("PREFIX", "nmDb")  # the lab's namespace names; only those are deleted
TMPFS = os.environ.get("TMPFS", "/dev/shm")  # where state lives, as /run/netmap does


def call(argv: list[str], env: dict[str, str], keep: list[int] | None = None) -> float:
    """Wall time from exec to the fd received; the fd is closed (QEMU gone) unless kept."""
    ours, theirs = socket.socketpair()
    start = time.perf_counter()
    proc = subprocess.Popen([*argv, f"--fd={theirs.fileno()}"], pass_fds=[theirs.fileno()],
                            env=env, stderr=subprocess.PIPE)
    theirs.close()
    _, anc, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(4))
    elapsed = time.perf_counter() - start
    err = proc.stderr.read()
    proc.wait()
    assert anc, err
    assert proc.returncode == 0, err
    fd = array.array("i", anc[0][2][:4])[0]
    if keep is None:
        os.close(fd)
    else:
        keep.append(fd)
    ours.close()
    return elapsed


def settled(state: Path, users: int) -> None:
    """Wait until the watchers of the helpers whose QEMU is gone have released them from
    state (not timed: a guest start does not wait for another guest's exit)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if len(json.loads(state.read_text())["guests"]) <= users:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise SystemExit(f"the helpers' watchers did not release them from {state}")


def mappings(work: Path, hosts: int) -> Path:
    """gen_fleet's `hosts` hosts (and their guests), plus the example host-a and the
    example networks it binds."""
    folder = work / f"m{hosts}"
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_fleet.py"), str(folder),
                    "--hosts", str(hosts)], check=True, capture_output=True)
    generated = (folder / "networks.toml").read_text()
    example = (REPO / "mappings" / "networks.toml").read_text()
    for block in example.split("\n\n"):  # the example's networks gen_fleet lacks
        header = next((line for line in block.splitlines() if line.startswith("[")), None)
        if header and header not in generated:
            generated += "\n" + block.strip() + "\n"
    (folder / "networks.toml").write_text(generated)
    host = (REPO / "mappings" / "hosts" / "host-a.toml").read_text()
    (folder / "hosts" / "host-a.toml").write_text(
        host.replace('netns = "nm-lab-host-a"', f'netns = "{PREFIX}-host-a"'))
    return folder


def bare(argv: list[str], env: dict[str, str]) -> float:
    """A process's wall time from exec to exit: the interpreter's own start-up."""
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True)
    return time.perf_counter() - start


def main() -> int:
    from netmap.lab import build_lab, teardown_lab
    from netmap.load import load_fleet
    from netmap.netlink.tapfd import enter_netns

    # netmap's bytecode, as an installed netmap has it: with PYTHONDONTWRITEBYTECODE set
    # (CI, some shells) every start would otherwise compile each module from source
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "netmap")],
                   check=True)
    work = Path(tempfile.mkdtemp(prefix="nmdbench"))
    # state on a tmpfs, as /run/netmap is on a host (a reboot wipes devices and state
    # alike): the helper writes it twice per start (pending, then realized), each fsynced
    state_dir = Path(tempfile.mkdtemp(prefix="nmdbench", dir=TMPFS))
    running: list[int] = []  # a guest that keeps br-eth1 (made as realize would) in use
    folders = {hosts: mappings(work, hosts) for hosts in SHAPES}
    (work / "acl.conf").write_text("allow mgmt\n")
    lab = build_lab(load_fleet(folders[SHAPES[0]]), PREFIX, ["host-a"])
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO), "NETMAP_HOST": "host-a",
               "NETMAP_QEMU_ACL": str(work / "acl.conf"), "NETMAP_STATE_DIR": str(state_dir)}
        envs = {hosts: {**env, "NETMAP_MAPPINGS": str(folder)} for hosts, folder in folders.items()}
        netmap = [sys.executable, "-m", "netmap.qemu.helper", "--use-vnet", "--br=mgmt"]
        call(netmap, envs[SHAPES[0]], keep=running)
        state = state_dir / "host-a.json"
        enter_netns(lab.hosts["host-a"])
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.unshare(0x00020000) == 0
        assert libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0
        assert libc.mount(b"tmpfs", b"/etc", b"tmpfs", 0, None) == 0
        os.mkdir("/etc/qemu")
        Path("/etc/qemu/bridge.conf").write_text("allow br-eth1\n")
        qemu = [QEMU_HELPER, "--use-vnet", "--br=br-eth1"]
        baseline = "python -c pass"
        times: dict[str, list[float]] = {baseline: [], "qemu-bridge-helper": []}
        times.update({f"netmap-qemu-helper, {hosts + 1} hosts": [] for hosts in SHAPES})
        for _ in range(RUNS):  # interleaved, so drift hits all alike
            times[baseline].append(bare([sys.executable, "-c", "pass"], env))
            times["qemu-bridge-helper"].append(call(qemu, env))
            for hosts in SHAPES:
                times[f"netmap-qemu-helper, {hosts + 1} hosts"].append(call(netmap, envs[hosts]))
                settled(state, len(running))
        base = statistics.median(times[baseline])
        print(f"{RUNS} rounds, {sys.executable}; ratio to {baseline}")
        for name, values in times.items():
            med = statistics.median(values)
            print(f"{name:34s} median {med * 1000:7.1f} ms  p90 "
                  f"{sorted(values)[int(len(values) * 0.9)] * 1000:7.1f} ms  "
                  f"ratio {med / base:5.2f}x")
        for hosts in SHAPES:
            ratio = statistics.median(times[f"netmap-qemu-helper, {hosts + 1} hosts"]) / base
            print(f"target <= {TARGET:g}x python -c pass, {hosts + 1} hosts: "
                  f"{'PASS' if ratio <= TARGET else 'MISSED'} ({ratio:.2f}x)")
    finally:
        for fd in running:
            os.close(fd)
        if running:  # its watcher releases it (and the bridge) before the lab goes
            settled(state_dir / "host-a.json", 0)
        teardown_lab(lab)
        shutil.rmtree(work)
        shutil.rmtree(state_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
