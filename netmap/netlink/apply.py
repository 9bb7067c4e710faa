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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from netmap import plan as p
from netmap.errors import ApplyError, NetmapError
from netmap.netlink.access import open_kernel, require_capabilities
from netmap.netlink.ensure import Transaction
from netmap.netlink.kernel_support import KernelProbe, refuse_unsupported
from netmap.state import REALIZED, HostState, host_lock

if TYPE_CHECKING:
    from netmap.netlink import rtmsg

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
    if plan.problems:
        raise ApplyError(f"cannot realize {plan.guest} on {plan.host}: "
                         + "; ".join(plan.problems), fix="run 'netmap check' for details")
    require_capabilities(f"realize {plan.guest}", plan.host, plan.netns, changes=True)
    with host_lock(plan.host, state_dir, timeout=lock_timeout):
        state = HostState.load(plan.host, state_dir)
        before = state.snapshot()
        with open_kernel(plan.host, plan.netns) as kernel:
            txn = Transaction(kernel, state, plan, sysfs_root)
            result = RealizeResult(plan.guest, plan.host, plan.netns)
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
                                     + "; ".join(problems),
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
                raise ApplyError(f"realize {plan.guest} on {plan.host} failed: "
                                 f"{_reason(err)}{tail}", fix=fix,
                                 step=getattr(err, "step", None)) from err
            txn.close()
            result.outcomes = txn.outcomes
            result.nics = txn.attachments()
            # converge: what this guest had here and the plan no longer needs (a NIC removed
            # or moved to another network) is released; the plan itself has succeeded
            planned = {step.resource for _, step in plan.steps}
            stale = [k for k in (state.guest(plan.guest) or {}).get("resources", [])
                     if k not in planned]
            if stale:
                from netmap.netlink.release import release_keys

                left = release_keys(kernel, txn.links, state, plan.guest, stale, result,
                                     sweep=False)
                result.kept += [f"{k}: could not be removed: {r['error']}" for k, r in left]
            if result.changed or stale or identified or (state.guest(plan.guest) or {}).get(
                    "status") != REALIZED:
                state.set_guest(plan.guest, REALIZED, result.nics)
                state.save()
            return result


def preview_plan(plan: p.Plan, *, state_dir: str | Path | None = None,
                 sysfs_root: str | Path | None = None, kernel_probe: KernelProbe | None = None,
                 ) -> list[tuple[int, p.Step, str]]:
    """What realize would do with each step on the live host, changing nothing: the
    verdicts (create, unchanged, repair, adopt); a refusal raises as realize would, a
    kind of device this kernel cannot make included."""
    require_capabilities(f"a dry run of {plan.guest}", plan.host, plan.netns, changes=False)
    with host_lock(plan.host, state_dir, write=False), \
            open_kernel(plan.host, plan.netns) as kernel:
        txn = Transaction(kernel, HostState.load(plan.host, state_dir), plan, sysfs_root)
        try:
            txn.decide()
            _refuse_unsupported(txn, kernel_probe)
        except ApplyError as err:
            raise ApplyError(f"realize {plan.guest} on {plan.host} would fail: {err.problem}",
                             fix=err.fix, step=err.step) from err
        finally:
            txn.close()  # the VF entries' socket, if a claim read them
        return [(a.nic, a.step, a.verdict) for a in txn.actions]


def release_guest(host: str, guest: str, netns: str | None, *,
                  state_dir: str | Path | None = None, lock_timeout: float = 60.0,
                  ) -> ReleaseResult:
    """Remove what netmap made for `guest` on `host` that no other guest uses."""
    result = ReleaseResult(guest, host)
    require_capabilities(f"release {guest}", host, netns, changes=True)
    with host_lock(host, state_dir, timeout=lock_timeout):
        state = HostState.load(host, state_dir)
        entry = state.guest(guest)
        if entry is None:
            return result
        with open_kernel(host, netns) as kernel:
            from netmap.netlink.release import release_keys

            problems = release_keys(kernel, kernel.links(), state, guest,
                                     list(entry["resources"]), result)
            if not problems:
                state.forget_guest(guest)
            state.save()
            if problems:
                raise ApplyError(f"release {guest} on {host} left "
                                 + "; ".join(f"{k} ({r['error']})" for k, r in problems),
                                 fix="fix the cause and run release again")
    return result
