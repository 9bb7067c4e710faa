"""Carry out moves (a drain's plan, or one `migrate`) through libvirt, one journal entry each.

Per move: check again against the fleet as it is now (earlier moves of this run counted),
confirm with the source's libvirt that the guest runs there, pass its persistent definition
through netmap's hook for the destination (so it boots there on the destination's devices
too), then one peer-to-peer live migration; the destination's own hook checks, rewrites
and lets libvirt build the endpoints. A failure leaves the guest on its source: libvirt
undoes the destination's half, and netmap confirms with both daemons where it runs. After a
success netmap releases what it made for the guest on the source.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from netmap.errors import InputError, NetmapError
from netmap.libvirt import client, remote
from netmap.libvirt.journal import (
    FAILED,
    MIGRATING,
    MOVED,
    PENDING,
    RELEASED,
    Journal,
    JournalMove,
)
from netmap.model.fleet import Fleet

Emit = Callable[[dict[str, Any]], None]
# (guest, destination) -> why the live destination cannot take it ("" when it can)
LiveCheck = Callable[[str, str], str]


@dataclass(frozen=True)
class Outcome:
    guest: str
    source: str
    dest: str
    status: str  # released (moved and tidied), moved, failed, skipped
    message: str
    seconds: float
    migration_seconds: float = 0.0  # of `seconds`, inside libvirt's migrateToURI3

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def require_uris(fleet: Fleet, hosts: set[str]) -> None:
    missing = sorted(name for name in hosts if fleet.hosts[name].libvirt_uri is None)
    if missing:
        host = fleet.hosts[missing[0]]
        raise InputError(f"{', '.join(missing)} name(s) no libvirt_uri, so netmap cannot "
                         "migrate through libvirt there",
                         file=host.source.file if host.source else None,
                         key="host.libvirt_uri",
                         fix='add libvirt_uri = "qemu+ssh://HOST/system" to [host]')


def _leave_sigint_to_the_main_thread() -> None:
    """Ctrl-C taken by a worker thread (the kernel may pick any thread that does not block
    it) would not wake the main thread until the move under way ends, and by then the
    worker may have started the next move."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


