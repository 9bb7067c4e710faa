"""Run a plan on a host: idempotent, all-or-nothing, under the host's lock, with state.

realize_plan(): lock the host, read state and the live links (one dump), decide for every
step what to do (create / leave / repair / refuse), record the guest as pending with what it
is about to create, then change the kernel. Any failure, or Ctrl-C, undoes every change of
this run in reverse order and restores state: the host is left as it was (ApplyError, exit
3). After the changes the links are read back and each endpoint verified (nmstate's
apply -> re-read -> verify). release_guest() undoes, in reverse, what state says netmap made
for that guest and no other guest still uses.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netmap import plan as p
from netmap.errors import ApplyError
from netmap.netlink import rtmsg, rtnl
from netmap.netlink.ensure import Transaction
from netmap.netlink.kernel_steps import run_inverse
from netmap.netlink.verdicts import KIND_OF
from netmap.state import REALIZED, HostState, host_lock

StepHook = Callable[[int, p.Step], None]


@dataclass
class RealizeResult:
    guest: str
    host: str
    netns: str | None
    outcomes: list[tuple[int, p.Step, str]] = field(default_factory=list)
    nics: list[dict[str, object]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale parts of an earlier realize
    kept: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.removed) or any(action not in ("unchanged", "adopt")
                                         for _, _, action in self.outcomes)

    def as_dict(self) -> dict[str, object]:
        return {"guest": self.guest, "host": self.host, "netns": self.netns,
                "changed": self.changed,
                "steps": [{"nic": nic, "do": step.describe(), "result": action,
                           "step": step.as_dict()} for nic, step, action in self.outcomes],
                "nics": self.nics, "removed": self.removed, "kept": self.kept}


@dataclass
class ReleaseResult:
    guest: str
    host: str
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"guest": self.guest, "host": self.host, "removed": self.removed,
                "kept": self.kept}


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ctrl-C must not cut a rollback short: ignore SIGINT while undoing (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _reason(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, ApplyError):
        return err.problem
    return str(err) or type(err).__name__


def _open_kernel(host: str, netns: str | None) -> rtnl.Rtnl:
    try:
        return rtnl.Rtnl(netns)
    except OSError as err:
        where = f"network namespace {netns}" if netns else "this machine"
        raise ApplyError(f"cannot reach host {host}'s network stack ({where}): {err}",
                         fix="run netmap on that host, or build the lab first "
                         "(scripts/lab up)") from err


def realize_plan(plan: p.Plan, *, state_dir: str | Path | None = None,
                 sysfs_root: str | Path | None = None, on_step: StepHook | None = None,
                 lock_timeout: float = 60.0) -> RealizeResult:
    """Build every endpoint of `plan` on its host, or change nothing (ApplyError)."""
    if plan.problems:
        raise ApplyError(f"cannot realize {plan.guest} on {plan.host}: "
                         + "; ".join(plan.problems), fix="run 'netmap check' for details")
    with host_lock(plan.host, state_dir, timeout=lock_timeout):
        state = HostState.load(plan.host, state_dir)
        before = state.snapshot()
        with _open_kernel(plan.host, plan.netns) as kernel:
            txn = Transaction(kernel, state, plan, sysfs_root)
            result = RealizeResult(plan.guest, plan.host, plan.netns)
            try:
                txn.decide()  # refusals happen here, before anything is touched
                if txn.changes_planned():
                    txn.record_pending()
                    state.save()
                txn.execute(on_step)
                identified = txn.record_identities()
                problems = txn.verify()
                if problems:
                    raise ApplyError("the host does not match the plan after applying it: "
                                     + "; ".join(problems),
                                     fix="another tool may be changing these interfaces")
            except BaseException as err:
                with _no_interrupts():
                    leftovers = txn.rollback()
                    if leftovers:
                        state.save()  # the pending record still names what is left
                    else:
                        state.restore(before)
                        state.save()
                    txn.close()
                tail = "; every change was undone" if not leftovers else (
                    "; could not undo: " + "; ".join(leftovers)
                    + " (state keeps them: 'netmap release' removes them)")
                fix = err.fix if isinstance(err, ApplyError) else None
                raise ApplyError(f"realize {plan.guest} on {plan.host} failed: "
                                 f"{_reason(err)}{tail}", fix=fix) from err
            txn.close()
            result.outcomes = txn.outcomes
            result.nics = txn.attachments()
            # converge: what this guest had here and the plan no longer needs (a NIC removed
            # or moved to another network) is released; the plan itself has succeeded
            planned = {step.resource for _, step in plan.steps}
            stale = [k for k in (state.guest(plan.guest) or {}).get("resources", [])
                     if k not in planned]
            if stale:
                left = _release_keys(kernel, txn.links, state, plan.guest, stale, result,
                                     sweep=False)
                result.kept += [f"{k}: could not be removed: {r['error']}" for k, r in left]
            if result.changed or stale or identified or (state.guest(plan.guest) or {}).get(
                    "status") != REALIZED:
                state.set_guest(plan.guest, REALIZED, [
                    {k: v for k, v in nic.items() if k not in ("libvirt_xml", "qemu")}
                    for nic in result.nics])
                state.save()
            return result


def preview_plan(plan: p.Plan, *, state_dir: str | Path | None = None,
                 sysfs_root: str | Path | None = None) -> list[tuple[int, p.Step, str]]:
    """What realize would do with each step on the live host, changing nothing: the
    verdicts (create, unchanged, repair, adopt); a refusal raises as realize would."""
    with host_lock(plan.host, state_dir), _open_kernel(plan.host, plan.netns) as kernel:
        txn = Transaction(kernel, HostState.load(plan.host, state_dir), plan, sysfs_root)
        try:
            txn.decide()
        except ApplyError as err:
            raise ApplyError(f"realize {plan.guest} on {plan.host} would fail: {err.problem}",
                             fix=err.fix) from err
        return [(a.nic, a.step, a.verdict) for a in txn.actions]


def release_guest(host: str, guest: str, netns: str | None, *,
                  state_dir: str | Path | None = None, lock_timeout: float = 60.0,
                  ) -> ReleaseResult:
    """Remove what netmap made for `guest` on `host` that no other guest uses."""
    result = ReleaseResult(guest, host)
    with host_lock(host, state_dir, timeout=lock_timeout):
        state = HostState.load(host, state_dir)
        entry = state.guest(guest)
        if entry is None:
            return result
        with _open_kernel(host, netns) as kernel:
            problems = _release_keys(kernel, kernel.links(), state, guest,
                                     list(entry["resources"]), result)
            if not problems:
                state.forget_guest(guest)
            state.save()
            if problems:
                raise ApplyError(f"release {guest} on {host} left "
                                 + "; ".join(f"{k} ({r['error']})" for k, r in problems),
                                 fix="fix the cause and run release again")
    return result


def record_unowned_links(host: str, kernel: rtnl.Rtnl, steps: list[p.Step], *,
                         state_dir: str | Path | None = None) -> None:
    """Record what netmap made outside a realize, for no guest in particular (the QEMU
    helper's bridge, which outlives the tap): owned by no guest, so the next release on
    the host removes it once nothing uses it. The caller holds the host lock."""
    state = HostState.load(host, state_dir)
    for step in steps:
        state.keep_unowned(step.resource, {"step": step.as_dict(), "info": {}})
        live = kernel.get(step.name) if isinstance(step, p.LinkStep) else None
        if live is not None:
            state.record_identity(step.resource, live.index)
    state.save()


def _release_keys(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link], state: HostState,
                  guest: str, keys: list[str], result: ReleaseResult | RealizeResult,
                  *, sweep: bool = True) -> list[tuple[str, dict]]:
    """Drop `guest` from each resource (in reverse order) and undo those netmap made that
    no guest uses any more; what failed stays in state for the next release. What netmap
    made but must keep (a bridge with someone else's port) stays in state, owned by no
    guest; with `sweep` (every release) such leftovers are tried again."""
    undo = []
    unowned = [key for key in state.unowned() if key not in keys] if sweep else []
    for key in reversed(unowned + keys):
        record = state.drop(guest, key)
        if record is None:
            result.kept.append(f"{key}: still used by {', '.join(state.users(key))}")
            continue
        if not record["created"]:
            if not key.startswith("up:"):  # an uplink that was up stays up: no news
                result.kept.append(f"{key}: was there before netmap")
            continue
        undo.append((key, record))
    going = {k.split(":", 1)[1] for k, r in undo if k.startswith(("link:", "port:"))}
    made = {key[5:] for key, record in [*state.resources.items(), *undo]
            if key.startswith("link:") and record["created"]}
    problems, kept = _undo_records(kernel, links, undo, going, made, result)
    for key, record in kept:
        state.keep_unowned(key, record)
    for key, record in problems:  # keep what failed so that a later release can finish it
        state.resources[key] = {**record, "guests": []}
        state.use(guest, key, step=record["step"], created=True, info=record.get("info"))
    return problems


LINK_STEPS = KIND_OF  # the steps that make a link: the kind it has


def _replaced(step: p.Step, record: dict, links: dict[str, rtmsg.Link]) -> str | None:
    """Why the live device named as netmap's is someone else's (None: it is netmap's)."""
    live = links.get(step.name)  # type: ignore[attr-defined]
    if live is None:
        return None
    if live.kind != LINK_STEPS[type(step)]:
        return f"now a {live.kind}, not netmap's"
    made = record.get("info", {}).get("ifindex")
    if made is not None and live.index != made:
        return (f"now another {live.kind} (ifindex {live.index}; netmap's was ifindex "
                f"{made}): not netmap's, left alone")
    return None


def _undo_records(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link],
                  undo: list[tuple[str, dict]], going: set[str], made: set[str],
                  result: ReleaseResult | RealizeResult,
                  ) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """Run the inverse of each record; return those that failed, and those netmap made
    that must stay for now (kept in state).

    Every link to delete (endpoints, and bridges or vxlan devices no one uses any more) goes
    in one group delete: the kernel unregisters them as one batch. A port of a bridge that
    is deleted leaves it with the bridge; a port netmap put into a bridge it did not make
    (one it adopted) is taken out again; other inverses run first, uplinks go down last.
    """
    steps = [(key, record, p.step_from_dict(record["step"])) for key, record in undo]
    foreign = {step.name: why for _key, record, step in steps  # type: ignore[attr-defined]
               if type(step) in LINK_STEPS and (why := _replaced(step, record, links))}
    going -= set(foreign)
    made -= set(foreign)
    for _key, _record, step in steps:  # a bridge that stays keeps its uplink, and it up
        if isinstance(step, p.EnsureBridge) and _still_needed(step, links, going, set()):
            going.discard(step.name)
    leaving = {step.port for _k, _r, step in steps if isinstance(step, p.EnslavePort)
               and step.bridge not in going and step.bridge not in made
               and step.bridge not in foreign}
    failed: list[tuple[str, dict]] = []
    kept: list[tuple[str, dict]] = []
    deletes: list[tuple[str, dict]] = []
    first: list[tuple[str, dict, p.Step]] = []
    last: list[tuple[str, dict, p.Step]] = []
    for key, record, step in steps:
        name = getattr(step, "name", None)
        if name in foreign and type(step) in LINK_STEPS:
            result.kept.append(f"{key}: {foreign[name]}")
            continue
        if isinstance(step, p.EnslavePort) and (step.bridge in foreign or not _is_port_of(
                links, step.port, step.bridge)):  # what netmap did went with its bridge
            result.removed.append(f"{key} (no longer a port of netmap's {step.bridge})")
            continue
        keep_reason = _still_needed(step, links, going, leaving)
        if keep_reason:
            result.kept.append(f"{key}: {keep_reason}")
            kept.append((key, record))
        elif type(step) in LINK_STEPS:
            if name not in links:
                result.removed.append(f"{key} (already gone)")
            else:
                deletes.append((key, record))
        elif isinstance(step, p.EnslavePort) and step.bridge in going:
            result.removed.append(key)  # leaves the bridge with it
        else:
            (last if isinstance(step, p.RequireLink) else first).append((key, record, step))
    for key, record, step in first:
        failed += _inverse(kernel, links, key, record, step, result)
    if deletes:
        failed += _delete_links(kernel, links, deletes, result)
    for key, record, step in last:
        failed += _inverse(kernel, links, key, record, step, result)
    return failed, kept


def _is_port_of(links: dict[str, rtmsg.Link], port: str, bridge: str) -> bool:
    live, master = links.get(port), links.get(bridge)
    return live is not None and master is not None and live.master == master.index


def _inverse(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link], key: str, record: dict,
             step: p.Step, result: ReleaseResult | RealizeResult) -> list[tuple[str, dict]]:
    try:
        run_inverse(kernel, links, step, record.get("info", {}))
    except (OSError, ApplyError) as err:
        return [(key, {**record, "error": str(err)})]
    result.removed.append(key)
    return []


def _delete_links(kernel: rtnl.Rtnl, links: dict[str, rtmsg.Link],
                  deletes: list[tuple[str, dict]], result: ReleaseResult | RealizeResult,
                  ) -> list[tuple[str, dict]]:
    """Delete many links at once: tag them with an unused group, delete the group."""
    names = [str(record["step"]["name"]) for _, record in deletes]
    used = {link.group for link in links.values()}
    group = next(g for g in range(0x7E5A0000, 0x7E5B0000) if g not in used)
    tagged = kernel.batch([rtmsg.set_link(links[name].index, group=group) for name in names])
    failed = []
    for (key, record), error in zip(deletes, tagged, strict=True):
        if error is not None and error.errno != errno.ENODEV:
            failed.append((key, {**record, "error": str(error)}))
    try:
        kernel.call(rtmsg.del_group(group))
    except OSError as err:
        return [(k, {**r, "error": str(err)}) for k, r in deletes]
    done = {k for k, _ in failed}
    result.removed += [k for k, _ in deletes if k not in done]
    return failed


def _still_needed(step: p.Step, links: dict[str, rtmsg.Link], going: set[str],
                  leaving: set[str]) -> str | None:
    """Why a shared object must stay although no netmap guest uses it any more. `going`:
    links deleted and ports leaving with their bridge; `leaving`: ports netmap takes out
    of a bridge it did not make."""
    if isinstance(step, p.EnsureBridge) and step.name in links:
        index = links[step.name].index
        others = sorted(link.name for link in links.values()
                        if link.master == index and link.name not in going)
        if others:
            return f"bridge still has ports netmap did not make: {', '.join(others)}"
    if isinstance(step, p.EnslavePort) and step.bridge not in going and \
            step.port not in leaving:
        return f"bridge {step.bridge} stays"
    if isinstance(step, p.RequireLink) and step.name in links:
        uplink = links[step.name]
        users = sorted(link.name for link in links.values() if link.name not in going and (
            link.lower == uplink.index or link.vxlan_link == uplink.index))
        master = next((n for n, link in links.items() if link.index == uplink.master), None)
        if master and master not in going and uplink.name not in leaving:
            users.append(f"bridge {master}")
        if users:
            return f"still carries {', '.join(users)}"
    return None
