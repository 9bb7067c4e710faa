"""Lab hosts reached over real SSH: each namespace runs its own sshd on its loopback, and
ssh enters it through `ProxyCommand ip netns exec NS socat - TCP:127.0.0.1:22`, so no
traffic leaves the namespaces the lab made.

Everything ssh and Ansible need lives in one directory made for the lab: a throw-away host
key and client key, the sshd config, an ssh config (`ssh -F DIR/ssh_config host-a`) and an
Ansible inventory that uses it; nothing of this machine's own ssh configuration or keys is
read or written. Used by `scripts/libvirt_lab.py up --ssh` (README's walkthrough) and by
the fleet tests (Ansible, remote release); scripts/ is not a package, so they put it on
sys.path.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin")
MISSING = next((what for found, what in (
    (os.geteuid() == 0, "root (to enter namespaces and run sshd)"),
    (SSHD, "sshd (Debian: openssh-server)"), (shutil.which("ssh"), "ssh (openssh-client)"),
    (shutil.which("ssh-keygen"), "ssh-keygen"), (shutil.which("socat"), "socat"),
    (shutil.which("ansible"), "ansible (pip install ansible-core)")) if not found), None)

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

@dataclass
class SshLab:
    hosts: dict[str, str]  # host -> namespace
    key: Path  # the client's private key
    inventory: Path  # Ansible's: every host, its ssh through ssh_config
    ssh_config: Path  # a Host block per host with its ProxyCommand

    def proxy(self, host: str) -> str:
        return f"ip netns exec {self.hosts[host]} socat - TCP:127.0.0.1:22"

    def ssh_wrapper(self, path: Path, host: str) -> Path:
        """An ssh that reaches `host` (for libvirt's `command=` URI parameter)."""
        path.write_text(f"#!/bin/sh\nexec ssh -o UserKnownHostsFile=/dev/null "
                        f"-o 'ProxyCommand={self.proxy(host)}' \"$@\"\n")
        path.chmod(0o755)
        return path


def lab_python(bin_dir: Path, repo: Path, state_dir: Path) -> Path:
    """`bin_dir/python3`, the Python Ansible's modules run in on the lab hosts, with
    `bin_dir` first on their PATH, and there `netmap`: the netmap of `repo` (with
    `state_dir` as its state), which is what `netmap fleet` runs on each host by default.
    The interpreter sets PATH, not sshd: a login shell's rc files (root's ~/.bashrc) may
    put another netmap first."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    netmap = bin_dir / "netmap"
    netmap.write_text(f"#!/bin/sh\nNETMAP_STATE_DIR={shlex.quote(str(state_dir))} "
                      f"PYTHONPATH={shlex.quote(str(repo))} "
                      f"exec {shlex.quote(sys.executable)} -m netmap \"$@\"\n")
    python = bin_dir / "python3"
    python.write_text(f"#!/bin/sh\nPATH={shlex.quote(str(bin_dir))}:\"$PATH\" "
                      f"exec {shlex.quote(sys.executable)} \"$@\"\n")
    for path in (netmap, python):
        path.chmod(0o755)
    return python


def _ssh_config(lab: SshLab) -> str:
    blocks = [f"Host {host}\n    ProxyCommand {lab.proxy(host)}\n" for host in lab.hosts]
    # one lab, one throw-away key; its host keys change with every lab: never remembered
    return "".join(blocks) + (
        f"Host *\n    User root\n    IdentityFile {lab.key}\n    IdentitiesOnly yes\n"
        "    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n"
        "    LogLevel ERROR\n    ConnectTimeout 10\n")


def _inventory(lab: SshLab, scratch: Path, interpreter: Path | str, reuse: bool) -> str:
    # a connection kept open after a run (Ansible's ControlPersist) would stall the next
    # run on a host whose namespace's loopback went down, instead of failing it at once
    fresh = [] if reuse else ["ansible_ssh_args='-o ControlMaster=no'"]
    return "\n".join([
        "[lab]", *lab.hosts, "[all:vars]", "ansible_user=root",
        f"ansible_ssh_common_args='-F {lab.ssh_config}'", *fresh,
        f"ansible_python_interpreter={interpreter}",
        # Ansible's files on the hosts (one machine here) under the lab's directory, not
        # root's ~/.ansible
        f"ansible_remote_tmp={scratch / 'ansible-remote'}",
    ]) + "\n"


@contextlib.contextmanager
def ssh_lab(hosts: dict[str, str], scratch: Path, *, silent: tuple[str, ...] = (),
            interpreter: Path | None = None, reuse_connections: bool = False
            ) -> Iterator[SshLab]:
    """sshd in every namespace of `hosts` (host -> namespace) but those in `silent`;
    `interpreter`: the inventory's Python for Ansible's modules (default: this one);
    `reuse_connections`: Ansible keeps each host's ssh connection open between runs, as
    it does by default (a benchmark's conditions)."""
    scratch.mkdir(parents=True, exist_ok=True)
    key = scratch / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(scratch / "hostkey")], check=True)
    (scratch / "authorized").write_text((scratch / "id.pub").read_text())
    config = scratch / "sshd_config"
    config.write_text(SSHD_CONFIG.format(key=scratch / "hostkey",
                                         authorized=scratch / "authorized"))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    daemons = []
    lab = SshLab(dict(hosts), key, scratch / "inventory.ini", scratch / "ssh_config")
    lab.ssh_config.write_text(_ssh_config(lab))
    lab.inventory.write_text(_inventory(lab, scratch, interpreter or sys.executable,
                                       reuse_connections))
    try:
        for host, netns in hosts.items():
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            if host not in silent:
                daemons.append(subprocess.Popen(
                    ["ip", "netns", "exec", netns, SSHD or "sshd", "-D", "-e", "-f", str(config)],
                    stdout=subprocess.DEVNULL, stderr=(scratch / f"sshd-{host}.log").open("w")))
        for host, netns in hosts.items():
            if host not in silent:
                wait_for_sshd(netns)
        yield lab
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(10)
        for netns in hosts.values():
            end_sessions(netns)


def end_sessions(netns: str) -> None:
    """Kill what still runs of ssh in `netns`: the listener's end leaves each connection's
    own sshd, and the socat a client entered through, running."""
    listed = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                            check=False).stdout.split()
    for pid in listed:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            if name in ("sshd", "socat"):
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            continue  # gone meanwhile


def wait_for_sshd(netns: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listening = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htln",
                                    "sport", "= :22"], capture_output=True, text=True)
        if listening.stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"sshd in {netns} did not listen")


def ansible_env(scratch: Path) -> dict[str, str]:
    """Ansible's control sockets and temporary files under the test's own directory."""
    return {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(scratch / "cp"),
            "ANSIBLE_LOCAL_TEMP": str(scratch / "ansible-local")}
