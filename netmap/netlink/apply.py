"""Run a plan on a host: idempotent, all-or-nothing, under the host's lock, with state.

realize_plan(): lock the host, read state and the live links (one dump), decide for every
step what to do (create / leave / repair / refuse), record the guest as pending with what it
is about to create, then change the kernel. Any failure, or Ctrl-C, undoes every change of
this run in reverse order and restores state: the host is left as it was (ApplyError, exit
3). After the changes the links are read back and each endpoint verified (nmstate's
apply -> re-read -> verify). release_guest() undoes, in reverse, what state says netmap made
for that guest and no other guest still uses (release.py).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from netmap import plan as p
from netmap.errors import ApplyError, NetmapError
from netmap.netlink.access import open_kernel, require_capabilities
from netmap.netlink.ensure import Transaction
from netmap.netlink.kernel_support import KernelProbe, refuse_unsupported
from netmap.state import REALIZED, HostState, host_lock
from netmap.support.gcpause import gc_paused

if TYPE_CHECKING:
    from netmap.netlink import rtmsg
    from netmap.netlink.rtnl import Rtnl

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
    import threading  # only on a rollback

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


def _refuse_unsupported(txn: Transaction, probe: KernelProbe | None) -> None:
    """After decide, before any change: a device kind this kernel cannot make."""
    refuse_unsupported([(a.step, a.verdict, a.repair) for a in txn.actions],
                       probe or KernelProbe(), txn.plan.host)


def realize_plan(plan: p.Plan, *, state_dir: str | Path | None = None,
                 sysfs_root: str | Path | None = None, on_step: StepHook | None = None,
                 lock_timeout: float = 60.0, kernel_probe: KernelProbe | None = None,
                 on_applied: Callable[[dict[str, rtmsg.Link]], None] | None = None,
                 ) -> RealizeResult:
    """Build every endpoint of `plan` on its host, or change nothing (ApplyError).
    `kernel_probe` reads what the kernel supports (default: this machine's). `on_applied`
    runs, still under the host's lock, once the endpoints are verified, with the live
    links: what fails there (the QEMU helper handing its fd over) undoes the whole realize."""
    return realize_plans([plan], state_dir=state_dir, sysfs_root=sysfs_root, on_step=on_step,
                         lock_timeout=lock_timeout, kernel_probe=kernel_probe,
                         on_applied=on_applied)[0]


def _names(plans: Sequence[p.Plan]) -> str:
    names = [plan.guest for plan in plans]
    return ", ".join(names) if len(names) <= 5 else f"{', '.join(names[:4])} and " \
        f"{len(names) - 4} more guests"


def _some(problems: list[str], most: int = 5) -> str:
    """The first few problems of many guests, and how many more."""
    more = f"; and {len(problems) - most} more" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


def realize_plans(plans: Sequence[p.Plan], *, state_dir: str | Path | None = None,
                  sysfs_root: str | Path | None = None, on_step: StepHook | None = None,
                  lock_timeout: float = 60.0, kernel_probe: KernelProbe | None = None,
                  on_applied: Callable[[dict[str, rtmsg.Link]], None] | None = None,
                  ) -> list[RealizeResult]:
    """Build the endpoints of several guests on one host as one transaction (one lock, one
    link dump, one tap batch, one OVSDB transaction, one state write before and one
    after), or change nothing (ApplyError): a host agent bringing up its guests after a
    reboot. State records each guest on its own, as a realize of each would."""
    if not plans:
        return []
    host, netns, who = plans[0].host, plans[0].netns, _names(plans)
    if len({plan.guest for plan in plans}) != len(plans):
        raise ApplyError(f"realize on {host}: a guest is named twice ({who})",
                         fix="name each guest once")
    if any((plan.host, plan.netns) != (host, netns) for plan in plans):
        raise ApplyError(f"realize {who}: the plans are for different hosts",
                         fix="realize each host's guests on that host")
    problems = [f"{plan.guest}: {x}" if len(plans) > 1 else x
                for plan in plans for x in plan.problems]
    if problems:
        raise ApplyError(f"cannot realize {who} on {host}: " + _some(problems),
                         fix="run 'netmap check' for details")
    require_capabilities(f"realize {who}", host, netns, changes=True)
    # the OVSDB replica and the steps of N guests are many objects that all live until
    # the end: the cyclic collector would only walk them again and again
    with gc_paused(), host_lock(host, state_dir, timeout=lock_timeout):
        state = HostState.load(host, state_dir)
        before = state.snapshot()
        with open_kernel(host, netns) as kernel:
            txn = Transaction(kernel, state, plans, sysfs_root)
            touched = False
            try:
                txn.decide()  # refusals happen here, before anything is touched
                _refuse_unsupported(txn, kernel_probe)
                touched = True
                if txn.changes_planned():
                    txn.record_pending()
                    state.save()
                txn.execute(on_step)
                identified = txn.record_identities()
                problems = txn.verify()
                if problems:
                    raise ApplyError("the host does not match the plan after applying it: "
                                     + _some(problems),
                                     fix="another tool may be changing these interfaces")
                if on_applied is not None:  # still undone with the rest if it fails
                    on_applied(txn.links)
            except BaseException as err:
                with _no_interrupts():
                    leftovers = txn.rollback()
                    if leftovers:
                        state.save()  # the pending record still names what is left
                    else:
                        state.restore(before)
                        if touched:  # refused while deciding: the file was not written
                            state.save()
                    if txn.restore_identities():  # a tap made again as it was
                        state.save()
                    txn.close()
                tail = "; every change was undone" if not leftovers else (
                    "; could not undo: " + "; ".join(leftovers)
                    + " (state keeps them: 'netmap release' removes them)")
                if not touched and not leftovers:
                    tail = "; nothing was changed"
                fix = err.fix if isinstance(err, NetmapError) else None
                raise ApplyError(f"realize {who} on {host} failed: "
                                 f"{_reason(err)}{tail}", fix=fix,
                                 step=getattr(err, "step", None)) from err
            txn.close()
            outcomes = txn.outcomes_by_guest()
            results = [RealizeResult(plan.guest, host, netns, outcomes[plan.guest],
                                     txn.attachments(plan)) for plan in plans]
            save = identified
            for plan, result in zip(plans, results, strict=True):
                save = _converge(kernel, txn, state, plan, result) or save
            if save:
                state.save()
            return results


def _converge(kernel: Rtnl, txn: Transaction, state: HostState, plan: p.Plan,
              result: RealizeResult) -> bool:
    """After the plans succeeded: what this guest had here and its plan no longer needs (a
    NIC removed, or moved to another network) is released; the guest is recorded as
    realized. Returns whether state changed."""
    planned = {step.resource for _, step in plan.steps}
    stale = [k for k in (state.guest(plan.guest) or {}).get("resources", [])
             if k not in planned]
    if stale:
        from netmap.netlink.release import release_keys  # rare: off the QEMU helper's start-up

        left = release_keys(kernel, txn.links, state, plan.guest, stale, result,
                            sweep=False)
        result.kept += [f"{k}: could not be removed: {r['error']}" for k, r in left]
    if result.changed or stale or (state.guest(plan.guest) or {}).get("status") != REALIZED:
        state.set_guest(plan.guest, REALIZED, result.nics)
        return True
    return False


def preview_plan(plan: p.Plan, *, state_dir: str | Path | None = None,
                 sysfs_root: str | Path | None = None, kernel_probe: KernelProbe | None = None,
                 ) -> list[tuple[int, p.Step, str]]:
    """What realize would do with each step on the live host, changing nothing: the
    verdicts (create, unchanged, repair, adopt); a refusal raises as realize would, a
    kind of device this kernel cannot make included."""
    return [(nic, step, verdict) for _guest, nic, step, verdict in preview_plans(
        [plan], state_dir=state_dir, sysfs_root=sysfs_root, kernel_probe=kernel_probe)]


def preview_plans(plans: Sequence[p.Plan], *, state_dir: str | Path | None = None,
                  sysfs_root: str | Path | None = None,
                  kernel_probe: KernelProbe | None = None,
                  ) -> list[tuple[str, int, p.Step, str]]:
    """preview_plan for guests realized together: (guest, NIC, step, verdict), a part
    they share under the first guest that names it."""
    plan = plans[0]
    who = _names(plans)
    require_capabilities(f"a dry run of {who}", plan.host, plan.netns, changes=False)
    with host_lock(plan.host, state_dir, write=False), \
            open_kernel(plan.host, plan.netns) as kernel:
        txn = Transaction(kernel, HostState.load(plan.host, state_dir), plans, sysfs_root)
        try:
            txn.decide()
            _refuse_unsupported(txn, kernel_probe)
        except ApplyError as err:
            raise ApplyError(f"realize {who} on {plan.host} would fail: {err.problem}",
                             fix=err.fix, step=err.step) from err
        finally:
            txn.close()  # the VF entries' socket, if a claim read them
        return [(txn.owner(a.step), a.nic, a.step, a.verdict) for a in txn.actions]


def release_guest(host: str, guest: str, netns: str | None, *,
                  state_dir: str | Path | None = None, lock_timeout: float = 60.0,
                  ) -> ReleaseResult:
    """Remove what netmap made for `guest` on `host` that no other guest uses."""
    return release_guests(host, [guest], netns, state_dir=state_dir,
                          lock_timeout=lock_timeout)[0]


def release_guests(host: str, guests: Sequence[str], netns: str | None, *,
                   state_dir: str | Path | None = None, lock_timeout: float = 60.0,
                   ) -> list[ReleaseResult]:
    """Remove what netmap made for each of `guests` on `host` that no guest left uses:
    one lock, one link dump, one group delete, one OVSDB transaction, one state write.
    A guest whose removal failed keeps what is left in state; the others are forgotten."""
    results = [ReleaseResult(guest, host) for guest in guests]
    if not guests:
        return results
    who = ", ".join(guests) if len(guests) <= 5 else f"{len(guests)} guests"
    require_capabilities(f"release {who}", host, netns, changes=True)
    with gc_paused(), host_lock(host, state_dir, timeout=lock_timeout):
        state = HostState.load(host, state_dir)
        work = [(result.guest, list(entry["resources"]), result) for result in results
                if (entry := state.guest(result.guest)) is not None]
        if not work:
            return results
        with open_kernel(host, netns) as kernel:
            from netmap.netlink.release import release_many

            problems = release_many(kernel, kernel.links(), state, work)
            for guest, _keys, _result in work:
                if not problems[guest]:
                    state.forget_guest(guest)
            state.save()
            left = [(guest, k, r) for guest, _keys, _result in work for k, r in problems[guest]]
            if left:
                shown = [f"{k} ({r['error']})" if len(guests) == 1 else f"{g}: {k} ({r['error']})"
                         for g, k, r in left[:5]]
                more = f"; and {len(left) - 5} more" if len(left) > 5 else ""
                raise ApplyError(f"release {who} on {host} left " + "; ".join(shown) + more,
                                 fix="fix the cause and run release again")
    return results
