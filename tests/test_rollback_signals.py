"""Interrupting realize anywhere undoes everything (real kernel, namespaces, prefix nmha).

A 5-NIC guest (two taps on a bridge, a vxlan with unicast remotes on its bridge, two
macvtaps) is realized while something raises at every netlink send in turn: Ctrl-C right
after the kernel took the request (its ack not read yet), Ctrl-C just before, ENOBUFS inside
the pipelined batch after the kernel processed part of it, and a real SIGINT injected by
strace into the CLI. Each time the host (full `ip -d link`, `bridge vlan` and `bridge fdb`
dumps, test_realize's host_dump) and the state file must be exactly as before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import guest_toml
from faults import (
    enobufs_half_way,
    interrupt_after,
    interrupt_before,
    realize_counting_sends,
    realize_with_fault,
)
from test_realize import host_dump, plan_for, run

from netmap.errors import ApplyError
from netmap.netlink.apply import realize_plan, release_guest
from netmap.state import HostState

PREFIX = "nmha"
REMOTES = '["192.0.2.10", "192.0.2.11"]'  # TEST-NET: FDB entries only, nothing is sent
NETWORKS = """
[networks.flat-b]
segment = "dc1-fabric"
[networks.flat-p]
segment = "dc1-fabric"
"""
HOST = """
[networks.flat-b]
mode = "macvtap-bridge"
uplink = "eth0"
[networks.flat-p]
mode = "macvtap-private"
uplink = "eth0"
"""
G5 = guest_toml("g5", "host-a", *((net, f"52:54:00:5a:00:0{i}") for i, net in
                                   enumerate(["mgmt", "tenant-blue", "flat-b", "flat-p", "mgmt"])))


@pytest.fixture
def g5_lab(cli_lab_factory, mappings: Path):
    with (mappings / "networks.toml").open("a") as networks:
        networks.write(NETWORKS)
    host = mappings / "hosts" / "host-a.toml"
    text = host.read_text().replace('vxlan = { group = "239.1.1.1" }',
                                    f"vxlan = {{ remotes = {REMOTES} }}")
    assert REMOTES in text
    host.write_text(text + HOST)
    return cli_lab_factory(PREFIX, ["host-a"], {"g5": G5})


def assert_untouched(ns: str, before: dict, state_before: dict, label: str) -> None:
    after = host_dump(ns)
    left = {name for name in after["links"]} - set(before["links"])
    assert after == before, f"{label} left changes behind (new links: {sorted(left)})"
    assert HostState.load("host-a").data == state_before, f"{label} changed the state"


def count_sends(plan, ns: str) -> int:
    sends = realize_counting_sends(plan)
    release_guest("host-a", "g5", ns)
    return sends


@pytest.mark.parametrize("fault", [interrupt_after, interrupt_before, enobufs_half_way])
def test_a_fault_at_every_netlink_send_leaves_nothing(g5_lab, fault) -> None:
    built, root = g5_lab
    ns = built.hosts["host-a"]
    before, state_before = host_dump(ns), HostState.load("host-a").data
    plan = plan_for(root, "g5", "host-a")
    total = count_sends(plan, ns)
    assert total >= 10  # links, bridge, ports, vxlan, its remotes, the taps' and macvtaps' batch
    assert_untouched(ns, before, state_before, "the counting run's release")
    for at in range(1, total + 1):
        realize_with_fault(plan, at, fault)
        assert_untouched(ns, before, state_before, f"{fault.__name__} at send {at}")
    assert realize_plan(plan).changed  # the host is still usable afterwards


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (fault injection)")
def test_sigint_injected_at_every_sendto_of_the_cli(g5_lab, tmp_path: Path) -> None:
    """The issue's reproduction: strace delivers SIGINT on the Nth sendto of `netmap
    realize`; every run exits 3 (or 130 before anything started) and leaves nothing."""
    built, _root = g5_lab
    ns = built.hosts["host-a"]
    before, state_before = host_dump(ns), HostState.load("host-a").data
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    argv = [sys.executable, "-m", "netmap", "realize", "g5", "--host", "host-a"]
    finished = False
    at = 0
    while not finished:
        at += 1
        assert at < 200
        done = subprocess.run(["strace", "-f", "-o", "/dev/null", "-e", "trace=sendto",
                               "-e", f"inject=sendto:signal=INT:when={at}", *argv],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode == 0:  # past the last send: realized; undo and stop
            finished = True
            subprocess.run([*argv[:3], "release", "g5", "--host", "host-a"], env=env,
                           check=True, capture_output=True)
        else:
            assert done.returncode in (3, 130), done.stderr
            if done.returncode == 3:
                assert ("every change was undone" in done.stderr
                        or "nothing was changed" in done.stderr), done.stderr
        assert_untouched(ns, before, state_before, f"SIGINT at sendto {at}")
    assert at > 10


def test_a_bad_argument_between_the_messages_of_a_step_leaves_nothing(g5_lab) -> None:
    """The vxlan device is made, then its first remote cannot even be encoded: the device
    (made by the first message of the step) is undone with the rest. Load validates remotes
    (issue 14 item 12); the plan is changed here so that apply is tested on its own."""
    from dataclasses import replace

    from netmap import plan as p

    built, root = g5_lab
    ns = built.hosts["host-a"]
    before, state_before = host_dump(ns), HostState.load("host-a").data
    plan = plan_for(root, "g5", "host-a")
    bad = lambda s: replace(s, remotes=("999.1.1.1",)) if isinstance(s, p.EnsureVxlan) else s  # noqa: E731
    plan = replace(plan, nics=tuple(replace(nic, steps=tuple(bad(s) for s in nic.steps))
                                    for nic in plan.nics))
    with pytest.raises(ApplyError) as caught:
        realize_plan(plan)
    assert "every change was undone" in caught.value.problem
    assert_untouched(ns, before, state_before, "a bad vxlan remote")


@pytest.mark.parametrize("kind", ["bridge", "macvtap"])
def test_a_name_taken_meanwhile_is_not_undone(g5_lab, kind: str) -> None:
    """Between decide and create someone else makes a device of the planned name: the
    kernel refuses netmap's request (EEXIST), so the undo registered before it is
    withdrawn and rollback leaves their device alone."""
    from netmap import plan as p

    built, root = g5_lab
    ns = built.hosts["host-a"]
    before, state_before = host_dump(ns), HostState.load("host-a").data
    plan = plan_for(root, "g5", "host-a")
    wanted = p.EnsureBridge if kind == "bridge" else p.CreateMacvtap
    name = next(step.name for _, step in plan.steps if isinstance(step, wanted))
    extra = ["type", "bridge"] if kind == "bridge" else ["link", "eth0", "type", "macvtap"]

    def squat(_position: int, step) -> None:
        if isinstance(step, wanted) and step.name == name:
            run("ip", "link", "add", name, *extra, netns=ns)

    with pytest.raises(ApplyError) as caught:
        realize_plan(plan, on_step=squat)
    assert f"{name} appeared meanwhile" in caught.value.problem
    assert "every change was undone" in caught.value.problem
    assert name in host_dump(ns)["links"]  # theirs, kept
    run("ip", "link", "del", name, netns=ns)
    assert_untouched(ns, before, state_before, "the run that met their device")
