"""The links realize makes are L2 plumbing: no IPv6 link-local address on any of them
(rtmsg.set_link's no_ipv6), so the host neither talks on a guest's segment nor sends DAD from a
guest's MAC. The kernel applies IFF_UP before IFLA_AF_SPEC within one request: a link
made up, or brought up in the request that turns generation off, already has its address.
The VM tier's agreement sweep found the 'tentative' flag of those addresses clearing on
placed guests' macvtaps and bridges."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import ip_links, needs_netns, write_fleet

from netmap.load import load_fleet
from netmap.netlink.apply import realize_plan, release_guest
from netmap.plan.planner import build_plan
from netmap.query.graph import build_graph

HOST = "nmagvm-h"

NETWORKS = """\
[networks.br]
segment = "a"
mtu = 1500

[networks.mv]
segment = "b"
mtu = 1500

[networks.ov]
vni = 5001
mtu = 1400
"""

GUEST = """\
[guest]
name = "g"
host = "{host}"

[[nics]]
network = "br"
mac = "52:54:00:a6:01:01"

[[nics]]
network = "mv"
mac = "52:54:00:a6:01:02"

[[nics]]
network = "ov"
mac = "52:54:00:a6:01:03"
"""


def host_file(netns: str) -> str:
    return f"""\
[host]
name = "{HOST}"
netns = "{netns}"
features = ["tun", "macvtap", "vxlan", "bridge", "vhost-net"]

[uplinks.ua0]
segments = ["a"]
mtu = 1500

[uplinks.ub0]
segments = ["b"]
mtu = 1500

[uplinks.uc0]
segments = ["a"]
mtu = 1500

[networks.br]
mode = "bridge"
uplink = "ua0"

[networks.mv]
mode = "macvtap-bridge"
uplink = "ub0"

[networks.ov]
mode = "vxlan"
uplink = "uc0"
vxlan = {{ group = "239.1.1.1" }}
"""


def inet6(netns: str) -> dict[str, list[str]]:
    out = subprocess.run(["ip", "-n", netns, "-j", "-6", "addr", "show"], check=True,
                         capture_output=True, text=True).stdout
    return {link["ifname"]: [a["local"] for a in link.get("addr_info", [])]
            for link in json.loads(out) if link.get("addr_info")}


@needs_netns
def test_realize_makes_no_link_local_address(netns_factory: Callable[[str], str],
                                             tmp_path: Path) -> None:
    netns = netns_factory("nmagvm")
    batch = []
    for uplink in ("ua0", "ub0", "uc0"):  # carrier on every uplink: its peer is up
        batch += [f"link add {uplink} type veth peer name {uplink}p",
                  f"link set {uplink} addrgenmode none", f"link set {uplink}p addrgenmode none",
                  f"link set {uplink} up", f"link set {uplink}p up"]
    batch += ["addr add 10.250.0.1/24 dev uc0"]
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(batch) + "\n",
                   text=True, check=True, capture_output=True)
    root = write_fleet(tmp_path / "mappings", NETWORKS, {HOST: host_file(netns)},
                       {"g": GUEST.format(host=HOST)})
    fleet = load_fleet(root)
    assert not fleet.problems, [str(p) for p in fleet.problems]
    plan = build_plan(build_graph(fleet), fleet.guests["g"], fleet.hosts[HOST])
    assert not plan.problems, plan.problems
    before = {link["ifname"] for link in ip_links(netns)}
    state = tmp_path / "state"
    realize_plan(plan, state_dir=state)
    try:
        made = {link["ifname"]: link.get("linkinfo", {}).get("info_kind")
                for link in ip_links(netns) if link["ifname"] not in before}
        # the three kinds that come up with carrier at once: a tap has none until opened
        assert {"bridge", "macvtap", "vxlan"} <= set(made.values()), made
        assert not {name: addresses for name, addresses in inet6(netns).items()
                    if name in made}, "realize's links got IPv6 addresses"
    finally:
        release_guest(HOST, "g", netns, state_dir=state)
