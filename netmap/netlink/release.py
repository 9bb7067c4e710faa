"""Release: undo, in reverse, what state says netmap made and no guest uses any more.

Shared by `netmap release` and by realize's convergence (a NIC removed from the plan).
Only what netmap made is undone, and only the device it made: one that took its name
since (another ifindex) is someone else's. What netmap made but must keep (a bridge with
someone else's port on it) stays in state, owned by no guest, and every later release tries
it again.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Protocol

from netmap import plan as p
from netmap.errors import ApplyError
from netmap.netlink import rtmsg, rtnl, shared_changes
from netmap.netlink.kernel_steps import RtnlKernel
from netmap.state import HostState
from netmap.steps.ovs import OvsStep, changes_ovsdb


class Tally(Protocol):
    """What a release reports: realize's and release's results both have it."""

    removed: list[str]
    kept: list[str]


def release_keys(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link], state: HostState,
                  guest: str, keys: list[str], result: Tally,
                  *, sweep: bool = True) -> list[tuple[str, dict]]:
    """Drop `guest` from each resource (in reverse order) and undo those netmap made that
    no guest uses any more; what failed stays in state for the next release. What netmap
    made but must keep (a bridge with someone else's port) stays in state, owned by no
    guest; with `sweep` (every release) such leftovers are tried again."""
    return release_many(kernel, links, state, [(guest, keys, result)], sweep=sweep)[guest]


def release_many(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link], state: HostState,
                 work: Sequence[tuple[str, list[str], Tally]], *, sweep: bool = True,
                 ) -> dict[str, list[tuple[str, dict]]]:
    """release_keys for several guests (guest, its keys, its tally) at once: their devices
    go in one group delete, their OVS ports in one OVSDB transaction. What is undone is
    reported to the guest whose release left the resource unused; returns what failed,
    per guest."""
    undo: list[tuple[str, dict]] = []
    owner: dict[str, tuple[str, Tally]] = {}  # key -> the guest that undoes it
    every = {key for _guest, keys, _tally in work for key in keys}
    unowned = [key for key in state.unowned() if key not in every] if sweep else []
    staying: list[tuple[str, str, dict]] = []  # shared devices that stay: put back what
    # their guest changed
    order = [(guest, key, tally) for guest, keys, tally in reversed(work)
             for key in reversed(keys)]
    first_guest, _keys, first_tally = work[0]
    order += [(first_guest, key, first_tally) for key in reversed(unowned)]
    for guest, key, tally in order:
        shared = state.resource(key)
        record = state.drop(guest, key)
        if record is None:
            tally.kept.append(f"{key}: still used by {', '.join(state.users(key))}")
            if shared is not None and key in state.resources:
                staying.append((guest, key, shared))
            continue
        if not record["created"]:
            if not key.startswith("up:"):  # an uplink that was up stays up: no news
                tally.kept.append(f"{key}: was there before netmap")
            continue
        owner[key] = (guest, tally)
        undo.append((key, record))
    going = {k.split(":", 1)[1] for k, r in undo if k.startswith(("link:", "port:"))}
    made = {key[5:] for key, record in [*state.resources.items(), *undo]
            if key.startswith("link:") and record["created"]}
    routed = _Routed(owner, first_tally)
    problems, kept = _undo_records(kernel, links, undo, going, made, routed)
    routed.deliver()
    for key, record in kept:
        state.keep_unowned(key, record)
    failed: dict[str, list[tuple[str, dict]]] = {guest: [] for guest, _k, _t in work}
    for key, record in problems:  # keep what failed so that a later release can finish it
        guest = owner.get(key, (first_guest, first_tally))[0]
        state.resources[key] = {**record, "guests": []}
        state.use(guest, key, step=record["step"], created=True, info=record.get("info"))
        failed[guest].append((key, record))
    for guest, key, shared in staying:  # after the guests' own devices are gone
        gave_back = shared_changes.give_back(kernel, links, shared, guest)
        if gave_back:  # the guest keeps its part in the device until that is put back
            state.use(guest, key, step=shared["step"], created=False)
            failed[guest].append((key, {**shared, **gave_back}))
    return failed


class _Routed:
    """One tally for the undo of many guests' resources; deliver() hands each line to the
    tally of the guest that undid its resource (every line starts with the key)."""

    def __init__(self, owner: dict[str, tuple[str, Tally]], fallback: Tally) -> None:
        self.owner, self.fallback = owner, fallback
        self.removed: list[str] = []
        self.kept: list[str] = []

    def _tally(self, line: str) -> Tally:
        key = line.split(" ", 1)[0].removesuffix(":")
        return self.owner[key][1] if key in self.owner else self.fallback

    def deliver(self) -> None:
        for line in self.removed:
            self._tally(line).removed.append(line)
        for line in self.kept:
            self._tally(line).kept.append(line)


def _undo_records(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link],
                  undo: list[tuple[str, dict]], going: set[str], made: set[str],
                  result: Tally,
                  ) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """Run the inverse of each record; return those that failed, and those netmap made
    that must stay for now (kept in state).

    Every link to delete (endpoints, and bridges or vxlan devices no one uses any more) goes
    in one group delete: the kernel unregisters them as one batch. A port of a bridge that
    is deleted leaves it with the bridge; a port netmap put into a bridge it did not make
    (one it adopted) is taken out again; other inverses run first, uplinks go down last.
    """
    steps = [(key, record, p.step_from_dict(record["step"])) for key, record in undo]
    replaced = {key: why for key, record, step in steps
                if (why := step.replaced(links.get(step.target),
                                         record.get("info", {}).get("ifindex")))}
    foreign = {step.target for key, _record, step in steps if key in replaced}
    going -= foreign
    made -= foreign
    for _key, _record, step in steps:  # a bridge that stays keeps its uplink, and it up
        if step.release_phase == "delete" and step.still_needed(links, going, set()):
            going.discard(step.target)
    leaving = {port for _k, _r, step in steps
               if (port := step.leaves_a_bridge_that_stays(going, made, foreign))}
    failed: list[tuple[str, dict]] = []
    kept: list[tuple[str, dict]] = []
    deletes: list[tuple[str, dict, str]] = []  # key, record, the link to delete
    phases: dict[str, list[tuple[str, dict, p.Step]]] = {"undo": [], "undo-last": []}
    ovs: list[tuple[str, dict, OvsStep]] = []
    for key, record, step in steps:
        if changes_ovsdb(step):  # OVSDB's own rules decide (ovs_steps.release)
            ovs.append((key, record, step))
            continue
        if key in replaced:
            result.kept.append(f"{key}: {replaced[key]}")
            continue
        gone = step.gone_with_its_master(links, going, foreign)
        if gone is not None:
            result.removed.append(f"{key}{gone}")
            continue
        keep_reason = step.still_needed(links, going, leaving)
        if keep_reason:
            result.kept.append(f"{key}: {keep_reason}")
            kept.append((key, record))
        elif step.release_phase != "delete":
            phases[step.release_phase].append((key, record, step))
        elif step.target not in links:
            result.removed.append(f"{key} (already gone)")
        else:
            deletes.append((key, record, step.target))
    if ovs:
        failed_ovs, kept_ovs = _release_ovs(ovs, going, result)
        failed += failed_ovs
        kept += kept_ovs
    undoing = RtnlKernel(kernel)
    try:
        for key, record, step in phases["undo"]:
            failed += _undo(undoing, key, record, step, result)
        if deletes:
            failed += _delete_links(kernel, links, deletes, result)
        for key, record, step in phases["undo-last"]:
            failed += _undo(undoing, key, record, step, result)
    finally:
        undoing.close()
    return failed, kept


def _release_ovs(records: list[tuple[str, dict, OvsStep]], going: set[str], result: Tally,
                 ) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """OVS ports and bridges netmap added: one OVSDB transaction (ovs_steps.release)."""
    from netmap.netlink import ovs_steps, ovsdb

    by_key = {key: record for key, record, _ in records}
    connections = ovsdb.Connections(ports={port for _, _, step in records
                                           if (port := step.ovs_port)})
    try:
        removed, kept, failed = ovs_steps.release(
            connections, [(key, step) for key, _, step in records], going)
    finally:
        connections.close()
    result.removed += removed
    result.kept += [f"{key}: {why}" for key, why in kept]
    return ([(key, {**by_key[key], "error": error}) for key, error in failed],
            [(key, by_key[key]) for key, why in kept if "not netmap's" not in why
             and "someone else's" not in why])


def _undo(kernel: RtnlKernel, key: str, record: dict, step: p.Step, result: Tally,
          ) -> list[tuple[str, dict]]:
    try:
        step.undo(kernel, record.get("info", {}))
    except (OSError, ApplyError) as err:
        return [(key, {**record, "error": str(err)})]
    result.removed.append(key)
    return []


def _delete_links(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link],
                  deletes: list[tuple[str, dict, str]], result: Tally,
                  ) -> list[tuple[str, dict]]:
    """Delete many links at once: tag them with an unused group, delete the group."""
    names = [name for _, _, name in deletes]
    used = {link.group for link in links.values()}
    group = next(g for g in range(0x7E5A0000, 0x7E5B0000) if g not in used)
    tagged = kernel.batch([rtmsg.set_link(links[name].index, group=group) for name in names])
    failed = []
    for (key, record, _name), error in zip(deletes, tagged, strict=True):
        if error is not None and error.errno != errno.ENODEV:
            failed.append((key, {**record, "error": str(error)}))
    try:
        kernel.call(rtmsg.del_group(group))
    except OSError as err:
        return [(k, {**r, "error": str(err)}) for k, r, _name in deletes]
    done = {k for k, _ in failed}
    result.removed += [k for k, _r, _name in deletes if k not in done]
    return failed
