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
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_MAPPINGS, REPO
from tests.ssh_lab import MISSING, ansible_env
from tests.ssh_lab import ssh_lab as start_ssh_lab

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(MISSING is not None, reason=f"needs {MISSING}")]


@pytest.fixture
def ssh_lab(lab_factory, tmp_path: Path) -> Iterator[dict]:
    lab, mappings = lab_factory("fl", ["host-a", "host-b", "host-c"])
    with start_ssh_lab(lab.hosts, tmp_path, silent=("host-c",)) as reached:
        yield {"lab": lab, "mappings": mappings, "inventory": reached.inventory,
               "tmp": tmp_path}


def _netmap(lab: dict, mappings: Path, *args: str) -> subprocess.CompletedProcess:
    remote = f"{sys.executable} -m netmap discover --json"
    return subprocess.run(
        [sys.executable, "-m", "netmap", "--mappings", str(mappings), "fleet", *args,
         "-i", str(lab["inventory"]), "--command", remote],
        capture_output=True, text=True, check=False, timeout=180, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **ansible_env(lab["tmp"])})


def test_fleet_discover_then_drift_over_ssh(ssh_lab: dict) -> None:
    drafts = ssh_lab["tmp"] / "drafts"
    found = _netmap(ssh_lab, ssh_lab["mappings"], "discover", "--write", str(drafts), "--json")
    assert found.returncode == 1, found.stderr  # host-c could not be reached
    answer = json.loads(found.stdout)
    hosts = {h["host"]: h for h in answer["hosts"]}
    assert set(hosts) == {"host-a", "host-b", "host-c"}
    assert answer["unreachable"] == ["host-c"]
    assert hosts["host-c"]["status"] == "unreachable" and hosts["host-c"]["problem"]
    # each inventory came from inside its own namespace, over its own sshd
    names = {h: {i["name"] for i in hosts[h]["inventory"]["interfaces"]}
             for h in ("host-a", "host-b")}
    assert {"eth0", "eth1", "eno1"} <= names["host-a"] and "eno2" not in names["host-a"]
    assert {"eno2", "eno3", "ens1f0"} <= names["host-b"] and "eth0" not in names["host-b"]
    assert sorted(p.name for p in drafts.iterdir()) == ["host-a.toml", "host-b.toml"]

    # the drafts as the fleet's mappings: what each host has now, so no drift
    fleet = ssh_lab["tmp"] / "fleet"
    (fleet / "guests").mkdir(parents=True)
    shutil.copy(EXAMPLE_MAPPINGS / "networks.toml", fleet / "networks.toml")
    shutil.copytree(drafts, fleet / "hosts")
    steady = _netmap(ssh_lab, fleet, "drift", "--json")
    rows = {h["host"]: h for h in json.loads(steady.stdout)["hosts"]}
    assert {h: r["status"] for h, r in rows.items()} == {
        "host-a": "ok", "host-b": "ok", "host-c": "unreachable"}, steady.stdout
    assert steady.returncode == 1  # host-c was not compared: no claim of "no drift"

    # host-b's eno2 changes under its mapping
    subprocess.run(["ip", "-n", ssh_lab["lab"].hosts["host-b"], "link", "set", "eno2",
                    "mtu", "1280"], check=True)
    drifted = _netmap(ssh_lab, fleet, "drift")
    assert drifted.returncode == 1
    table = drifted.stdout
    assert "host-a" in table and "as its mapping says" in table
    assert "host-c" in table and "unreachable" in table
    (host_b_line,) = [line for line in table.splitlines() if "host-b" in line]
    assert "drift" in host_b_line
    as_json = json.loads(_netmap(ssh_lab, fleet, "drift", "--json").stdout)
    host_b = next(h for h in as_json["hosts"] if h["host"] == "host-b")
    assert host_b["status"] == "drift" and as_json["drift"] is True
    assert any("eno2" in f["message"] and "1280" in f["message"] for f in host_b["findings"]), \
        host_b["findings"]
