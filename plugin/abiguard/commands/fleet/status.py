"""``abiguard fleet status``: every VM of the fleet x every host: may it move there now, and
if not, the first reason."""
from __future__ import annotations

import argparse

from ..base import Command, print_json
from . import add_common, need_records, open_store, read_vms


class FleetStatus(Command):
    name = "status"
    help = "every VM (read through each host's libvirt URI) x every host: may it move there now, and if not why"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                            help="how long to wait for the hosts' libvirt (default: %(default)s)")
        add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ...errors import EXIT_REFUSE
        from ...fleet import status
        from ...fleet.judge import Judge

        store = open_store(args)
        records = need_records(store)
        profiles = store.profiles_of(records)
        vms, errors = read_vms(args, records)
        doc = status.compute(records, profiles, vms, errors, Judge())
        if args.json:
            print_json(doc, "fleet-status")
        else:
            print("\n".join(status.lines(doc)) or "no VMs")
        return EXIT_REFUSE if errors else 0
