"""``abiguard fleet matrix [--svg FILE]``: who can go where, one row and column per distinct
profile of the fleet."""
from __future__ import annotations

import argparse

from ..base import Command, print_json, qemu_version, write
from . import add_common, need_records, open_store


class FleetMatrix(Command):
    name = "matrix"
    help = "who can go where in the whole fleet, hosts grouped by profile (--svg draws it)"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--svg", metavar="FILE", help="also draw it as an SVG picture (hover a cell: its reason)")
        parser.add_argument("--qemu", metavar="VERSION",
                            help="destination QEMU version where a profile does not name one, e.g. 7.2")
        add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ...fleet import matrix, render

        store = open_store(args)
        records = need_records(store)
        gs = matrix.groups(records, store.profiles_of(records))
        table = matrix.cells(gs, qemu_version(args.qemu))
        if args.svg:
            write(render.svg(gs, table, f"abiguard fleet matrix: {len(records)} hosts, {len(gs)} profiles"),
                  args.svg)
        if args.json:
            print_json(matrix.to_json(gs, table), "fleet-matrix")
        else:
            print("\n".join(matrix.lines(gs, table)))
            if args.svg:
                print(f"\ndrawn in {args.svg}")
        return 0
