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
        parser.add_argument("--accept-only", action="append", default=[], metavar="PROFILE",
                            help="a listed host (its profile path as given) that needs only to accept VMs of "
                                 "the contract, not to boot them (e.g. a rollback host): explicit, named in "
                                 "the output and the document (repeatable)")
        parser.add_argument("--qemu", metavar="VERSION",
                            help="the fleet's QEMU version where a profile does not name one (the bundled arm64 "
                                 "profiles do not), e.g. 7.2 or 11.1; default: the strict model, which fails "
                                 "wherever any released QEMU could")
        parser.add_argument("-o", "--output", help="write the baseline here (default: stdout)")
        parser.add_argument("--json", action="store_true",
                            help="print the baseline document, its outcome in it, even when it is refused")

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
        only = accept_only(args.accept_only, profiles + rollback, verified)
        from .base import qemu_version

        result = baseline.compute(profiles, rollback, args.config, hypervisors, only,
                                  qemu=qemu_version(args.qemu) if args.qemu else None, cpu=args.cpu)
        return emit(result, args.output, args.json,
                    f"baseline over {len(result['hosts'])} distinct host(s)")


def accept_only(names: list[str], profiles: list[Any], verified: dict[str, Any] | None = None,
                hosts: dict[str, str] | None = None) -> frozenset[str]:
    """The digests ``--accept-only`` names: a profile as listed (its path or label), another
    path to the same profile, or (``hosts``: fleet host name -> its profile digest) a host."""
    from ..errors import UsageError
    from ..model import profile

    by_label = {p.label: p.digest for p in profiles}
    out = set()
    for name in names:
        if name in by_label:
            out.add(by_label[name])
        elif hosts is not None and name in hosts:
            out.add(hosts[name])
        else:
            import os

            if not os.path.isfile(name):
                raise UsageError(f"--accept-only: {name!r} is neither a listed host nor a profile file"
                                 .replace("\n", " "))
            out.add(profile.load(name, verified).digest)
    return frozenset(out)


def emit(doc: dict[str, Any], output: str | None, as_json: bool, title: str) -> int:
    """The document, written (``-o``) and printed only when its contract holds; a refusal's
    reasons otherwise, exit 1. ``--json`` prints the document, its outcome in it, either way."""
    from ..engine.baseline import refusal_lines

    ok = doc["outcome"]["holds"]
    text = json.dumps(doc, sort_keys=True, indent=1) + "\n"
    if ok and output:
        write(text, output)
    if as_json:
        sys.stdout.write(text)
        if not ok:
            for line in refusal_lines(doc):
                print(line, file=sys.stderr)
        return 0 if ok else 1
    if not ok:
        for line in refusal_lines(doc):
            print(line)
        return 1
    if not output:
        sys.stdout.write(text)
        return 0
    c = doc["contract"]
    body = c[c["arch"]]
    print(f"{title}: {c['arch']} machine {c.get('machine_type')}, {body.get('config', body.get('cpu_model'))}"
          f"; written to {output}")
    if doc.get("qemu_where_unnamed"):
        print(f"  arrivals judged for QEMU {doc['qemu_where_unnamed']} where a profile names no QEMU (--qemu)")
    print_report(doc)
    return 0


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
        boots = "boots" if rep["boots_with_contract"] else "cannot boot"
        print(f"  {host}: accepts and {boots} VMs with this contract"
              + ("" if rep.get("must_boot", True) else " (--accept-only: it need only accept them)"))
        for line in rep["why_not_booted"][:3]:
            print(f"      {line}")
