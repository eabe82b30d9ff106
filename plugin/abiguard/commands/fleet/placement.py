"""``abiguard fleet publish-placement --url URL``: one custom trait per fleet contract on
each compute node's resource provider in OpenStack Placement (:mod:`abiguard.fleet.placement`)."""
from __future__ import annotations

import argparse

from ..base import Command, print_json
from . import add_common, add_contract_sources, contracts, need_records, open_store, read_vms


class FleetPlacement(Command):
    name = "publish-placement"
    help = ("give each compute node's Placement resource provider a CUSTOM_ABIGUARD_<id> trait per fleet "
            "contract it realises now, and remove those that no longer hold")

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", required=True, help="the Placement endpoint, e.g. http://controller:8778")
        parser.add_argument("--token", help="a Keystone token (default: $OS_TOKEN; none for a noauth Placement)")
        add_contract_sources(parser)
        add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        import os

        from ...fleet import names, placement
        from ...fleet.contracts import realised
        from ...fleet.judge import Judge

        client = placement.Client(args.url, args.token or os.environ.get("OS_TOKEN") or None)
        store = open_store(args)
        records = need_records(store)
        vms, _errors = read_vms(args, records)
        fleet = contracts(args, vms)
        held = realised(records, store.profiles_of(records), fleet, Judge())
        report = placement.publish(client, held)
        report["contracts"] = {names.trait(d): fc.sources for d, fc in sorted(fleet.items())}
        if args.json:
            print_json(report, "fleet-publish-placement")
            return 0
        print(f"Placement at {report['url']}: {len(fleet)} fleet contract(s), {len(report['providers'])} provider(s) "
              f"changed, {report['unchanged']} unchanged")
        for t, sources in report["contracts"].items():
            print(f"  {t}: {', '.join(sources[:3])}" + (f" and {len(sources) - 3} more" if len(sources) > 3 else ""))
        for c in report["providers"]:
            print(f"  {c['provider']}: +{len(c['added'])} -{len(c['removed'])}"
                  + (f" (after {c['attempts'] - 1} conflict(s))" if c["attempts"] > 1 else ""))
        for h in report["hosts_without_provider"]:
            print(f"  {h}: no resource provider of that name")
        return 0
