"""``abiguard fleet labels``: Kubernetes node labels (``abiguard.io/contract-<id>: "true"``)
for the contracts each node realises, as YAML for server-side apply or kubectl lines."""
from __future__ import annotations

import argparse

from ..base import Command, print_json
from . import add_common, add_contract_sources, contracts, need_records, open_store, read_vms


class FleetLabels(Command):
    name = "labels"
    help = ("node labels abiguard.io/contract-<id>=true for KubeVirt: YAML for kubectl apply --server-side "
            "--field-manager=abiguard, or --kubectl lines")

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--kubectl", action="store_true", help="kubectl label lines instead of YAML")
        add_contract_sources(parser)
        add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        import sys

        from ...fleet import kube
        from ...fleet.contracts import realised
        from ...fleet.judge import Judge

        store = open_store(args)
        records = need_records(store)
        vms, _errors = read_vms(args, records)
        fleet = contracts(args, vms)
        nodes, skipped = kube.node_labels(realised(records, store.profiles_of(records), fleet, Judge()), list(fleet))
        for host in skipped:
            print(f"abiguard: fleet labels: {host} is not a Kubernetes node name (lowercase DNS name): skipped",
                  file=sys.stderr)
        if args.json:
            print_json(kube.to_json(nodes, skipped), "fleet-labels")
        elif args.kubectl:
            print("\n".join(kube.kubectl(nodes)))
        else:
            sys.stdout.write(kube.yaml(nodes))
        return 0
