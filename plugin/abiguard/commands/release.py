"""``abiguard release``: forget that a VM was pinned (issue 22), so that without a contract it
is judged by ``[policy] unpinned`` again: its record on this host and, with ``[fleet] dir``,
in the fleet directory."""
from __future__ import annotations

import argparse

from ..errors import UsageError
from .base import Command


class Release(Command):
    name = "release"
    help = "forget that a VM was pinned, so that without its contract it is judged by [policy] unpinned again"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("domain", nargs="?", help="the domain's name (resolved to its UUID through libvirt)")
        which.add_argument("--uuid", help="the domain's UUID (no libvirt needed)")
        parser.add_argument("-c", "--connect", help="libvirt URI (default: libvirt's default)")

    def run(self, args: argparse.Namespace) -> int:
        from .. import state

        if args.uuid is not None:
            uuid, label = args.uuid, args.uuid
            if not state.is_uuid(uuid):
                raise UsageError(f"release --uuid {uuid[:80]!r}: not a UUID (expected 36 characters such as "
                                 "6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10; 'virsh domuuid DOMAIN' prints it)")
        else:
            label = args.domain
            uuid = domain_uuid(args.connect, args.domain)
        from ..model.config import Config

        fleet_dir = Config.load().fleet_dir
        removed = 0
        for base in (None, fleet_dir) if fleet_dir else (None,):
            gone = state.release_pinned(uuid, base)
            if gone is None:
                print(f"{label}: no pinned record at {state.pinned_path(uuid, base)}: nothing to release there")
                continue
            path, digest = gone
            removed += 1
            print(f"released {label}: removed {path} (it named contract {digest or 'unknown: a malformed record'})")
        if not removed:
            print(f"{label} was not pinned: nothing to release")
        return 0


def domain_uuid(uri: str | None, name: str) -> str:
    import libvirt

    from ..connection import connect

    conn = connect(uri, readonly=True)
    try:
        try:
            uuid: str = conn.lookupByName(name).UUIDString()
        except libvirt.libvirtError:
            raise UsageError(f"no domain named {name!r} at {conn.getURI()}; to release a VM libvirt no longer "
                             "knows, give its UUID: abiguard release --uuid UUID") from None
        return uuid
    finally:
        conn.close()
