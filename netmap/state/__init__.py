"""What netmap made on a host, for whom: one JSON file per host, and a per-host lock.

Lives under $NETMAP_STATE_DIR (default /run/netmap: tmpfs, so a reboot, which also wipes
the devices, wipes the state). Written atomically (temporary file, fsync, rename), so a
reader sees the old or the new document, never half of one.

Every change realize makes is a *resource* (``link:NAME``, ``port:NAME``, ``vlan:PORT:VID``,
``up:NAME``, ``vf:PF:MAC``) with the guests that use it and whether netmap created it (only
then may the last guest's release undo it). Before touching the kernel, realize records the
guest as ``pending`` with every resource it is about to create; a crash mid-way therefore
leaves a record from which the next realize finishes or release undoes, and nothing
netmap did is ever mistaken for a foreign device.

What makes the directory or a file unusable, and the error that says so: state_check.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from netmap.errors import ApplyError, InputError, PrivilegeError
from netmap.state.check import (
    DEFAULT_STATE_DIR,
    PENDING,
    REALIZED,
    VERSION,
    damaged,
    dir_error,
    read_regular,
    shape_problem,
    shown,
)

__all__ = ["DEFAULT_STATE_DIR", "PENDING", "REALIZED", "VERSION", "HostState", "host_lock",
           "state_dir"]



def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get("NETMAP_STATE_DIR") or DEFAULT_STATE_DIR)


def _empty(host: str) -> dict[str, Any]:
    return {"version": VERSION, "host": host, "resources": {}, "guests": {}}


class HostState:
    """The state document of one host; change it in memory, then `save()`."""

    def __init__(self, host: str, path: Path, data: dict[str, Any]) -> None:
        self.host = host
        self.path = path
        self.data = data
        self._known: dict[str, set[str]] = {}  # guest -> its resources, for O(1) lookups

    @classmethod
    def load(cls, host: str, directory: str | os.PathLike[str] | None = None) -> HostState:
        path = state_dir(directory) / f"{host}.json"
        try:
            raw = read_regular(path)
        except FileNotFoundError:
            return cls(host, path, _empty(host))
        except NotADirectoryError as err:
            raise dir_error(path.parent, err, directory) from err
        except PermissionError as err:
            raise PrivilegeError(f"netmap may not read its state file {path}: {err.strerror}",
                                 fix="run netmap as root, the owner of the file") from err
        except OSError as err:
            raise damaged(path, host, "", f"cannot be read: {err.strerror or err}") from err
        try:
            data = json.loads(raw)
        except ValueError as err:  # UnicodeDecodeError included
            raise damaged(path, host, "", f"is not JSON: {err}") from err
        if isinstance(data, dict) and data.get("version") != VERSION:
            raise InputError(f"netmap state has version {shown(data.get('version'))}, "
                             f"this netmap reads {VERSION}", file=path, key="version",
                             fix="release the guests with the netmap that realized them")
        wrong = shape_problem(data, host)
        if wrong:
            raise damaged(path, host, *wrong)
        return cls(host, path, data)

    def snapshot(self) -> str:
        return json.dumps(self.data, sort_keys=True)

    def restore(self, snapshot: str) -> None:
        self.data = json.loads(snapshot)
        self._known.clear()

    def save(self) -> None:
        """Write atomically: a crash leaves the old file or the new one, whole."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        payload = json.dumps(self.data, separators=(",", ":")).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(payload)
                while view:  # a short write (a full disk) must not pass for a whole file
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # make the rename itself durable
            finally:
                os.close(dir_fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise dir_error(self.path.parent, err) from err

    # --- resources --------------------------------------------------------------------------
    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.data["resources"]

    @property
    def guests(self) -> dict[str, dict[str, Any]]:
        return self.data["guests"]

    def resource(self, key: str) -> dict[str, Any] | None:
        return self.resources.get(key)

    def users(self, key: str) -> list[str]:
        record = self.resources.get(key)
        return list(record["guests"]) if record else []

    def use(self, guest: str, key: str, *, step: dict[str, Any], created: bool,
            info: dict[str, Any] | None = None) -> None:
        """Record that `guest` uses resource `key` (made by netmap when `created`)."""
        record = self.resources.setdefault(
            key, {"step": step, "created": created, "guests": [], "info": info or {}})
        record["created"] = record["created"] or created
        if info:
            record["info"].update(info)
        if guest not in record["guests"]:
            record["guests"].append(guest)
        order = self.guests.setdefault(guest, {"status": PENDING, "resources": [], "nics": []})
        known = self._known.get(guest)
        if known is None:
            known = self._known[guest] = set(order["resources"])
        if key not in known:  # a set beside the ordered list: realizing N NICs stays O(N)
            known.add(key)
            order["resources"].append(key)

    def drop(self, guest: str, key: str) -> dict[str, Any] | None:
        """Forget that `guest` uses `key`; the record if no guest is left, else None."""
        record = self.resources.get(key)
        entry = self.guests.get(guest)
        if entry and key in entry["resources"]:
            entry["resources"].remove(key)
            self._known.pop(guest, None)
        if record is None:
            return None
        if guest in record["guests"]:
            record["guests"].remove(guest)
        if record["guests"]:
            return None
        del self.resources[key]
        return record

    def record_identity(self, key: str, ifindex: int) -> bool:
        """Remember which device netmap made for link resource `key`: its ifindex, unique in
        the namespace while the device lives and not handed out again until the kernel's
        counter wraps, so a device of the same name and kind made later by someone else is
        told apart. Returns whether the record changed."""
        record = self.resources.get(key)
        if record is None or not record["created"] or record["info"].get("ifindex") == ifindex:
            return False
        record["info"]["ifindex"] = ifindex
        return True

    def made_ifindex(self, key: str) -> int | None:
        """The ifindex of the device netmap made for `key`, when recorded."""
        record = self.resources.get(key)
        if record is None or not record["created"]:
            return None
        index = record["info"].get("ifindex")
        return int(index) if index is not None else None

    def keep_unowned(self, key: str, record: dict[str, Any]) -> None:
        """Keep a resource netmap made that no guest uses but that cannot go yet (a bridge
        with someone else's port, one the QEMU helper made): the next release on the host
        removes it once nothing needs it."""
        self.resources[key] = {**record, "guests": [], "created": True}

    def unowned(self) -> list[str]:
        return [key for key, record in self.resources.items() if not record["guests"]]

    def owner_of_link(self, name: str) -> list[str] | None:
        """The guests a device netmap made is recorded for, None when it is not netmap's."""
        record = self.resources.get(f"link:{name}")
        return list(record["guests"]) if record and record["created"] else None

    def claimed_vfs(self, pf: str) -> dict[int, str]:
        """VF index -> MAC of every VF of `pf` that state says is claimed."""
        out = {}
        for key, record in self.resources.items():
            if key.startswith(f"vf:{pf}:") and "index" in record["info"]:
                out[int(record["info"]["index"])] = key.split(":", 2)[2]
        return out

    # --- guests -----------------------------------------------------------------------------
    def set_guest(self, guest: str, status: str, nics: list[dict[str, Any]] | None = None,
                  ) -> None:
        entry = self.guests.setdefault(guest, {"status": status, "resources": [], "nics": []})
        entry["status"] = status
        if nics is not None:
            entry["nics"] = nics

    def guest(self, guest: str) -> dict[str, Any] | None:
        return self.guests.get(guest)

    def forget_guest(self, guest: str) -> None:
        self.guests.pop(guest, None)
        self._known.pop(guest, None)


def _open_lock(path: Path, directory: str | os.PathLike[str] | None, *, write: bool,
               ) -> int | None:
    """The lock file's descriptor. A reader (a dry run) that may not create or write it
    takes it read-only if it exists, else goes without: no writer can be working then."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if write or err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise dir_error(path.parent, err, directory) from err
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as again:
            raise dir_error(path.parent, again, directory) from again
    if write and not os.access(path.parent, os.W_OK | os.X_OK, effective_ids=True):
        # a lock that exists in a directory we cannot write: the state file could not be
        # saved after the kernel was changed; say so now, before anything is touched
        os.close(fd)
        code = errno.EROFS if os.statvfs(path.parent).f_flag & os.ST_RDONLY else errno.EACCES
        raise dir_error(path.parent, OSError(code, os.strerror(code)), directory)
    return fd


@contextlib.contextmanager
def host_lock(host: str, directory: str | os.PathLike[str] | None = None, *,
              timeout: float = 60.0, write: bool = True) -> Iterator[Path]:
    """Hold the host's lock: one realize or release at a time per host, across processes.

    flock on a lock file next to the state: the kernel drops it when the holder dies, so a
    crashed run never leaves the host locked. `write=False` (a dry run) shares the lock with
    other readers and needs no right to write the state directory.
    """
    path = state_dir(directory) / f"{host}.lock"
    fd = _open_lock(path, directory, write=write)
    if fd is None:
        yield path
        return
    try:
        deadline = time.monotonic() + timeout
        mode = fcntl.LOCK_EX if write else fcntl.LOCK_SH
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise ApplyError(
                        f"another netmap run holds the lock of host {host} ({path}) for more "
                        f"than {timeout:.0f}s; nothing was changed",
                        fix="wait for it to finish, or find it with: fuser -v " + str(path),
                    ) from err
                time.sleep(0.01)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
