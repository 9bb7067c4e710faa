"""What a step's verdict (verdicts.py) and an endpoint kind (endpoints.py) use of the
transaction that decides and applies a plan.

ensure.Transaction is the one implementation. Naming this view instead of the class keeps
the order one way: rtmsg/rtnl -> verdicts, endpoints -> ensure (Transaction) -> apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from netmap import plan as p
    from netmap.netlink import rtmsg, rtnl
    from netmap.netlink.ovsdb import Connections
    from netmap.netlink.sysfs import VirtualFunction
    from netmap.state import HostState


class TransactionView(Protocol):
    kernel: rtnl.Rtnl
    state: HostState
    plan: p.Plan
    sysfs_root: str | Path | None
    links: dict[str, rtmsg.Link]  # the live links, read once by the decide pass
    vfs: dict[str, VirtualFunction]  # resource -> the VF claimed
    ovsdb: Connections  # OVSDB by remote, for the OVS steps

    def bridge_vlans(self) -> dict[str, dict[int, int]]: ...

    def addresses(self) -> dict[int, list[str]]: ...

    def ours(self, name: str) -> bool: ...

    def vf_for(self, nic: p.NicPlan) -> VirtualFunction | None: ...

    def ensure(self, nic: int, step: p.Step) -> None: ...

    def recreated_names(self) -> set[str]: ...

    def planned_names(self) -> set[str]: ...
