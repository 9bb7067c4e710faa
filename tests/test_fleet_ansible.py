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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_MAPPINGS, REPO

SSHD = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin")
MISSING = next((what for found, what in (
    (os.geteuid() == 0, "root (to enter namespaces and run sshd)"),
    (SSHD, "sshd (Debian: openssh-server)"), (shutil.which("ssh"), "ssh (openssh-client)"),
    (shutil.which("ssh-keygen"), "ssh-keygen"), (shutil.which("socat"), "socat"),
    (shutil.which("ansible"), "ansible (pip install ansible-core)")) if not found), None)

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(MISSING is not None, reason=f"needs {MISSING}")]

SSHD_CONFIG = """ListenAddress 127.0.0.1
Port 22
HostKey {key}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
"""


@pytest.fixture
def ssh_lab(lab_factory, tmp_path: Path) -> Iterator[dict]:
    lab, mappings = lab_factory("fl", ["host-a", "host-b", "host-c"])
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "hostkey")], check=True)
    (tmp_path / "authorized").write_text((tmp_path / "id.pub").read_text())
    config = tmp_path / "sshd_config"
    config.write_text(SSHD_CONFIG.format(key=tmp_path / "hostkey",
                                         authorized=tmp_path / "authorized"))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    daemons = []
    lines = ["[lab]"]
    try:
        for host, netns in lab.hosts.items():
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            if host != "host-c":  # host-c: no sshd, so unreachable
                daemons.append(subprocess.Popen(
                    ["ip", "netns", "exec", netns, SSHD, "-D", "-e", "-f", str(config)],
                    stdout=subprocess.DEVNULL, stderr=(tmp_path / f"sshd-{host}.log").open("w")))
            proxy = f"ip netns exec {netns} socat - TCP:127.0.0.1:22"
            lines.append(f"{host} ansible_ssh_common_args='-o ProxyCommand=\"{proxy}\"'")
        lines += ["[all:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={key}",
                  f"ansible_python_interpreter={sys.executable}",
                  "ansible_ssh_extra_args='-o StrictHostKeyChecking=no "
                  "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=10'"]
        inventory = tmp_path / "inventory.ini"
        inventory.write_text("\n".join(lines) + "\n")
        for host in ("host-a", "host-b"):
            _wait_for_sshd(lab.hosts[host])
        yield {"lab": lab, "mappings": mappings, "inventory": inventory, "tmp": tmp_path}
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(10)


def _wait_for_sshd(netns: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listening = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htln",
                                    "sport", "= :22"], capture_output=True, text=True)
        if listening.stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"sshd in {netns} did not listen")


def _netmap(lab: dict, mappings: Path, *args: str) -> subprocess.CompletedProcess:
    remote = f"{sys.executable} -m netmap discover --json"
    return subprocess.run(
        [sys.executable, "-m", "netmap", "--mappings", str(mappings), "fleet", *args,
         "-i", str(lab["inventory"]), "--command", remote],
        capture_output=True, text=True, check=False, timeout=180, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO),
             "ANSIBLE_SSH_CONTROL_PATH_DIR": str(lab["tmp"] / "cp"),
             "ANSIBLE_LOCAL_TEMP": str(lab["tmp"] / "ansible-local")})


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
