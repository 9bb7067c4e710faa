"""Release a migrated guest's endpoints on a source host this process cannot act on, through
an engine that already reaches that host: Ansible (the fleet's inventory, as `netmap fleet`
uses it) or the SSH transport of the host's own libvirt_uri (qemu+ssh://…, the connection
libvirt itself makes). What runs there is netmap's own `release`; no agent of netmap's.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from netmap.errors import ApplyError
from netmap.model.fleet import Host

RELEASE_TIMEOUT = 300.0  # seconds for one remote release, connection included

# (source host, guest) -> what was done there; raises ReleaseFailed
RemoteRelease = Callable[[Host, str], str]


class ReleaseFailed(ApplyError):
    """The release on the source did not happen or did not finish; the guest moved, so the
    journal keeps it as `moved` for --resume or --abort to release again."""


def release_command(netmap: str, guest: str, host: str) -> list[str]:
    """`netmap release` for one guest, as the remote host runs it (`netmap` may be a
    command line of its own: a full path, `env VAR=… python3 -m netmap`)."""
    return [*shlex.split(netmap), "release", guest, "--host", host, "--json"]


def ssh_argv(uri: str, remote: list[str]) -> list[str] | None:
    """ssh to the host of a libvirt URI whose transport is ssh, as libvirt would connect:
    its user, port and the `keyfile`, `no_verify` and `command` (the ssh binary) query
    parameters libvirt documents for that transport. None for any other transport."""
    parts = urlsplit(uri)
    if parts.scheme.partition("+")[2] != "ssh" or not parts.hostname:
        return None
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    argv = [query.get("command", "ssh"), "-T", "-o", "BatchMode=yes"]
    if parts.port:
        argv += ["-p", str(parts.port)]
    if parts.username:
        argv += ["-l", parts.username]
    if "keyfile" in query:
        argv += ["-i", query["keyfile"]]
    if query.get("no_verify") == "1":
        argv += ["-o", "StrictHostKeyChecking=no"]
    # one string: ssh hands the remote shell a single command line
    return [*argv, "--", parts.hostname, shlex.join(remote)]


def release_over_ssh(host: Host, guest: str, netmap: str) -> str:
    assert host.libvirt_uri is not None
    remote = release_command(netmap, guest, host.name)
    argv = ssh_argv(host.libvirt_uri, remote)
    if argv is None:
        raise ReleaseFailed(f"{host.name}'s libvirt_uri {host.libvirt_uri!r} has no ssh "
                            "transport to run `netmap release` over",
                            fix=f"pass --inventory INVENTORY to release through Ansible, or "
                            f"run `{shlex.join(remote)}` on {host.name}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=RELEASE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ReleaseFailed(f"ssh to {host.name} failed: {err}",
                            fix="--resume releases it again") from err
    if done.returncode != 0:
        raise ReleaseFailed(f"`{shlex.join(remote)}` over ssh to {host.name} exited "
                            f"{done.returncode}: {(done.stderr or done.stdout).strip()[-1000:]}",
                            fix="--resume releases it again")
    return _said(host.name, done.stdout, "ssh")


def release_through_ansible(host: Host, guest: str, netmap: str, inventory: str) -> str:
    from netmap.ansible_run import OK, run_everywhere

    remote = release_command(netmap, guest, host.name)
    runs = run_everywhere(inventory, shlex.join(remote), forks=1, limit=host.name,
                          timeout=RELEASE_TIMEOUT)
    run = next((run for run in runs if run.host == host.name), None)
    if run is None:
        raise ReleaseFailed(f"the inventory {inventory} names no host {host.name}",
                            fix="add it (the inventory's names are the mappings' names)")
    if run.status != OK:
        raise ReleaseFailed(f"`{shlex.join(remote)}` through Ansible on {host.name}: "
                            f"{run.status}: {run.problem}", fix="--resume releases it again")
    return _said(host.name, run.stdout, "Ansible")


def _said(host: str, stdout: str, how: str) -> str:
    """What the remote release reports; output that is not its JSON is still a release
    that exited 0, so it counts, with what it printed."""
    try:
        removed = json.loads(stdout).get("removed", [])
    except (ValueError, AttributeError):
        return f"moved; released on {host} through {how}: {stdout.strip()[:200]}"
    return f"moved; released on {host} through {how}: {', '.join(removed) or 'nothing'}"


def remote_release(inventory: str | None, netmap: str) -> RemoteRelease:
    """The route for every remote source of a run: Ansible when an inventory is given,
    else the ssh of each host's libvirt_uri."""
    if inventory is not None:
        return lambda host, guest: release_through_ansible(host, guest, netmap, inventory)
    return lambda host, guest: release_over_ssh(host, guest, netmap)
