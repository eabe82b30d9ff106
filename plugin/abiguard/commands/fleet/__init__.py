"""``abiguard fleet ...``: the fleet directory's commands (:mod:`abiguard.fleet`), one module
per subcommand; this module is their registry and what they share (the fleet directory,
the VMs read through the hosts' libvirt, the fleet's contracts)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..base import Command

if TYPE_CHECKING:
    from ...fleet.contracts import FleetContract
    from ...fleet.record import HostRecord
    from ...fleet.store import Store
    from ...fleet.vms import FleetVm


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", metavar="DIR", help="the fleet directory (default: [fleet] dir in abiguard.toml)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def add_contract_sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contract", action="append", default=[], metavar="FILE",
                        help="a contract or baseline file to count among the fleet's contracts (repeatable)")
    parser.add_argument("--no-vms", action="store_true",
                        help="do not read the VMs' contracts through the hosts' libvirt")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for the hosts' libvirt (default: %(default)s)")


def open_store(args: argparse.Namespace) -> Store:
    from ...fleet.store import Store

    return Store.open(args.fleet)


def need_records(store: Store) -> list[HostRecord]:
    from ...errors import UsageError

    records = store.records()
    if not records:
        raise UsageError(f"no host has published to {store.root} yet: run abiguard fleet publish on the hosts, "
                         "or abiguard fleet pull HOST...")
    return records


def read_vms(args: argparse.Namespace, records: list[HostRecord]) -> tuple[list[FleetVm], dict[str, str]]:
    if getattr(args, "no_vms", False):
        return [], {}
    from ...fleet.vms import collect

    vms, errors = collect(records, args.timeout)
    for host, why in sorted(errors.items()):
        print(f"abiguard: fleet: host {host}: VMs not read: {why}", file=sys.stderr)
    return vms, errors


def contracts(args: argparse.Namespace, vms: list[FleetVm]) -> dict[str, FleetContract]:
    from ...fleet.contracts import gather

    return gather(args.contract, vms)


class Fleet(Command):
    name = "fleet"
    help = "the fleet directory: publish and pull host profiles; baseline, matrix, status and what-if over them"

    def __init__(self) -> None:
        from .baseline import FleetBaseline
        from .hosts import FleetHosts
        from .labels import FleetLabels
        from .matrix import FleetMatrix
        from .placement import FleetPlacement
        from .publish import FleetPublish
        from .pull import FleetPull
        from .status import FleetStatus
        from .whatif import FleetWhatif

        self.subcommands: dict[str, Command] = {c.name: c for c in (
            FleetPublish(), FleetPull(), FleetHosts(), FleetBaseline(), FleetMatrix(), FleetStatus(),
            FleetWhatif(), FleetPlacement(), FleetLabels())}

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
        for command in self.subcommands.values():
            p = sub.add_parser(command.name, help=command.help, description=command.help)
            command.configure_parser(p)
        self._parser = parser

    def run(self, args: argparse.Namespace) -> int:
        from ...errors import EXIT_USAGE

        if not args.fleet_command:
            self._parser.print_help(sys.stderr)
            return EXIT_USAGE
        return self.subcommands[args.fleet_command].run(args)
