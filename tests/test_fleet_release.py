"""After a migration, the source's endpoints are released on a source this process cannot act
on: `netmap release` run there through Ansible (--inventory) or over the ssh of the source's
qemu+ssh:// libvirt_uri, over real SSH into lab namespaces (prefix nmfl; scripts/ssh_lab.py).

The central mappings name no netns, so the host is remote to the drain; the source's own
netmap (the same mappings, its own state directory) acts on the namespace sshd runs in. The
journal says the guest moved (what a drain records once libvirt's migration succeeded), so
no libvirt daemon is needed to prove the release; tests/test_fleet_libvirt.py proves the
migrations.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, ip_links

sys.path.insert(0, str(REPO / "scripts"))
from ssh_lab import MISSING, SshLab, ansible_env, ssh_lab  # scripts/ is not a package

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(MISSING is not None, reason=f"needs {MISSING}")]

GUEST = """[guest]
name = "nmflg1"
host = "host-a"

[[nics]]
network = "mgmt"
mac = "52:54:00:f1:0a:01"

[[nics]]
network = "prod"
mac = "52:54:00:f1:0a:02"
"""


@pytest.fixture
def remote_lab(lab_factory, tmp_path: Path) -> Iterator[dict]:
    lab, mappings = lab_factory("nmfl", ["host-a", "host-b"])
    with ssh_lab(lab.hosts, tmp_path) as reached:
        for path in (mappings / "hosts").glob("*.toml"):  # remote from here: no netns
            path.write_text(re.sub(r'^netns = .*\n', "", path.read_text(), flags=re.M))
        ssh = reached.ssh_wrapper(tmp_path / "ssh-host-a", "host-a")
        uris = {"host-a": f"qemu+ssh://root@host-a/system?command={ssh}"
                          f"&keyfile={reached.key}&no_verify=1",
                "host-b": "qemu+ssh://host-b/system"}
        for host, uri in uris.items():
            path = mappings / "hosts" / f"{host}.toml"
            path.write_text(path.read_text().replace(
                "[host]\n", f'[host]\nlibvirt_uri = "{uri}"\n', 1))
        networks = mappings / "networks.toml"  # no 802.1q in this kernel: prod loses its VLAN
        networks.write_text(networks.read_text().replace("vlan = 100\n", "", 1))
        for old in (mappings / "guests").iterdir():
            old.unlink()
        (mappings / "guests" / "nmflg1.toml").write_text(GUEST)
        yield {"lab": lab, "ssh": reached, "mappings": mappings, "tmp": tmp_path,
               "remote_state": tmp_path / "remote-state", "state": tmp_path / "state"}


def _remote_netmap(lab: dict) -> str:
    """netmap as host-a runs it: this checkout, its own name (the machine is not called
    host-a) and state directory."""
    return shlex.join(["env", f"PYTHONPATH={REPO}", "NETMAP_HOST=host-a",
                       f"NETMAP_STATE_DIR={lab['remote_state']}",
                       sys.executable, "-m", "netmap", "--mappings", str(lab["mappings"])])


def _realize_on_host_a(lab: dict) -> set[str]:
    done = subprocess.run(["ip", "netns", "exec", lab["lab"].hosts["host-a"], *shlex.split(
        _remote_netmap(lab)), "realize", "nmflg1", "--host", "host-a"], check=False,
        capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    made = _endpoints(lab)
    assert len(made) == 2, made  # a tap on the mgmt bridge, a macvtap on eth0
    return made


def _endpoints(lab: dict) -> set[str]:
    return {link["ifname"] for link in ip_links(lab["lab"].hosts["host-a"])
            if link.get("linkinfo", {}).get("info_kind") in ("tun", "macvtap")}


def _moved_journal(lab: dict) -> Path:
    journal = lab["state"] / "drain-host-a.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({"moves": [
        {"guest": "nmflg1", "source": "host-a", "dest": "host-b", "status": "moved",
         "message": ""}]}))
    return journal


def _drain(lab: dict, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "netmap", "drain", "host-a", "--execute", "--resume", "--json",
         *args], capture_output=True, text=True, check=False, cwd=REPO, timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO), "NETMAP_MAPPINGS": str(lab["mappings"]),
             "NETMAP_STATE_DIR": str(lab["state"]), **ansible_env(lab["tmp"])})
    (outcome,) = json.loads(done.stdout.splitlines()[-1])["outcomes"]
    return done, outcome


def test_release_through_ansible_fails_then_resume_releases(remote_lab: dict) -> None:
    made = _realize_on_host_a(remote_lab)
    journal = _moved_journal(remote_lab)
    inventory = str(remote_lab["ssh"].inventory)

    broken, outcome = _drain(remote_lab, "--inventory", inventory,
                             "--remote-netmap", "/nonexistent/netmap")
    assert broken.returncode == 3, broken.stdout + broken.stderr
    assert outcome["status"] == "moved"
    assert "releasing it on host-a failed" in outcome["message"]
    assert "/nonexistent/netmap" in outcome["message"]
    # nothing was released, and the journal keeps the move for --resume
    assert _endpoints(remote_lab) == made
    assert [m["status"] for m in json.loads(journal.read_text())["moves"]] == ["moved"]

    done, outcome = _drain(remote_lab, "--inventory", inventory,
                           "--remote-netmap", _remote_netmap(remote_lab))
    assert done.returncode == 0, done.stdout + done.stderr
    assert outcome["status"] == "released"
    assert "released on host-a through Ansible" in outcome["message"]
    assert {f"link:{name}" for name in made} <= set(
        outcome["message"].rsplit(": ", 1)[1].split(", "))
    assert _endpoints(remote_lab) == set()
    assert not journal.exists()
    state = json.loads((remote_lab["remote_state"] / "host-a.json").read_text())
    assert "nmflg1" not in json.dumps(state)


def test_release_over_the_ssh_of_the_sources_libvirt_uri(remote_lab: dict) -> None:
    made = _realize_on_host_a(remote_lab)
    journal = _moved_journal(remote_lab)
    done, outcome = _drain(remote_lab, "--remote-netmap", _remote_netmap(remote_lab))
    assert done.returncode == 0, done.stdout + done.stderr
    assert outcome["status"] == "released"
    assert outcome["message"].startswith("moved; released on host-a through ssh: ")
    assert {f"link:{name}" for name in made} <= set(
        outcome["message"].rsplit(": ", 1)[1].split(", "))
    assert _endpoints(remote_lab) == set()
    assert not journal.exists()


def test_a_source_ssh_cannot_reach_stays_moved_for_abort(remote_lab: dict) -> None:
    """host-a's sshd gone: the release fails, the journal keeps the move, and --abort
    (which releases what moved) keeps it too until a release works."""
    made = _realize_on_host_a(remote_lab)
    journal = _moved_journal(remote_lab)
    wrapper = remote_lab["tmp"] / "ssh-host-a"
    lab: SshLab = remote_lab["ssh"]
    wrapper.write_text(wrapper.read_text().replace(lab.proxy("host-a"),
                                                   "ip netns exec nmfl-none socat - "
                                                   "TCP:127.0.0.1:22"))
    done, outcome = _drain(remote_lab, "--remote-netmap", _remote_netmap(remote_lab))
    assert done.returncode == 3
    assert outcome["status"] == "moved"
    assert "over ssh to host-a exited 255" in outcome["message"]
    aborted = subprocess.run(
        [sys.executable, "-m", "netmap", "drain", "host-a", "--execute", "--abort", "--json",
         "--remote-netmap", _remote_netmap(remote_lab)], capture_output=True, text=True,
        check=False, cwd=REPO, timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO), "NETMAP_MAPPINGS": str(remote_lab["mappings"]),
             "NETMAP_STATE_DIR": str(remote_lab["state"])})
    assert aborted.returncode == 3, aborted.stdout + aborted.stderr
    assert [m["status"] for m in json.loads(journal.read_text())["moves"]] == ["moved"]
    assert _endpoints(remote_lab) == made
