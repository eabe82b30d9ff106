"""``abiguard baseline``: the richest contract every host (and rollback host) provides."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .base import Command, write


class Baseline(Command):
    name = "baseline"
    help = "the richest contract every listed host (and every rollback host) can provide"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("profiles", nargs="+", metavar="PROFILE")
        parser.add_argument("--rollback-to", action="append", default=[], metavar="PROFILE",
                            help="a host the fleet may roll back to (repeatable)")
        parser.add_argument("--config", help="arm64 vCPU configuration (default: the richest all have)")
        parser.add_argument("--libvirt", action="append", default=[], metavar="URI",
                            help="a fleet host's libvirt (repeatable): x86 asks the oldest for the baseline "
                                 "CPU (baselineHypervisorCPU) and every one to confirm it (compareHypervisorCPU); "
                                 "default: this host's libvirt, if it answers")
        parser.add_argument("--no-libvirt", action="store_true",
                            help="compute the x86 CPU from the profiles alone")
        parser.add_argument("--cpu", help="arm64, several CPU models: the CPU the guest is shown (a MIDR, a "
                                          "model such as cortex-a57, or a PROFILE given); default: the first host's")
        parser.add_argument("-o", "--output", help="write the baseline here (default: stdout)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from .. import arch
        from ..engine import baseline
        from ..model import profile

        verified: dict[str, profile.Profile] = {}
        profiles = profile.load_labelled(args.profiles, verified)
        rollback = profile.load_labelled(args.rollback_to, verified)
        hypervisors = None
        if any(arch.get(p.machine).baseline_asks_libvirt for p in profiles + rollback) and not args.no_libvirt:
            from ..arch.x86.hypervisor_cpu import HypervisorCpu

            if args.libvirt:
                hypervisors = [HypervisorCpu.open(uri) for uri in args.libvirt]
            else:
                hypervisors = HypervisorCpu.local()
        result = baseline.compute(profiles, rollback, args.config, hypervisors)
        _shown_cpu(result, args.cpu, baseline.unique(profiles + rollback))
        text = json.dumps(result, sort_keys=True, indent=1) + "\n"
        if args.output:
            write(text, args.output)
        if args.json or not args.output:
            sys.stdout.write(text)
        else:
            c = result["contract"]
            body = c[c["arch"]]
            print(f"baseline over {len(result['hosts'])} distinct host(s): {c['arch']} "
                  f"machine {c.get('machine_type')}, {body.get('config', body.get('cpu_model'))}")
            print_report(result)
        return 0


def _shown_cpu(result: dict[str, Any], cpu: str | None, everyone: list[Any]) -> None:
    """--cpu: the contract re-sealed showing the chosen CPU, each host's answer again; and
    what the arch says of the CPU shown (arm64: ``older_guests``, what a guest kernel
    without errata discovery misses)."""
    from ..arch import get
    from ..engine.baseline import host_report
    from ..model.contract import Contract

    sealed = Contract.from_json(result["contract"], "the baseline")
    arch = get(sealed.arch)
    if cpu is not None:
        sealed = arch.show_cpu(sealed, cpu, everyone)
        result["contract"] = sealed.to_json()
        result["hosts"] = {p.label: host_report(sealed, p) for p in everyone}
    notes = arch.cpu_notes(sealed)
    if "older_guests" in notes:
        result["older_guests"] = notes["older_guests"]


def print_report(doc: dict[str, Any]) -> None:
    """The conflicts, what each libvirt said and each host's answer, as ``baseline`` and
    ``fleet baseline`` print them."""
    for conflict in doc["conflicts"]:
        print(f"  conflict: {conflict}")
    for note in doc.get("older_guests", []):
        print(f"  older guests: {note}")
    for uri, v in sorted(doc.get("libvirt", {}).items()):
        print(f"  libvirt {v['libvirt']} at {uri}: compareHypervisorCPU says {v['compare']}"
              + (f" ({v['reason']})" if v.get("reason") else ""))
    for host, rep in sorted(doc["hosts"].items()):
        state = "accepts" if rep["accepts_incoming"] else "REFUSES"
        print(f"  {host}: {state} VMs with this contract"
              + (f"; cannot pin {len(rep.get('cannot_pin', []))} item(s)" if rep.get("cannot_pin") else ""))
        # a reason that stops both the arrival and the start is said once
        for line in dict.fromkeys(rep["incoming_problems"][:3] + rep.get("cannot_pin", [])[:3]):
            print(f"      {line}")
