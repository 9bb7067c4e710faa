"""libvirt's own API (libvirt-python), imported here only and only when a command asks a
daemon something: the hook, import and every pure layer stay free of it.

Each call opens its own connection (libvirt connections are not shared across threads here)
and closes it; a daemon that cannot be reached raises `Unreachable` with libvirt's words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from netmap.errors import InputError
from netmap.query.locate import Asked


class Unreachable(Exception):
    """libvirt at a URI did not answer (no daemon, refused, authentication, transport)."""


class MigrationFailed(Exception):
    """libvirt refused or aborted a migration; the guest stays where it ran."""


def _module() -> Any:
    try:
        import libvirt  # type: ignore[import-untyped]
    except ImportError as err:
        raise InputError("libvirt-python is not installed, so netmap cannot ask libvirt",
                         fix="pip install libvirt-python (it needs pkg-config, gcc and "
                         "libvirt's headers: Debian libvirt-dev)") from err
    # libvirt prints every error on stderr by default besides raising it
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


@contextlib.contextmanager
def connection(uri: str) -> Iterator[Any]:
    libvirt = _module()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise Unreachable(str(err)) from err
    try:
        yield conn
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def running_guests(uri: str) -> frozenset[str]:
    """The names of the domains running (or paused: still there) at `uri`."""
    libvirt = _module()
    with connection(uri) as conn:
        try:
            domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            return frozenset(domain.name() for domain in domains)
        except libvirt.libvirtError as err:
            raise Unreachable(str(err)) from err


def inactive_xml(uri: str, guest: str) -> str | None:
    """The persistent definition of a guest running at `uri` (for the destination to
    keep), None for a transient guest."""
    libvirt = _module()
    with connection(uri) as conn:
        try:
            domain = conn.lookupByName(guest)
            if not domain.isPersistent():
                return None
            return str(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE
                                      | libvirt.VIR_DOMAIN_XML_MIGRATABLE))
        except libvirt.libvirtError as err:
            raise MigrationFailed(str(err)) from err


def live_migrate(source_uri: str, dest_uri: str, guest: str, *,
                 persistent_xml: str | None = None, timeout: float | None = None) -> None:
    """Migrate a running guest, peer to peer: the source daemon connects to `dest_uri`
    itself (as `virsh migrate --live --p2p`), so one client call carries the whole
    migration and libvirt undoes a failed one on both sides. The destination's hooks run
    as for any migration (netmap's rewrites the XML there, or refuses)."""
    libvirt = _module()
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
             | libvirt.VIR_MIGRATE_ABORT_ON_ERROR)
    params: dict[str, Any] = {}
    if persistent_xml is not None:
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = persistent_xml
    with connection(source_uri) as conn:
        try:
            domain = conn.lookupByName(guest)
        except libvirt.libvirtError as err:
            raise MigrationFailed(str(err)) from err
        timer = None if timeout is None else _abort_after(domain, timeout)
        try:
            domain.migrateToURI3(dest_uri, params, flags)
        except libvirt.libvirtError as err:
            raise MigrationFailed(str(err)) from err
        finally:
            if timer is not None:
                timer.cancel()


def _abort_after(domain: Any, timeout: float) -> Any:
    """A migration still running after `timeout` seconds is aborted (libvirt then keeps
    the guest on the source)."""
    import threading

    def abort() -> None:
        with contextlib.suppress(Exception):
            domain.abortJob()

    timer = threading.Timer(timeout, abort)
    timer.daemon = True
    timer.start()
    return timer


def ask_hosts(uris: dict[str, str | None], *, workers: int = 16) -> list[Asked]:
    """Every host's running guests at once (a daemon that hangs holds only its thread);
    a host without a URI is reported as such, never guessed."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(host: str) -> Asked:
        uri = uris[host]
        if uri is None:
            return Asked(host, problem="its mapping has no libvirt_uri in [host]")
        try:
            return Asked(host, running_guests(uri))
        except Unreachable as err:
            return Asked(host, problem=f"libvirt at {uri} did not answer: {err}")

    if not uris:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(uris))) as pool:
        return list(pool.map(ask, sorted(uris)))
