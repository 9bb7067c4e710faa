"""The namespace tier's rollback tests (test_rollback_signals, test_realize's crash) for the
modes only this kernel has: a macvtap on an 802.1Q sub-interface, a tap on a
VLAN-filtering bridge, and two VFs of the real PF (one handed over whole, one as a passthru
macvtap), all in one guest.

* A fault of tests/faults.py (Ctrl-C just before and just after the kernel takes a
  request, ENOBUFS half-way through a pipelined batch) at every netlink send of realize,
  the kinds in turn (every kind at every send with `scripts/vmlab --sweep full`).
* A real SIGINT, from strace, at every sixth sendto of `netmap realize` (the console
  script's own entry, netmap.cli.run), also pyroute2's, which set the VF entries.
* A real SIGKILL, from strace, at every eighth sendto from the 1st: the next realize
  finishes the guest as a clean realize would (release then undoes it); and at every
  eighth from the 5th, between those: release right after the kill undoes it. (--sweep
  full: every sendto for each.)

After each the host (`ip -d link` with the PF's VF entries, `bridge vlan`) and netmap's
state are as before. Under TCG one interpreter start costs 20-30 s, so the CLI runs in a
child forked from this process after its imports, with strace attached to it; what the
child runs is what the console script runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import (
    enobufs_half_way,
    interrupt_after,
    interrupt_before,
    realize_counting_sends,
    realize_with_fault,
)
from vmhost import HOST, guest, host_dump, ip, vf_entries, wait_until

from netmap.cli import main
from netmap.load import load_fleet
from netmap.netlink.apply import realize_plan, release_guest
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph
from netmap.state import HostState

pytestmark = pytest.mark.vm
UPLINKS = ("nmvmup0", "nmvmup1")
NETWORKS = """[networks.tagged-mv]
segment = "lab"
vlan = 151

[networks.tagged-br]
segment = "lab"
vlan = 152

[networks.vf-whole]
segment = "lab-storage"
vlan = 153

[networks.vf-mv]
segment = "lab-storage"
vlan = 154
"""


def host_mapping(pf: str) -> str:
    return f"""[host]
name = "{HOST}"
features = ["tun", "macvtap", "bridge", "sriov", "vhost-net"]

[uplinks.nmvmup0]
segments = ["lab"]

[uplinks.nmvmup1]
segments = ["lab"]

[uplinks.{pf}]
segments = ["lab-storage"]
sriov = {{ total_vfs = 4 }}

[networks.tagged-mv]
mode = "macvtap-vepa"
uplink = "nmvmup0"

[networks.tagged-br]
mode = "bridge"
uplink = "nmvmup1"

[networks.vf-whole]
mode = "sriov-vf"
uplink = "{pf}"
spoofchk = false

