"""Step kinds: each one class that describes itself and its undo, decides against the live
host, applies and undoes (base.py says how the kernel is reached without importing it).

STEP_TYPES is the one place a step kind is looked up by name (state keeps steps as JSON).
"""

from __future__ import annotations

from netmap.steps.base import BRIDGE_AGEING, DEFAULT_PVID, Action, Step
from netmap.steps.links import LinkStep, RequireLink
from netmap.steps.ovs import OVS_STEPS, EnsureOvsBridge, EnsureOvsPort
from netmap.steps.ports import BridgeVlan, EnslavePort
from netmap.steps.shared_links import EnsureBridge, EnsureVlanLink, EnsureVxlan
from netmap.steps.taps import CreateMacvtap, CreateTap
from netmap.steps.vf import ClaimVf

__all__ = [
    "BRIDGE_AGEING",
    "DEFAULT_PVID",
    "OVS_STEPS",
    "STEP_TYPES",
    "Action",
    "BridgeVlan",
    "ClaimVf",
    "CreateMacvtap",
    "CreateTap",
    "EnslavePort",
    "EnsureBridge",
    "EnsureOvsBridge",
    "EnsureOvsPort",
    "EnsureVlanLink",
    "EnsureVxlan",
    "LinkStep",
    "RequireLink",
    "Step",
    "step_from_dict",
]

STEP_TYPES: dict[str, type[Step]] = {cls.kind: cls for cls in (
    RequireLink, EnsureBridge, EnslavePort, BridgeVlan, EnsureVlanLink, EnsureVxlan,
    CreateTap, CreateMacvtap, ClaimVf, EnsureOvsBridge, EnsureOvsPort)}


def step_from_dict(data: dict[str, object]) -> Step:
    """The inverse of Step.as_dict (state keeps steps as JSON)."""
    fields = dict(data)
    cls = STEP_TYPES[str(fields.pop("kind"))]
    remotes = fields.get("remotes")
    if isinstance(remotes, (list, tuple)):  # JSON has lists only
        fields["remotes"] = tuple(remotes)
    ids = fields.get("external_ids")
    if isinstance(ids, (list, tuple)):  # pairs come back from JSON as lists
        fields["external_ids"] = tuple((str(k), str(v)) for k, v in ids)
    return cls(**fields)
