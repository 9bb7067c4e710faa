"""A private Open vSwitch per lab host: its own ovsdb-server (a database made with
ovsdb-tool in a temporary directory, a private unix socket) and its own ovs-vswitchd
inside the host's network namespace, bridges on the userspace datapath (netdev, which needs
only /dev/net/tun: the CI kernel has no openvswitch module). Nothing of the machine's own
Open vSwitch (if any) is used or touched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl")


def missing() -> str | None:
    """Why OVS tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "Open vSwitch's daemons need root"
    absent = [b for b in BINARIES if shutil.which(b) is None and
              not Path("/usr/sbin", b).exists()]
    if absent or not SCHEMA.exists():
        return (f"Open vSwitch is not installed ({', '.join(absent) or SCHEMA}); "
                "apt-get install openvswitch-switch")
    if not Path("/dev/net/tun").exists():
        return "the userspace datapath needs /dev/net/tun"
    return None


def ovs_host_toml(name: str, netns: str, remote: str) -> str:
    """A lab host's mapping on its private Open vSwitch (`remote`, OvsInstance.remote):
    uplink eth0 on segment fabric, and network blue in ovs mode on bridge br-ovs (userspace
    datapath) with external_ids tenant=t1, which the tests read back from OVSDB."""
    return f"""[host]
name = "{name}"
netns = "{netns}"
ovsdb = "{remote}"

[uplinks.eth0]
segments = ["fabric"]

[networks.blue]
mode = "ovs"
uplink = "eth0"
bridge = "br-ovs"
datapath_type = "netdev"
external_ids = {{ "tenant" = "t1" }}
"""


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _wait(condition, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Open vSwitch lab: {what} within {timeout}s")
        time.sleep(0.02)


@dataclass
class OvsInstance:
    """One host's Open vSwitch: `remote` is what a host mapping's ovsdb names; `netns`
    None: ovs-vswitchd runs in this namespace (the VM lab's host is the VM itself)."""

    netns: str | None
    directory: Path
    server: subprocess.Popen
    vswitchd: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "db.sock"

    @property
    def remote(self) -> str:
        return f"unix:{self.socket}"

    def env(self) -> dict[str, str]:
        d = str(self.directory)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d,
                "OVS_SYSCONFDIR": d, "OVS_PKGDATADIR": "/usr/share/openvswitch"}

    def vsctl(self, *args: str, timeout: int = 10) -> str:
        """ovs-vsctl on this instance: the tests' independent view and hand."""
        return subprocess.run([_binary("ovs-vsctl"), f"--db={self.remote}",
                               f"--timeout={timeout}", *args], check=True,
                              capture_output=True, text=True, env=self.env()).stdout.strip()

    def rows(self) -> dict[str, object]:
        """Every bridge with its datapath type and external_ids, its ports with their tag,
        trunks and external_ids, and their interfaces with type and external_ids (no
        uuids, no ofport numbers): one ovs-vsctl process, for comparing a host before and
        after."""
        out = [json.loads(line) for line in self.vsctl(
            "--format=json", "--columns=name,datapath_type,external_ids,ports", "list",
            "Bridge", "--", "--columns=_uuid,name,tag,trunks,external_ids,interfaces",
            "list", "Port", "--", "--columns=_uuid,name,type,external_ids", "list",
            "Interface").splitlines()]
        bridges, ports, interfaces = ([dict(zip(table["headings"], row, strict=True))
                                       for row in table["data"]] for table in out)

        def uuids(value: list) -> list[str]:  # ["uuid", u] or ["set", [["uuid", u], ...]]
            return [value[1]] if value[0] == "uuid" else [u for _, u in value[1]]

        def ids(value: list) -> dict[str, str]:
            return dict(value[1])

        def one(value: object) -> object:  # an optional column: x, or ["set", []]
            return None if isinstance(value, list) else value

        by_uuid = {i["_uuid"][1]: {"name": i["name"], "type": i["type"],
                                   "external_ids": ids(i["external_ids"])}
                   for i in interfaces}
        port_rows = {p["_uuid"][1]: {
            "name": p["name"], "tag": one(p["tag"]),
            "trunks": sorted(p["trunks"][1]) if isinstance(p["trunks"], list) else
            [p["trunks"]], "external_ids": ids(p["external_ids"]),
            "interfaces": sorted((by_uuid[u] for u in uuids(p["interfaces"])),
                                 key=lambda i: str(i["name"]))} for p in ports}
        return {b["name"]: {"datapath_type": b["datapath_type"],
                            "external_ids": ids(b["external_ids"]),
                            "ports": {port_rows[u]["name"]: port_rows[u]
                                      for u in uuids(b["ports"])}} for b in bridges}

    def del_bridges(self) -> None:
        """Every bridge out of OVSDB (and so out of ovs-vswitchd): a clean slate."""
        commands = [arg for name in self.vsctl("list-br").split()
                    for arg in ("--", "--if-exists", "del-br", name)]
        if commands:
            self.vsctl(*commands[1:])

    def start_vswitchd(self) -> None:
        log = self.directory / "ovs-vswitchd.log"
        where = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.vswitchd = subprocess.Popen(
            [*where, _binary("ovs-vswitchd"), self.remote,
             f"--unixctl={self.directory / 'ovs-vswitchd.ctl'}", "--no-chdir",
             f"--log-file={log}", "-vconsole:off"],
            env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # up when it holds its lock: the ctl socket appears when it is ready for requests
        _wait(lambda: (self.directory / "ovs-vswitchd.ctl").exists(), "ovs-vswitchd up")

    def stop_vswitchd(self) -> None:
        if self.vswitchd is not None:
            _stop(self.vswitchd)
            self.vswitchd = None

    def stop(self) -> None:
        # the bridges first: ovs-vswitchd removes its devices from the namespace as it exits
        self.stop_vswitchd()
        _stop(self.server)
        shutil.rmtree(self.directory, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_ovs(netns: str | None, directory: Path, *, vswitchd: bool = True) -> OvsInstance:
    """ovsdb-server with a fresh database in `directory`, and (unless asked not to)
    ovs-vswitchd in `netns`; the caller stops it (OvsInstance.stop)."""
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "conf.db"
    subprocess.run([_binary("ovsdb-tool"), "create", str(database), str(SCHEMA)],
                   check=True, capture_output=True)
    server = subprocess.Popen(
        [_binary("ovsdb-server"), str(database), f"--remote=punix:{directory / 'db.sock'}",
         f"--unixctl={directory / 'ovsdb-server.ctl'}", "--no-chdir",
         f"--log-file={directory / 'ovsdb-server.log'}", "-vconsole:off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    instance = OvsInstance(netns, directory, server)
    try:
        _wait(lambda: instance.socket.exists(), "ovsdb-server listening")
        # the socket exists from bind(), before listen(): connecting in between is refused,
        # and ovs-vsctl gives up on a refusal unless told to retry (seen under load)
        instance.vsctl("--retry", "--no-wait", "init")
        if vswitchd:
            instance.start_vswitchd()
    except BaseException:
        instance.stop()
        raise
    return instance