[networks.vf-mv]
mode = "sriov-vf"
uplink = "{pf}"
vf_attach = "macvtap"
"""


@pytest.fixture
def four_modes(sriov_pf, fleet) -> Iterator[tuple[str, object]]:
    for name in UPLINKS:
        ip("link", "add", name, "type", "dummy")
        ip("link", "set", name, "up")
    root = fleet(NETWORKS, host_mapping(sriov_pf), {"g4": guest(
        "g4", ("tagged-mv", "52:54:00:6b:00:01"), ("tagged-br", "52:54:00:6b:00:02"),
        ("vf-whole", "52:54:00:6b:00:03"), ("vf-mv", "52:54:00:6b:00:04"))})
    loaded = load_fleet(root)
    # The PF up once (and down again) before the host is recorded, as on a host in service:
    # a PF's first up gives it its default qdisc (noop -> mq, seen in a VM just booted),
    # which stays, so a realize (it brings the PF up) and its release changed the dump.
    first = host_dump()
    ip("link", "set", sriov_pf, "up")
    wait_until(lambda: Path(f"/sys/class/net/{sriov_pf}/operstate").read_text().strip() == "up",
               f"{sriov_pf} up")
    ip("link", "set", sriov_pf, "down")
    settled = changes(first, host_dump())
    if settled:  # what the PF's first up changed by itself: said, not hidden
        warnings.warn(f"{sriov_pf} up and down changed: {settled}", stacklevel=1)
    yield sriov_pf, build_plan(build_graph(loaded), loaded.guests["g4"], loaded.hosts[HOST])
    release_guest(HOST, "g4", None)
    for name in UPLINKS:
        ip("link", "del", name, check=False)


# The VM tier must fit CI's budget beside the namespace suite on 2 cores, and each point
# of a sweep costs seconds under TCG: by default each fault kind hits every third send and
# the signals every sixth or eighth sendto, the two SIGKILL sweeps interleaved (1, 5, 9 …
# between them). `scripts/vmlab --sweep full` runs every kind at every send and every
# signal at every sendto.
FULL = os.environ.get("NETMAP_VMLAB_SWEEP") == "full"
SIGINT_STRIDE = 1 if FULL else 6
KILL_STRIDE = 1 if FULL else 8
RELEASE_KILL_STRIDE = 1 if FULL else 8
RELEASE_KILL_FIRST = 1 if FULL else 5
FAULTS = (interrupt_after, interrupt_before, enobufs_half_way)


def faults_at(send: int) -> tuple:
    """The fault kinds injected at this send: all of them, or one in turn."""
    return FAULTS if FULL else (FAULTS[(send - 1) % len(FAULTS)],)


def snapshot(pf: str) -> tuple[dict, dict]:
    """The host as iproute2 dumps it (the PF's link carries its VF entries) and the state."""
    dump = host_dump()
    assert dump["links"][pf].get("vfinfo_list"), f"{pf}'s dump has no VF entries"
    return dump, HostState.load(HOST).data


def changes(before: dict, after: dict) -> str:
    """What differs between two host dumps, link by link and key by key (for a failure)."""
    out = []
    for name in sorted(set(before["links"]) | set(after["links"])):
        was, now = before["links"].get(name), after["links"].get(name)
        if was is None or now is None:
            out.append(f"{name}: {'new' if was is None else 'gone'}")
        elif was != now:
            out.append(f"{name}: " + ", ".join(f"{key} {was.get(key)!r} -> {now.get(key)!r}"
                                              for key in sorted(set(was) | set(now))
                                              if was.get(key) != now.get(key)))
    if before["vlans"] != after["vlans"]:
        out.append(f"bridge vlan: {before['vlans']!r} -> {after['vlans']!r}")
    return "; ".join(out)


def assert_as_before(pf: str, before: tuple[dict, dict], what: str) -> None:
    now = snapshot(pf)
    assert now[0] == before[0], f"{what}: {changes(before[0], now[0])}"
    assert now[1] == before[1], f"{what}: netmap's state {before[1]!r} -> {now[1]!r}"


def counted_realize(pf: str, plan) -> tuple[int, tuple[dict, dict]]:
    """Realize once with every send counted; the count and the realized snapshot. Released
    after, and checked to leave nothing."""
    before = snapshot(pf)
    sends = realize_counting_sends(plan)
    realized = snapshot(pf)
    assert len({e["vf"] for e in vf_entries(pf) if e["mac"].startswith("52:54:00:6b")}) == 2
    release_guest(HOST, "g4", None)
    assert_as_before(pf, before, "the counting run's release")
    return sends, realized


def test_a_fault_at_every_netlink_send_leaves_host_pf_and_state_as_before(
        four_modes) -> None:
    pf, plan = four_modes
    kinds = {type(step).__name__ for _, step in plan.steps}
    assert {"EnsureVlanLink", "CreateMacvtap", "BridgeVlan", "CreateTap", "ClaimVf"} <= kinds
    before = snapshot(pf)
    total, realized = counted_realize(pf, plan)
    assert total >= 10
    for at in range(1, total + 1):
        for fault in faults_at(at):
            realize_with_fault(plan, at, fault)
            assert_as_before(pf, before, f"{fault.__name__} at send {at}")
    assert realize_plan(plan).changed  # the host is still usable afterwards
    assert snapshot(pf)[0]["links"][pf] == realized[0]["links"][pf]  # the same two VFs


def cli_under_strace(argv: list[str], inject: str, log: Path) -> int:
    """`netmap ARGV` as the console script runs it (netmap.cli.run), in a child forked from
    this process, with `strace -e inject=sendto:INJECT` attached before it starts; its exit
    code (negative: the signal that ended it). stderr goes to `log`."""
    from netmap import cli

    gate_read, gate_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(gate_write)
            os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (os._exit ends it)
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as a new interpreter
            os.read(gate_read, 1)  # until strace is attached
            sys.argv = ["netmap", *argv]
            cli.run()
        finally:
            os._exit(99)
    os.close(gate_read)
    tracer = subprocess.Popen(["strace", "-p", str(pid), "-o", "/dev/null", "-e", "trace=sendto",
                               "-e", f"inject=sendto:{inject}"],
                              stderr=subprocess.PIPE, text=True)
    # strace says so once the tracee is seized and interrupted: every later syscall is seen
    attached = tracer.stderr.readline() if tracer.stderr else ""
    os.write(gate_write, b"go")
    os.close(gate_write)
    _, status = os.waitpid(pid, 0)
    tracer.communicate(timeout=60)
    assert "attached" in attached, attached
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def cli_ready() -> None:
    """What realize imports lazily, once here: a child would import it anew (seconds under
    TCG each time)."""
    import pyroute2  # noqa: F401
    import rich.console  # noqa: F401

    import netmap.commands.realize
    import netmap.load
    import netmap.netlink.apply
    import netmap.query.graph  # noqa: F401


def test_sigint_from_strace_at_sampled_sendtos_of_the_cli(four_modes, cli_ready,
                                                          tmp_path: Path) -> None:
    """test_rollback_signals' strace sweep: a real SIGINT that strace delivers at the 1st,
    7th, 13th … sendto of `netmap realize` (rtnetlink's and pyroute2's), until one past the
    last (SIGINT_STRIDE, for time: every one took 609 s on a machine at load 20, and the
    in-process faults above stop at every netlink send); every run exits 3 (or 130 before
    anything started) and leaves the host and state as before."""
    pf, _plan = four_modes
    before = snapshot(pf)
    log = tmp_path / "stderr"
    argv = ["realize", "g4", "--host", HOST]
    at, code = 1 - SIGINT_STRIDE, 3
    while code != 0:
        at += SIGINT_STRIDE
        assert at < 200
        code = cli_under_strace(argv, f"signal=INT:when={at}", log)
        err = log.read_text()
        if code == 0:  # past the last send: realized
            assert main(["release", "g4", "--host", HOST]) == 0
        else:
            assert code in (3, 130), f"SIGINT at sendto {at}: exit {code}: {err}"
            assert code == 130 or ("every change was undone" in err
                                   or "nothing was changed" in err), err
        assert_as_before(pf, before, f"SIGINT at sendto {at} ({err})")
    assert at > 10


def comparable(snap: tuple[dict, dict]) -> tuple[dict, dict]:
    """A snapshot with every ifindex replaced by its link's name: a device made again by
    another run is the same device for this comparison if all else is equal."""
    dump, data = json.loads(json.dumps(snap[0])), json.loads(json.dumps(snap[1]))
    names = {link["ifindex"]: name for name, link in dump["links"].items()}
    for link in dump["links"].values():
        del link["ifindex"]
        if "link_index" in link:
            link["link_index"] = names.get(link["link_index"], link["link_index"])
    for record in data.get("resources", {}).values():
        info = record.get("info", {})
        if "ifindex" in info:
            info["ifindex"] = names.get(info["ifindex"], "gone")
    for entry in data.get("guests", {}).values():
        for nic in entry.get("nics", []):
            if "tapdev" in nic:  # /dev/tapIFINDEX
                nic["tapdev"] = names.get(int(nic["tapdev"].removeprefix("/dev/tap")), "gone")
    return dump, data


def test_sigkill_then_realize_finishes_and_release_undoes(
        four_modes, cli_ready, tmp_path: Path) -> None:
    """test_realize's crash mid-way: `netmap realize` killed by a real SIGKILL that strace
    delivers at its 1st, 9th, 17th … sendto, until one past the last (KILL_STRIDE, for
    time). After each kill the next `netmap realize` finishes the guest and verifies: the
    host (`ip -d link` with the PF's VF entries, `bridge vlan`) and netmap's state are then
    those of a clean realize (ifindexes aside); release then leaves the host and state as
    before the killed run."""
    pf, _plan = four_modes
    before = snapshot(pf)
    assert main(["realize", "g4", "--host", HOST]) == 0
    clean = comparable(snapshot(pf))
    assert main(["release", "g4", "--host", HOST]) == 0
    assert_as_before(pf, before, "the clean realize's release")
    log = tmp_path / "stderr"
    argv = ["realize", "g4", "--host", HOST]
    at, code = 1 - KILL_STRIDE, -signal.SIGKILL
    while code != 0:
        at += KILL_STRIDE
        assert at < 200
        code = cli_under_strace(argv, f"signal=KILL:when={at}", log)
        assert code in (0, -signal.SIGKILL), f"sendto {at}: exit {code}: {log.read_text()}"
        if code != 0:
            assert main(argv) == 0, f"the realize after a kill at sendto {at}"
        now = comparable(snapshot(pf))
        assert now[0] == clean[0], f"realized after a kill at sendto {at}: " \
            f"{changes(clean[0], now[0])}"
        assert now[1] == clean[1], f"state after a kill at sendto {at}: {clean[1]!r} -> " \
            f"{now[1]!r}"
        assert main(["release", "g4", "--host", HOST]) == 0, f"after a kill at sendto {at}"
        assert_as_before(pf, before, f"released after a kill at sendto {at}")
    assert at > 10


def test_sigkill_then_release_undoes(four_modes, cli_ready, tmp_path: Path) -> None:
    """The same kill with release right after it: at the 5th, 13th, 21st … sendto (between
    the sweep's above, for time: a realize after each kill makes that sweep cost 135 s here
    at every fourth sendto), until one past the last; release undoes what the killed run
    made and recorded, and the host and state are as before."""
    pf, _plan = four_modes
    before = snapshot(pf)
    log = tmp_path / "stderr"
    argv = ["realize", "g4", "--host", HOST]
    at, code = RELEASE_KILL_FIRST - RELEASE_KILL_STRIDE, -signal.SIGKILL
    while code != 0:
        at += RELEASE_KILL_STRIDE
        assert at < 200
        code = cli_under_strace(argv, f"signal=KILL:when={at}", log)
        assert code in (0, -signal.SIGKILL), f"sendto {at}: exit {code}: {log.read_text()}"
        assert main(["release", "g4", "--host", HOST]) == 0, f"after a kill at sendto {at}"
        assert_as_before(pf, before, f"released after a kill at sendto {at}")
    assert at > 10