class Executor:
    """Runs moves at most `parallel` at a time; `emit` gets one event dict per step."""

    def __init__(self, fleet: Fleet, journal: Journal, emit: Emit, *, parallel: int = 1,
                 stop_on_error: bool = False, strict: bool = False,
                 timeout: float | None = None, live_check: LiveCheck | None = None,
                 remote_release: remote.RemoteRelease | None = None) -> None:
        self.fleet, self.journal, self.emit = fleet, journal, emit
        self.remote_release = remote_release or remote.remote_release(None, "netmap")
        self.parallel, self.stop_on_error = parallel, stop_on_error
        self.strict, self.timeout, self.live_check = strict, timeout, live_check
        self._migration_seconds: dict[str, float] = {}
        self._hosts = {name: guest.host for name, guest in fleet.guests.items()}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._interrupted = threading.Event()

    def run(self) -> list[Outcome]:
        """Every unfinished move's outcome. On Ctrl-C no further move starts; those under
        way run to their end (libvirt's migration is not to be cut in half), so the journal
        says where each guest is, and KeyboardInterrupt goes on to the caller."""
        pool = ThreadPoolExecutor(max_workers=max(1, self.parallel),
                                  initializer=_leave_sigint_to_the_main_thread)
        futures = [pool.submit(self.carry, move) for move in self.journal.unfinished]
        try:
            return [future.result() for future in futures]
        except KeyboardInterrupt:
            self._interrupted.set()  # a worker between two moves must not start the next
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)

    def carry(self, move: JournalMove) -> Outcome:
        started = time.monotonic()
        if self._interrupted.is_set():  # the journal keeps it pending for --resume
            return Outcome(move.guest, move.source, move.dest, "skipped",
                           "not started: interrupted", 0.0)
        if self._stopped.is_set():
            self.emit({"event": "skipped", "guest": move.guest, "reason": "an earlier move "
                       "failed and --stop-on-error is set"})
            return Outcome(move.guest, move.source, move.dest, "skipped",
                           "not started: an earlier move failed (--stop-on-error)", 0.0)
        self.emit({"event": "start", "guest": move.guest, "source": move.source,
                   "dest": move.dest})
        try:
            message = self._carry_out(move)
            status = move.status
        except _Failed as failure:
            message, status = str(failure), FAILED
            self.journal.update(move, FAILED, message)
            if self.stop_on_error:
                self._stopped.set()
        except NetmapError as err:
            # a check or release that could not run; a guest that moved stays "moved" in
            # the journal, so --resume releases it later
            status = move.status if move.status == MOVED else FAILED
            message = (f"moved, but releasing it on {move.source} failed: {err}"
                       if status == MOVED else str(err))
            self.journal.update(move, status, message)
            if self.stop_on_error:
                self._stopped.set()
        seconds = round(time.monotonic() - started, 3)
        migrating = self._migration_seconds.get(move.guest, 0.0)
        self.emit({"event": "failed" if status == FAILED else "done", "guest": move.guest,
                   "source": move.source, "dest": move.dest, "status": status,
                   "message": message, "seconds": seconds, "migration_seconds": migrating})
        return Outcome(move.guest, move.source, move.dest, status, message, seconds,
                       migrating)

    def _carry_out(self, move: JournalMove) -> str:
        source, dest = self.fleet.hosts[move.source], self.fleet.hosts[move.dest]
        assert source.libvirt_uri is not None
        assert dest.libvirt_uri is not None
        if move.status == MIGRATING:  # interrupted mid-migration: where did it end up?
            self._settle_interrupted(move)
        if move.status == PENDING:
            self._check(move)
            self.emit({"event": "checked", "guest": move.guest})
            running = self._ask(source.libvirt_uri, move.source)
            if move.guest not in running:
                raise _Failed(f"libvirt on {move.source} runs no guest {move.guest!r}; "
                              "nothing was migrated")
            persistent = self._persistent_xml(move)
            self.journal.update(move, MIGRATING)
            self.emit({"event": "migrating", "guest": move.guest})
            began = time.monotonic()
            try:
                client.live_migrate(source.libvirt_uri, dest.libvirt_uri, move.guest,
                                    persistent_xml=persistent, timeout=self.timeout)
            except client.MigrationFailed as err:
                raise _Failed(self._after_failure(move, str(err))) from err
            finally:
                self._migration_seconds[move.guest] = round(time.monotonic() - began, 3)
            self.journal.update(move, MOVED)
            with self._lock:
                self._hosts[move.guest] = move.dest
        if move.status == MOVED:
            note = self._release_source(move)
            self.journal.update(move, RELEASED, note)
            return note
        return move.message

    def _check(self, move: JournalMove) -> None:
        from netmap.query.graph import build_graph
        from netmap.rules.check import check_migration

        with self._lock:
            guests = {name: dataclasses.replace(guest, host=self._hosts[name])
                      for name, guest in self.fleet.guests.items()}
        guests[move.guest] = dataclasses.replace(guests[move.guest], host=move.source)
        graph = build_graph(dataclasses.replace(self.fleet, guests=guests))
        report = check_migration(graph, move.guest, move.dest, source=move.source,
                                 strict=self.strict)
        if not report.compatible:
            raise _Failed("the check refuses it now: " + "; ".join(
                f"[{f.code}] {f.message}" for f in report.errors))
        live = self.live_check(move.guest, move.dest) if self.live_check else ""
        if live:
            raise _Failed(f"the live destination refuses it now: {live}")

    def _ask(self, uri: str, host: str) -> frozenset[str]:
        try:
            return client.running_guests(uri)
        except client.Unreachable as err:
            raise _Failed(f"libvirt on {host} did not answer: {err}") from err

    def _persistent_xml(self, move: JournalMove) -> str | None:
        from netmap.libvirt.hook import migrate_begin

        uri = self.fleet.hosts[move.source].libvirt_uri
        assert uri is not None
        try:
            inactive = client.inactive_xml(uri, move.guest)
        except client.MigrationFailed as err:
            raise _Failed(f"cannot read {move.guest}'s definition on {move.source}: "
                          f"{err}") from err
        if inactive is None:
            return None
        # what the destination's hook does to the live XML, done to the definition it keeps
        result = migrate_begin(move.guest, inactive.encode(), mappings=self.fleet.root,
                               host=move.dest, strict=self.strict)
        if result.exit_code != 0:
            raise _Failed("\n".join(result.messages))
        return result.output.decode()

    def _after_failure(self, move: JournalMove, error: str) -> str:
        """libvirt keeps the guest on the source when a migration fails; say so only once
        both daemons confirm it."""
        source, dest = self.fleet.hosts[move.source], self.fleet.hosts[move.dest]
        assert source.libvirt_uri is not None
        assert dest.libvirt_uri is not None
        where = []
        for host, uri in ((move.source, source.libvirt_uri), (move.dest, dest.libvirt_uri)):
            try:
                if move.guest in client.running_guests(uri):
                    where.append(host)
            except client.Unreachable:
                where.append(f"{host}?")
        if where == [move.source]:
            return f"migration failed, {move.guest} still runs on {move.source}: {error}"
        return (f"migration failed and {move.guest} runs on {', '.join(where) or 'no host'} "
                f"(check by hand): {error}")

    def _settle_interrupted(self, move: JournalMove) -> None:
        source, dest = self.fleet.hosts[move.source], self.fleet.hosts[move.dest]
        assert source.libvirt_uri is not None
        assert dest.libvirt_uri is not None
        on_dest = move.guest in self._ask(dest.libvirt_uri, move.dest)
        on_source = move.guest in self._ask(source.libvirt_uri, move.source)
        if on_dest and not on_source:
            self.journal.update(move, MOVED)
        elif on_source and not on_dest:
            self.journal.update(move, PENDING)
        else:
            raise _Failed(f"{move.guest} was migrating when the run stopped and now runs on "
                          f"{'both hosts' if on_source else 'neither host'}; settle it by "
                          "hand (virsh domjobinfo / virsh list on both)")

    def _release_source(self, move: JournalMove) -> str:
        """Remove what netmap made for the guest on the source: here when this process can
        (a lab namespace or this machine), else by `netmap release` run there through
        Ansible or the ssh of the source's libvirt_uri. A failure raises, and the journal
        keeps the move as `moved` for --resume."""
        from netmap.state import HostState

        source = self.fleet.hosts[move.source]
        here = {socket.gethostname(), os.environ.get("NETMAP_HOST") or ""}
        if source.netns is None and source.name not in here:
            return self.remote_release(source, move.guest)
        if HostState.load(move.source).guest(move.guest) is None:
            return "moved; netmap had made nothing for it on the source"
        from netmap.netlink.apply import release_guest

        result = release_guest(move.source, move.guest, source.netns)
        return f"moved; released on {move.source}: {', '.join(result.removed) or 'nothing'}"


class _Failed(Exception):
    """One move failed; the guest stays on its source."""
