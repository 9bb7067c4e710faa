"""Whether this kernel can build the device kinds a plan creates, asked without changing it.

A dry run that shows "create 802.1Q eth0.100" on a kernel without 802.1Q, and a realize
that learns it from EOPNOTSUPP half-way, both mislead; so realize's decide phase (and the
dry run) probe first. Kernel support is machine-wide, the same in every network namespace.

Evidence, strongest first, all read under one root (a fake tree in tests):
1. the module is there now: ``sys/module/NAME``, or a class it registers (``sys/class``);
2. the kernel's build configuration (``proc/config.gz``, else ``boot/config-RELEASE``):
   ``=y`` built in, ``=m`` a module, "is not set" absent;
3. ``lib/modules/RELEASE/modules.builtin`` and ``modules.dep``: built in, or installed. An
   installed module counts as support, since the kernel loads it itself when RTM_NEWLINK
   asks for its kind (request_module("rtnl-link-KIND")).
Nothing known (no configuration, no module lists) is not proof of absence: then realize
goes ahead, and a refusal by the kernel is still rolled back.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netmap import plan as p
from netmap.errors import ApplyError


@dataclass(frozen=True)
class Feature:
    what: str  # for a person: "802.1Q VLAN support"
    config: str  # the kernel option that provides it
    module: str | None  # its loadable module, None when part of another one
    traces: tuple[str, ...]  # paths under the root (globs) that exist only when it is there
    instead: str  # what a mapping can do without it
    needs: str | None = None  # a feature its kernel option depends on


FEATURES = {
    "vlan": Feature("802.1Q VLAN support", "CONFIG_VLAN_8021Q", "8021q",
                    ("sys/module/8021q",),
                    "bind the network untagged on this host (a network without vlan)"),
    "vlan_filtering": Feature(
        "bridge VLAN filtering", "CONFIG_BRIDGE_VLAN_FILTERING", None,
        ("sys/class/net/*/bridge/vlan_filtering",),
        "bind the network in a macvtap mode, or untagged", needs="vlan"),
    "bridge": Feature("the Linux bridge", "CONFIG_BRIDGE", "bridge", ("sys/module/bridge",),
                      "bind the network in a macvtap mode"),
    "macvtap": Feature("macvtap", "CONFIG_MACVTAP", "macvtap",
                       ("sys/module/macvtap", "sys/class/macvtap"),
                       "bind the network in bridge mode"),
    "vxlan": Feature("VXLAN", "CONFIG_VXLAN", "vxlan", ("sys/module/vxlan",),
                     "host the overlay network elsewhere"),
    "tun": Feature("tun/tap devices", "CONFIG_TUN", "tun",
                   ("sys/module/tun", "sys/class/misc/tun"),
                   "bind the network in a macvtap mode"),
    # ovs-vswitchd makes the datapath through generic netlink, which loads the module
    "openvswitch": Feature("Open vSwitch's kernel datapath", "CONFIG_OPENVSWITCH",
                           "openvswitch", ("sys/module/openvswitch",),
                           'set datapath_type = "netdev" in the binding (the userspace '
                           "datapath, which needs only tun)"),
}


def features_needed(step: p.Step, verdict: str, repair: dict | None = None) -> list[str]:
    """What the kernel must offer for realize to carry out `verdict` on `step`."""
    return step.features(verdict, repair)


class KernelProbe:
    """Reads what the running kernel supports under `root` ("/" on a real host)."""

    def __init__(self, root: str | Path = "/", release: str | None = None) -> None:
        self.root = Path(root)
        self.release = release or os.uname().release

    @functools.cached_property
    def config(self) -> dict[str, str] | None:
        """CONFIG_X -> "y" / "m" for the options set; None when no configuration is found."""
        import gzip  # only when no trace of a module tells (not on a usual realize)

        for path, opener in ((self.root / "proc" / "config.gz", gzip.open),
                             (self.root / "boot" / f"config-{self.release}", open)):
            try:
                with opener(path, "rt") as stream:
                    text = stream.read()
            except (OSError, EOFError, ValueError):
                continue
            options = {}
            for line in text.splitlines():
                name, sep, value = line.partition("=")
                if sep and name.startswith("CONFIG_"):
                    options[name] = value
            return options
        return None

    @functools.cached_property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @functools.cached_property
    def builtin(self) -> set[str] | None:
        return self._module_names("modules.builtin")

    @functools.cached_property
    def installed(self) -> set[str] | None:
        return self._module_names("modules.dep")

    def _module_names(self, listing: str) -> set[str] | None:
        """Module names in modules.builtin or modules.dep; None when the file is missing."""
        try:
            text = (self.modules_dir / listing).read_text()
        except OSError:
            return None
        names = set()
        for line in text.splitlines():
            path = line.split(":", 1)[0].strip()
            if path:
                names.add(_module_name(path))
        return names

    def _traced(self, feature: Feature) -> bool:
        return any(next(self.root.glob(pattern), None) is not None
                   for pattern in feature.traces)

    def lacks(self, key: str) -> str | None:
        """Why the kernel cannot offer feature `key`, or None (it can, or nobody can tell)."""
        feature = FEATURES[key]
        if self._traced(feature):
            return None
        config = self.config
        if config is not None:
            value = config.get(feature.config)
            if value == "y":
                return None
            if value is None:
                return f"this kernel ({self.release}) is built without {feature.config}"
            return self._module_missing(feature)  # "m": installed, or not
        if feature.module is None:
            return self.lacks(feature.needs) if feature.needs else None
        return self._module_missing(feature)

    def _module_missing(self, feature: Feature) -> str | None:
        if feature.module is None:
            return None
        module = _module_name(feature.module)
        listed = [names for names in (self.builtin, self.installed) if names is not None]
        if not listed or any(module in names for names in listed):
            return None  # there, or nothing to go by
        return (f"module {feature.module} is neither loaded, built in nor installed "
                f"(not in {self.modules_dir}/modules.dep)")

    def fix(self, key: str, reason: str) -> str:
        feature = FEATURES[key]
        if reason.startswith("module "):
            return (f"install the modules of kernel {self.release} (the package holding "
                    f"{feature.module}.ko), then 'modprobe {feature.module}'; or "
                    f"{feature.instead}")
        return f"boot a kernel with {feature.config}, or {feature.instead}"


def _module_name(path: str) -> str:
    """kernel/net/8021q/8021q.ko.xz -> 8021q; the kernel treats '-' and '_' alike."""
    name = path.rsplit("/", 1)[-1]
    name = name.split(".ko", 1)[0]
    return name.replace("-", "_")


class UnsupportedKernel(ApplyError):
    """A step needs a device kind this kernel cannot make: refused before any change."""


def refuse_unsupported(decided: Sequence[tuple[p.Step, str, dict | None]],
                       probe: KernelProbe, host: str) -> None:
    """Raise for the first (step, verdict, repair) realize decided that needs what the
    kernel lacks, naming the step that would fail and how to get the support."""
    answers: dict[str, str | None] = {}  # one probe per kind, not per device (1000 taps)
    for step, verdict, repair in decided:
        for key in features_needed(step, verdict, repair):
            if key not in answers:
                answers[key] = probe.lacks(key)
            reason = answers[key]
            if reason:
                raise UnsupportedKernel(
                    f"step '{verdict} {step.describe()}' needs {FEATURES[key].what}, which "
                    f"{host}'s kernel lacks: {reason}", fix=probe.fix(key, reason), step=step)
