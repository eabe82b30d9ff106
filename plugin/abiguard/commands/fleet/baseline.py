"""``abiguard fleet baseline [--fleet DIR] [-o FILE]``: the richest contract every host of
the fleet, and every host's previous profile (the rollback), can provide."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ... import arch
from ..base import Command, write
from . import add_common, need_records, open_store


class FleetBaseline(Command):
    name = "baseline"
    help = "the richest contract every host of the fleet (and every host's previous profile) can provide"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output", help="write the baseline here (default: stdout)")
        parser.add_argument("--arch", choices=arch.NAMES, help="the architecture, in a mixed fleet")
        parser.add_argument("--no-rollback", action="store_true",
                            help="leave out the profiles the hosts ran before (their records' previous)")
        parser.add_argument("--rollback-to", action="append", default=[], metavar="PROFILE",
                            help="another profile the fleet may roll back to (repeatable)")
        parser.add_argument("--config", help="arm64 vCPU configuration (default: the richest all have)")
        parser.add_argument("--accept-only", action="append", default=[], metavar="HOST_OR_PROFILE",
                            help="a host (its name: its current profile) or a profile file that needs only to "
                                 "accept VMs of the contract, not to boot them (e.g. a rollback profile): "
                                 "explicit, named in the output and the document (repeatable)")
        lv = parser.add_mutually_exclusive_group()
        lv.add_argument("--libvirt", action="append", default=[], metavar="URI",
                        help="x86: ask these libvirts (baselineHypervisorCPU / compareHypervisorCPU) "
                             "instead of one recorded host per distinct profile")
        lv.add_argument("--no-libvirt", action="store_true", help="x86: the CPU from the profiles alone")
        add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ...fleet import baseline
        from ...model import profile

        store = open_store(args)
        records = need_records(store)
        extra = profile.load_labelled(args.rollback_to)
        hypervisors = self._hypervisors(args, store, records)
        from ...fleet.baseline import label
        from ..baseline import accept_only, emit, print_report

        everyone = list(store.profiles_of(records).values()) + extra
        everyone += [store.profile(r.previous, store.record_path(r.name)) for r in records
                     if r.previous is not None and not args.no_rollback]
        labelled = [p.with_label(label(p)) for p in everyone]
        only = accept_only(args.accept_only, labelled, hosts={r.name: r.profile for r in records})
        doc = baseline.compute(store, records, args.arch, not args.no_rollback, args.config, hypervisors, extra,
                               only)
        if not doc["outcome"]["holds"] or args.json or not args.output:
            return emit(doc, args.output, args.json, "fleet baseline")
        text = json.dumps(doc, sort_keys=True, indent=1) + "\n"
        write(text, args.output)
        c = doc["contract"]
        fleet = doc["fleet"]
        print(f"fleet baseline written to {args.output}: {c['digest']} ({c['arch']}, machine {c.get('machine_type')})")
        print(f"  over {sum(map(len, fleet['hosts'].values()))} host(s) of {len(fleet['hosts'])} profile(s)"
              + (f", and the previous profiles of {sum(map(len, fleet['rollback_of'].values()))} host(s)"
                 if fleet["rollback_of"] else ""))
        print_report(doc)              # per profile, as abiguard baseline says it
        return 0

    @staticmethod
    def _hypervisors(args: argparse.Namespace, store: Any, records: list[Any]) -> list[Any] | None:
        """x86: libvirt's own baseline, asked of one recorded host per distinct profile."""
        from ...errors import UsageError

        if args.no_libvirt:
            return None
        profiles = store.profiles_of(records)
        asking = {name for name, p in profiles.items() if arch.get(p.machine).baseline_asks_libvirt}
        if not asking or (args.arch and not arch.get(args.arch).baseline_asks_libvirt):
            return None
        from ...arch.x86.hypervisor_cpu import HypervisorCpu

        uris = list(args.libvirt)
        if not uris:
            seen: set[str] = set()
            for rec in records:
                if rec.profile in asking and rec.uri and rec.profile not in seen:
                    seen.add(rec.profile)
                    uris.append(rec.uri)
        out = []
        for uri in uris:
            try:
                out.append(HypervisorCpu.open(uri))
            except UsageError as e:
                raise UsageError(f"{str(e).removeprefix('abiguard: ')} (x86 fleet baseline: give --no-libvirt "
                                 "to compute the CPU from the profiles alone, or --libvirt URI)") from None
        return out or None
