#!/usr/bin/env python3
"""Generate a large, realistic netmap mappings directory for benchmarks.

    python scripts/gen_fleet.py OUT_DIR --hosts 10000 [--guests N] [--seed 1]
                                [--shape standard|small|huge|xml]

The fleet spans several sites. Each site has its own fabric and storage segments with
VLAN networks on them; the overlay (vxlan) networks are fleet-wide. Hosts differ the way
real ones do: NIC naming schemes (eth0, eno1, ens1f0, enp65s0f0), an SR-IOV PF on most
but not all hosts, VEPA-capable switch ports on some, hosts that lack a network, a few
capacity limits. Every host file has about 40 lines. Guests (default: one per four hosts)
run on a host of their site with 1-3 NICs and unique MACs. Output is deterministic for a
given seed, and the files load without errors through netmap.load.load_fleet.

Shapes (SHAPES), so that a figure holds on fleets nobody tuned for:
  standard  the above
  small     many small host files (2 uplinks, 2 bindings, 17 lines) and a guest per host
  huge      few huge host files: a twentieth of the hosts, each binding 150 VLAN networks
            more on 6 more uplinks (~670 lines), a guest per host
  xml       the standard hosts; half of the guests are libvirt domain XML (bridge sources
            explained by their host's mapping, the host named in netmap's metadata)
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

SITES = ("dc1", "dc2", "dc3", "dc4")
# (fabric NIC pair, SR-IOV PF): the naming schemes a mixed fleet shows
NIC_SCHEMES = (
    (("eth0", "eth1"), "eth2"),
    (("eno1", "eno2"), "eno3"),
    (("ens1f0", "ens1f1"), "ens2f0"),
    (("enp65s0f0", "enp65s0f1"), "enp129s0f0"),
    (("enp3s0", "enp4s0"), "enp5s0f0np0"),
)
OVERLAYS = {"tenant-blue": 5001, "tenant-green": 5002, "tenant-red": 5003}
HOST_FEATURES = ("vhost-net", "tun", "macvtap", "vxlan", "bridge", "sriov")
SHAPES = ("standard", "small", "huge", "xml")
EXTRA_VLANS = 150  # per site, for the huge shape: networks dcN-v1000 ...


def networks_toml(extra_vlans: int = 0) -> str:
    out = ["# Generated fleet: per-site VLAN networks and fleet-wide overlays.", ""]
    for site in SITES:
        for vlan in range(1000, 1000 + extra_vlans):
            out += [f"[networks.{site}-v{vlan}]", f'segment = "{site}-fabric"',
                    f"vlan = {vlan}", ""]
        out += [f"[networks.{site}-prod]", f'description = "production front end, {site}"',
                f'segment = "{site}-fabric"', "vlan = 100", "mtu = 9000", "",
                f"[networks.{site}-mgmt]", f'description = "management, {site}"',
                f'segment = "{site}-fabric"', "mtu = 1500", "",
                f"[networks.{site}-storage]", f'description = "iSCSI/NFS, {site}"',
                f'segment = "{site}-storage"', "vlan = 200", "mtu = 9000", ""]
    for name, vni in OVERLAYS.items():
        out += [f"[networks.{name}]", f'description = "tenant overlay {name}"',
                f"vni = {vni}", "mtu = 1450", ""]
    return "\n".join(out)


def host_toml(index: int, rng: random.Random) -> tuple[str, str, dict[str, str]]:
    """One host file; returns (text, site, network -> mode bound there)."""
    site = SITES[index % len(SITES)]
    name = f"{site}-r{index // 400:02d}-h{index:05d}"
    (fast, slow), pf = NIC_SCHEMES[rng.randrange(len(NIC_SCHEMES))]
    has_sriov = rng.random() < 0.8
    vepa = rng.random() < 0.6
    features = list(HOST_FEATURES if has_sriov else HOST_FEATURES[:-1])
    if rng.random() < 0.05:
        features.remove("vhost-net")
    lines = [f"# {name}: rack {index // 400} of {site}", "[host]", f'name = "{name}"',
             f"features = [{', '.join(repr(f).replace(chr(39), chr(34)) for f in features)}]"]
    if rng.random() < 0.1:
        lines.append(f"max_guests = {rng.choice((16, 24, 32, 48))}")
    lines += ["", f"[uplinks.{fast}]", f'segments = ["{site}-fabric"]', "mtu = 9000", "",
              f"[uplinks.{slow}]", f'segments = ["{site}-fabric"]', "mtu = 1500", ""]
    if has_sriov:
        lines += [f"[uplinks.{pf}]", f'segments = ["{site}-storage"]', "mtu = 9000",
                  f"sriov = {{ total_vfs = {rng.choice((8, 16, 32, 64))} }}", ""]
    modes: dict[str, str] = {}
    prod_mode = "macvtap-vepa" if vepa else "macvtap-bridge"
    lines += [f"[networks.{site}-prod]", f'mode = "{prod_mode}"', f'uplink = "{fast}"', ""]
    modes[f"{site}-prod"] = prod_mode
    lines += [f"[networks.{site}-mgmt]", 'mode = "bridge"', f'uplink = "{slow}"', ""]
    modes[f"{site}-mgmt"] = "bridge"
    if has_sriov:
        lines += [f"[networks.{site}-storage]", 'mode = "sriov-vf"', f'uplink = "{pf}"']
        if rng.random() < 0.3:
            lines.append('vf_attach = "macvtap"')
        lines.append("")
        modes[f"{site}-storage"] = "sriov-vf"
    for overlay, vni in OVERLAYS.items():
        if rng.random() < 0.15:
            continue  # not every host carries every tenant
        group = f"239.1.{vni % 256}.1"
        # underlay on the jumbo-frame NIC: the bridged one cannot carry it (load refuses)
        lines += [f"[networks.{overlay}]", 'mode = "vxlan"', f'uplink = "{fast}"',
                  f'vxlan = {{ group = "{group}" }}', ""]
        modes[overlay] = "vxlan"
    return "\n".join(lines), name, modes


def small_host_toml(index: int, rng: random.Random) -> tuple[str, str, dict[str, str]]:
    """A host with one fabric NIC pair and two bindings."""
    site = SITES[index % len(SITES)]
    name = f"{site}-r{index // 400:02d}-h{index:05d}"
    (fast, slow), _ = NIC_SCHEMES[rng.randrange(len(NIC_SCHEMES))]
    lines = ["[host]", f'name = "{name}"', "",
             f"[uplinks.{fast}]", f'segments = ["{site}-fabric"]', "mtu = 9000", "",
             f"[uplinks.{slow}]", f'segments = ["{site}-fabric"]', "",
             f"[networks.{site}-prod]", 'mode = "macvtap-bridge"', f'uplink = "{fast}"', "",
             f"[networks.{site}-mgmt]", 'mode = "bridge"', f'uplink = "{slow}"', ""]
    return "\n".join(lines), name, {f"{site}-prod": "macvtap-bridge", f"{site}-mgmt": "bridge"}


def huge_host_toml(index: int, rng: random.Random) -> tuple[str, str, dict[str, str]]:
    """The standard host plus 6 more uplinks carrying EXTRA_VLANS bridged VLAN networks."""
    text, name, modes = host_toml(index, rng)
    site = SITES[index % len(SITES)]
    lines = [text]
    trunks = [f"trunk{n}" for n in range(6)]
    for trunk in trunks:
        lines += [f"[uplinks.{trunk}]", f'segments = ["{site}-fabric"]', "mtu = 9000", ""]
    for vlan in range(1000, 1000 + EXTRA_VLANS):
        trunk = trunks[vlan % len(trunks)]
        lines += [f"[networks.{site}-v{vlan}]", 'mode = "bridge"', f'uplink = "{trunk}"', ""]
        modes[f"{site}-v{vlan}"] = "bridge"
    return "\n".join(lines), name, modes


def guest_xml(index: int, host: str, host_text: str) -> str:
    """A domain whose bridge NIC the host's mapping explains (its mgmt bridge)."""
    name = f"vm{index:06d}"
    mgmt = host_text.split("-mgmt]\nmode = \"bridge\"\nuplink = \"", 1)[1].split('"', 1)[0]
    high, middle, low = (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF
    return (f"<domain type='kvm'><name>{name}</name><metadata>"
            f"<netmap:guest xmlns:netmap='https://netmap.dev/xmlns/1' host='{host}'/>"
            "</metadata><devices><interface type='bridge'>"
            f"<mac address='52:54:{high:02x}:{middle:02x}:{low:02x}:00'/>"
            f"<source bridge='br-{mgmt}'/><model type='virtio'/></interface>"
            "</devices></domain>\n")


def guest_toml(index: int, host: str, modes: dict[str, str], rng: random.Random) -> str:
    name = f"vm{index:06d}"
    wanted = [n for n in modes if n.endswith("-prod")]
    others = [n for n in modes if n not in wanted]
    wanted += rng.sample(others, k=min(len(others), rng.randrange(0, 3)))
    lines = [f"# {name}", "[guest]", f'name = "{name}"', f'host = "{host}"', ""]
    for nic, network in enumerate(wanted):
        high, middle, low = (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF
        mac = f"52:54:{high:02x}:{middle:02x}:{low:02x}:{nic:02x}"
        lines += ["[[nics]]", f'network = "{network}"', f'mac = "{mac}"']
        if modes[network].startswith("macvtap") and rng.random() < 0.3:
            lines.append('vhost = "required"')
        lines.append("")
    return "\n".join(lines)


def generate(out: Path, hosts: int, guests: int, seed: int = 1, shape: str = "standard",
             ) -> None:
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out)
    (out / "hosts").mkdir(parents=True)
    (out / "guests").mkdir()
    (out / "networks.toml").write_text(networks_toml(EXTRA_VLANS if shape == "huge" else 0))
    make_host = {"small": small_host_toml, "huge": huge_host_toml}.get(shape, host_toml)
    placed: list[tuple[str, dict[str, str], str]] = []
    for index in range(hosts):
        text, name, modes = make_host(index, rng)
        (out / "hosts" / f"{name}.toml").write_text(text)
        placed.append((name, modes, text))
    for index in range(guests):
        host, modes, text = placed[rng.randrange(len(placed))]
        if shape == "xml" and index % 2:
            (out / "guests" / f"vm{index:06d}.xml").write_text(guest_xml(index, host, text))
        else:
            (out / "guests" / f"vm{index:06d}.toml").write_text(
                guest_toml(index, host, modes, rng))


def generate_shape(out: Path, shape: str, scale: int, seed: int = 1) -> None:
    """`shape` (SHAPES) at a scale of `scale` hosts of the standard shape."""
    if shape == "small":
        generate(out, scale, scale, seed, shape)
    elif shape == "huge":
        generate(out, max(1, scale // 20), max(1, scale // 20), seed, shape)
    else:
        generate(out, scale, scale // 4, seed, shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="mappings directory to (re)create")
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--guests", type=int, default=None, help="default: hosts / 4")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shape", choices=SHAPES, default="standard")
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error("--hosts must be at least 1")
    guests = args.hosts // 4 if args.guests is None else args.guests
    if guests > 0xFFFFFF:
        parser.error("--guests: at most 16M guests fit the generated MAC scheme")
    generate(args.out, args.hosts, guests, args.seed, args.shape)
    print(f"{args.out}: {args.hosts} hosts, {guests} guests", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
