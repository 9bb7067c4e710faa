"""`netmap fleet discover` / `fleet drift` through real Ansible over real SSH.

Lab hosts (prefix fl) each run their own sshd on their namespace's loopback; Ansible reaches
each through an ssh ProxyCommand that enters the namespace (`ip netns exec NS socat -
TCP:127.0.0.1:22`), so no traffic leaves the namespaces this test made. host-c runs no sshd:
unreachable. The mappings compared are the drafts `fleet discover --write` made; then one
host's live links change under it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_MAPPINGS, REPO

sys.path.insert(0, str(REPO / "scripts"))
from ssh_lab import MISSING, ansible_env  # scripts/ is not a package
from ssh_lab import ssh_lab as start_ssh_lab

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(MISSING is not None, reason=f"needs {MISSING}")]


@pytest.fixture
def ssh_lab(lab_factory, tmp_path: Path) -> Iterator[dict]:
    lab, mappings = lab_factory("fl", ["host-a", "host-b", "host-c"])
    with start_ssh_lab(lab.hosts, tmp_path, silent=("host-c",)) as reached:
        yield {"lab": lab, "mappings": mappings, "inventory": reached.inventory,
               "tmp": tmp_path, "state": tmp_path / "state"}


def _netmap(lab: dict, mappings: Path, *args: str,
            remote: str = "discover --json") -> subprocess.CompletedProcess:
    """netmap fleet, running this checkout's netmap on each host with the lab's state."""
    command = shlex.join(["env", f"PYTHONPATH={REPO}", f"NETMAP_STATE_DIR={lab['state']}",
                          sys.executable, "-m", "netmap", *shlex.split(remote)])
    return subprocess.run(
        [sys.executable, "-m", "netmap", "--mappings", str(mappings), "fleet", *args,
         "-i", str(lab["inventory"]), "--command", command],
        capture_output=True, text=True, check=False, timeout=180, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **ansible_env(lab["tmp"])})


def _tap_of(lab: dict, guest: str) -> str:
    """The tap netmap made for the guest on host-a, from the state its realize wrote."""
    state = json.loads((lab["state"] / "host-a.json").read_text())
    (tap,) = [key[5:] for key, record in state["resources"].items()
              if guest in record["guests"] and record["step"].get("kind") == "tap"]
    return tap


def test_fleet_discover_then_drift_over_ssh(ssh_lab: dict) -> None:
    # a guest netmap realized on host-a: its state there is what drift judges endpoints by
    (ssh_lab["mappings"] / "guests/flg9.toml").write_text(
        '[guest]\nname = "flg9"\nhost = "host-a"\n\n[[nics]]\nnetwork = "mgmt"\n'
        'mac = "52:54:00:f1:09:01"\n')
    realized = subprocess.run(
        [sys.executable, "-m", "netmap", "--mappings", str(ssh_lab["mappings"]), "realize",
         "flg9", "--host", "host-a"], capture_output=True, text=True, check=False, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "NETMAP_STATE_DIR": str(ssh_lab["state"])})
    assert realized.returncode == 0, realized.stderr
    drafts = ssh_lab["tmp"] / "drafts"
    found = _netmap(ssh_lab, ssh_lab["mappings"], "discover", "--write", str(drafts), "--json")
    assert found.returncode == 1, found.stderr  # host-c could not be reached
    answer = json.loads(found.stdout)
    hosts = {h["host"]: h for h in answer["hosts"]}
    assert set(hosts) == {"host-a", "host-b", "host-c"}
    assert answer["unreachable"] == ["host-c"]
    assert hosts["host-c"]["status"] == "unreachable"
    assert hosts["host-c"]["problem"]
    # each inventory came from inside its own namespace, over its own sshd
    names = {h: {i["name"] for i in hosts[h]["inventory"]["interfaces"]}
             for h in ("host-a", "host-b")}
    assert {"eth0", "eth1", "eno1"} <= names["host-a"]
    assert "eno2" not in names["host-a"]
    assert {"eno2", "eno3", "ens1f0"} <= names["host-b"]
    assert "eth0" not in names["host-b"]
    assert sorted(p.name for p in drafts.iterdir()) == ["host-a.toml", "host-b.toml"]

    # the drafts as the fleet's mappings: what each host has now, so no drift
    fleet = ssh_lab["tmp"] / "fleet"
    (fleet / "guests").mkdir(parents=True)
    shutil.copy(EXAMPLE_MAPPINGS / "networks.toml", fleet / "networks.toml")
    shutil.copytree(drafts, fleet / "hosts")
    # what only a human knows: host-a's bridge br-eth1 carries mgmt (flg9 is on it)
    with (fleet / "hosts/host-a.toml").open("a") as draft:
        draft.write('\n[networks.mgmt]\nmode = "bridge"\nuplink = "eth1"\n')
    with_state = "discover --json --with-state"  # what fleet drift runs by default
    steady = _netmap(ssh_lab, fleet, "drift", "--json", remote=with_state)
    rows = {h["host"]: h for h in json.loads(steady.stdout)["hosts"]}
    assert {h: r["status"] for h, r in rows.items()} == {
        "host-a": "ok", "host-b": "ok", "host-c": "unreachable"}, steady.stdout
    assert steady.returncode == 1  # host-c was not compared: no claim of "no drift"
    # the state came back: flg9's endpoints were judged, not skipped
    assert all(f["code"] != "STATE_NOT_READ" for f in rows["host-a"]["findings"])

    # host-b's eno2 changes under its mapping; flg9's tap vanishes from host-a
    subprocess.run(["ip", "-n", ssh_lab["lab"].hosts["host-b"], "link", "set", "eno2",
                    "mtu", "1280"], check=True)
    tap = _tap_of(ssh_lab, "flg9")
    subprocess.run(["ip", "-n", ssh_lab["lab"].hosts["host-a"], "link", "del", tap], check=True)
    drifted = _netmap(ssh_lab, fleet, "drift", remote=with_state)
    assert drifted.returncode == 1
    table = drifted.stdout
    assert "host-c" in table
    assert "unreachable" in table
    for host in ("host-a", "host-b"):
        (line, *_) = [line for line in table.splitlines() if host in line]
        assert "drift" in line, table
    assert "ENDPOINT_VANISHED" in table
    as_json = json.loads(_netmap(ssh_lab, fleet, "drift", "--json", remote=with_state).stdout)
    hosts = {h["host"]: h for h in as_json["hosts"]}
    assert hosts["host-b"]["status"] == "drift"
    assert as_json["drift"] is True
    assert any("eno2" in f["message"] and "1280" in f["message"]
               for f in hosts["host-b"]["findings"]), hosts["host-b"]["findings"]
    assert hosts["host-a"]["status"] == "drift"
    (vanished,) = [f for f in hosts["host-a"]["findings"] if f["code"] == "ENDPOINT_VANISHED"]
    assert tap in vanished["message"]
    assert "flg9" in vanished["message"]

    # a host's netmap asked for no state: its endpoints are not judged, and it says so
    blind = json.loads(_netmap(ssh_lab, fleet, "drift", "--json").stdout)
    host_a = next(h for h in blind["hosts"] if h["host"] == "host-a")
    assert [f["code"] for f in host_a["findings"]
            if f["code"].startswith(("ENDPOINT_", "STATE_"))] == ["STATE_NOT_READ"]
