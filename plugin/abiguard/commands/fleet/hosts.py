"""``abiguard fleet hosts``: every host record, with the kernel of its profile."""
from __future__ import annotations

import argparse

from ..base import Command, print_json
from . import add_common, open_store


class FleetHosts(Command):
    name = "hosts"
    help = "list the fleet's hosts: profile, kernel, when seen, libvirt URI, previous profile"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ...fleet.names import stack

        store = open_store(args)
        records = store.records()
        profiles = store.profiles_of(records)
        if args.json:
            print_json({"directory": store.root, "hosts": [dict(r.to_json(), kernel=profiles[r.profile].kernel_release,
                                                                  machine=profiles[r.profile].machine)
                                                           for r in records]}, "fleet-hosts")
            return 0
        print(f"{len(records)} host(s), {len(profiles)} distinct profile(s) in {store.root}")
        for r in records:
            p = profiles[r.profile]
            print(f"  {r.name}: {p.machine} {stack(p)} {r.profile[:19]} seen {r.seen} ({r.via})"
                  + (f", libvirt {r.uri}" if r.uri else ", no libvirt URI")
                  + (f", previous {r.previous[:19]}" if r.previous else ""))
        return 0
