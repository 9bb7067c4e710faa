"""Devices netmap did not make are never removed or rewritten (real kernel, prefix nmha).

State identifies what netmap made by ifindex, not only by name and kind: a foreign device
that took the name of one netmap made is refused by realize and left alone by release.
A bridge netmap adopted gets back only what netmap did to it; a bridge netmap made but
had to keep stays in state until it is free; FDB ageing is part of "the same bridge".
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import ip_links
from test_realize import VM5, VM6, host_dump, plan_for, run

from netmap.cli import main
from netmap.state import HostState

PREFIX = "nmha"


@pytest.fixture
def lab(cli_lab_factory):
    return cli_lab_factory(PREFIX, ["host-a"], {"vm5": VM5, "vm6": VM6})


def link(ns: str, name: str) -> dict:
    return host_dump(ns)["links"][name]


def test_a_foreign_tap_with_netmaps_name_is_neither_repaired_nor_deleted(lab, capsys) -> None:
    built, root = lab
    ns = built.hosts["host-a"]
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    tap = plan_for(root, "vm5", "host-a").nics[0].device
    made = HostState.load("host-a").made_ifindex(f"link:{tap}")
    assert made == ip_links(ns, tap)[0]["ifindex"]
    # netmap's tap is deleted; someone makes their own tap of that name, not in the bridge
    run("ip", "link", "del", tap, netns=ns)
    run("ip", "tuntap", "add", "dev", tap, "mode", "tap", netns=ns)
    run("ip", "link", "set", tap, "mtu", "1400", netns=ns)
    theirs = link(ns, tap)
    capsys.readouterr()
    assert main(["realize", "vm5", "--host", "host-a"]) == 3
    err = capsys.readouterr().err
    assert f"{tap} on host-a is not the tun netmap made (ifindex {made}, for vm5)" in err
    assert f"ip link del {tap}" in err
    assert "release vm5 on host-a first" in err
    assert link(ns, tap) == theirs  # not repaired: no master, MTU and MAC as they were
    assert main(["drift", "host-a", "--json"]) == 1
    replaced = [f for f in json.loads(capsys.readouterr().out)["findings"]
                if f["code"] == "ENDPOINT_REPLACED"]
    assert len(replaced) == 1
    assert f"ifindex {made}, is gone" in replaced[0]["message"]
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    out = capsys.readouterr().out
    assert f"link:{tap}: now another tun" in out
    assert "not netmap's, left alone" in out
    assert link(ns, tap) == theirs
    assert "br-eth1" not in host_dump(ns)["links"]  # netmap's own bridge did go


def test_a_foreign_bridge_with_netmaps_name_is_neither_repaired_nor_deleted(lab, capsys,
                                                                             ) -> None:
    built, _root = lab
    ns = built.hosts["host-a"]
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    made = HostState.load("host-a").made_ifindex("link:br-eth1")
    assert made is not None
    run("ip", "link", "del", "br-eth1", netns=ns)
    # exactly what netmap would make, and even the uplink in it: still not netmap's
    run("ip", "link", "add", "br-eth1", "type", "bridge", "ageing_time", "3000", netns=ns)
    run("ip", "link", "set", "eth1", "master", "br-eth1", netns=ns)
    run("ip", "link", "set", "br-eth1", "up", netns=ns)
    theirs = host_dump(ns)
    capsys.readouterr()
    assert main(["realize", "vm5", "--host", "host-a"]) == 3
    err = capsys.readouterr().err
    assert f"br-eth1 on host-a is not the bridge netmap made (ifindex {made}" in err
    assert host_dump(ns) == theirs
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    assert "link:br-eth1: now another bridge" in capsys.readouterr().out
    after = host_dump(ns)["links"]
    assert after["br-eth1"] == theirs["links"]["br-eth1"]
    assert after["eth1"]["master"] == "br-eth1"  # their port stays theirs
    assert HostState.load("host-a").data["resources"] == {}


def test_an_adopted_bridge_gets_back_only_what_netmap_did(lab, capsys) -> None:
    """An admin's bridge without the uplink: realize adopts it and enslaves the uplink;
    release takes the uplink out again and leaves the bridge."""
    built, _root = lab
    ns = built.hosts["host-a"]
    run("ip", "link", "add", "br-eth1", "type", "bridge", "ageing_time", "3000", netns=ns)
    run("ip", "link", "set", "br-eth1", "up", netns=ns)
    before = host_dump(ns)
    assert "master" not in before["links"]["eth1"]
    assert main(["realize", "vm5", "--host", "host-a", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    verdicts = {s["step"]["kind"] + ":" + str(s["step"].get("name") or s["step"].get("port")):
                s["result"] for s in steps}
    assert verdicts["bridge:br-eth1"] == "adopt"
    assert verdicts["enslave:eth1"] == "create"
    assert link(ns, "eth1")["master"] == "br-eth1"
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    after = host_dump(ns)
    assert after["links"]["eth1"] == before["links"]["eth1"]  # out of the bridge again
    # a bridge takes its ports' lowest MAC (and offload limits), and has none once they
    # are gone: the kernel's doing. What the admin set on it is as before.
    settings = lambda br: (br["mtu"], br["flags"], {  # noqa: E731
        k: v for k, v in br["linkinfo"]["info_data"].items()
        if k not in ("bridge_id", "root_id")})
    assert settings(after["links"]["br-eth1"]) == settings(before["links"]["br-eth1"])
    assert {n: v for n, v in after["links"].items() if n != "br-eth1"} == \
        {n: v for n, v in before["links"].items() if n != "br-eth1"}
    assert HostState.load("host-a").data["resources"] == {}


def test_bridge_ageing_is_part_of_the_match(lab, capsys) -> None:
    """A bridge that forgets a MAC after 300 s keeps sending a migrated guest's frames the
    old way for minutes: not the 30 s bridge the plan needs."""
    built, _root = lab
    ns = built.hosts["host-a"]
    run("ip", "link", "add", "br-eth1", "type", "bridge", "ageing_time", "30000", netns=ns)
    run("ip", "link", "set", "eth1", "master", "br-eth1", netns=ns)
    run("ip", "link", "set", "br-eth1", "up", netns=ns)
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 3
    assert "br-eth1 on host-a is not netmap's and differs: ageing 300s (want 30s)" in \
        capsys.readouterr().err
    assert host_dump(ns) == before
    run("ip", "link", "del", "br-eth1", netns=ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    made = host_dump(ns)
    run("ip", "link", "set", "br-eth1", "type", "bridge", "ageing_time", "30000", netns=ns)
    capsys.readouterr()
    assert main(["realize", "vm5", "--host", "host-a", "--json"]) == 0  # netmap's: repaired
    results = {s["step"].get("name"): s["result"]
               for s in json.loads(capsys.readouterr().out)["steps"]}
    assert results["br-eth1"] == "repair"
    assert host_dump(ns) == made


def test_a_kept_bridge_stays_in_state_until_it_is_free(lab, capsys) -> None:
    built, _root = lab
    ns = built.hosts["host-a"]
    before = host_dump(ns)
    assert main(["realize", "vm5", "--host", "host-a"]) == 0
    run("ip", "link", "add", "vnet0", "type", "veth", "peer", "name", "vnet0p", netns=ns)
    run("ip", "link", "set", "vnet0", "master", "br-eth1", netns=ns)
    assert main(["release", "vm5", "--host", "host-a"]) == 0
    assert "bridge still has ports netmap did not make: vnet0" in capsys.readouterr().out
    state = HostState.load("host-a")
    assert state.users("link:br-eth1") == []
    assert state.made_ifindex("link:br-eth1")
    run("ip", "link", "del", "vnet0", netns=ns)
    assert main(["realize", "vm6", "--host", "host-a"]) == 0
    assert main(["release", "vm6", "--host", "host-a"]) == 0  # a later release on the host
    assert host_dump(ns) == before
    assert HostState.load("host-a").data["resources"] == {}


def test_the_qemu_helpers_bridge_is_recorded_and_removed_once_unused(lab, tmp_path) -> None:
    """The helper makes br-eth1 for QEMU's tap through realize's steps: state records the
    bridge as netmap's, used by the helper's endpoint (qemu:TAP); the tap goes with QEMU,
    its watcher releases the endpoint, and the bridge goes with its last user."""
    from netmap.netlink.tapfd import tap_info
    from tests.test_qemu_helper import call_helper, helper_env, wait_gone

    built, root = lab
    ns = built.hosts["host-a"]
    before = host_dump(ns)
    acl = tmp_path / "qemu-helper.conf"
    acl.write_text("allow mgmt\n")
    env = helper_env(root, acl)
    assert env["NETMAP_STATE_DIR"] == str(tmp_path / "state")  # the state realize uses
    got = call_helper(["--br=mgmt"], env)
    assert got.code == 0, got.stderr
    assert got.fd is not None
    try:
        tap = tap_info(got.fd)[0]
        state = HostState.load("host-a")
        assert state.users("link:br-eth1") == [f"qemu:{tap}"]
        assert state.made_ifindex("link:br-eth1") == ip_links(ns, "br-eth1")[0]["ifindex"]
        assert main(["realize", "vm6", "--host", "host-a"]) == 0  # QEMU still has its tap
        assert link(ns, tap)["master"] == "br-eth1"
        # vm6 is on another network: the bridge stays the helper's endpoint's alone
        assert HostState.load("host-a").users("link:br-eth1") == [f"qemu:{tap}"]
    finally:
        got.close()
    assert wait_gone(ns, tap)
    deadline = time.monotonic() + 10
    while f"qemu:{tap}" in HostState.load("host-a").guests and time.monotonic() < deadline:
        time.sleep(0.05)  # the watcher releases the endpoint once the tap is gone
    assert HostState.load("host-a").resource("link:br-eth1") is None
    assert "br-eth1" not in host_dump(ns)["links"]
    assert main(["release", "vm6", "--host", "host-a"]) == 0
    assert host_dump(ns) == before
    assert HostState.load("host-a").data["resources"] == {}
