"""``abiguard pin``: write a contract (and what realises it) into a domain's persistent
definition, through libvirt."""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from ..errors import Refusal, UsageError, printable
from .base import Command, print_json

if TYPE_CHECKING:
    from ..model.contract import Contract


class Pin(Command):
    name = "pin"
    help = "write a guest ABI contract (and what realises it) into a domain's persistent definition"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("domain")
        src = parser.add_mutually_exclusive_group()
        src.add_argument("--baseline", help="a baseline (or contract) file from 'abiguard baseline'")
        src.add_argument("--profile", help="pin to what a VM booted on this profile's host has")
        parser.add_argument("--cpu", help="arm64, several CPU models: the CPU the guest is shown, one of the "
                                          "contract's (a MIDR, a model such as cortex-a57, or a host's profile file)")
        parser.add_argument("-c", "--connect", help="libvirt URI (default: libvirt's default)")
        parser.add_argument("--host-profile", default="/var/lib/abiguard/host-profile.json",
                            help="this host's profile, used when neither --baseline nor --profile is given")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from ..model import contract, profile

        sealed = None
        if args.baseline:
            from ..engine.baseline import load_contract_or_profile

            sealed = load_contract_or_profile(args.baseline, written_only=True)
        elif args.profile:
            sealed = contract.from_profile(profile.load(args.profile))
        if sealed is not None and sealed.origin.kind == contract.SEEN:
            raise UsageError(f"{printable(args.baseline, 200)}: a contract of origin 'seen' is what the hook "
                             "recorded an unpinned VM booted with, not one to pin: pin to a baseline (abiguard "
                             "baseline) or a profile")
        if args.cpu is not None:
            sealed = _shown_cpu(sealed, args.cpu)
        report = pin(args.connect, args.domain, sealed, args.host_profile)
        if args.json:
            print_json(report, "pin")
        else:
            print(f"pinned {report['domain']} to {report['contract']} ({report['arch']}); {report['note']}")
            for line in report["pinned"]:
                print(f"  pinned: {line}")
            for line in report["cannot_pin"]:
                print(f"  cannot pin: {line}")
            if report.get("cpu"):
                print(f"  cpu: {report['cpu']}")
            for line in report.get("older_guests", []):
                print(f"  older guests: {line}")
        return 0


def _shown_cpu(sealed: Contract | None, cpu: str) -> Contract:
    """--cpu: the contract re-sealed showing that CPU (one the contract tells the guest)."""
    from ..arch import get
    from ..model import profile

    if sealed is None:
        raise UsageError("--cpu chooses among the CPUs a contract tells the guest: give it with --baseline")
    # a host's profile names that host's CPU
    hosts = [profile.load(cpu).with_label(cpu)] if os.path.isfile(cpu) else []
    return get(sealed.arch).show_cpu(sealed, cpu, hosts)


def pin(uri: str | None, name: str, sealed: Contract | None, profile_path: str) -> dict[str, Any]:
    import libvirt

    from ..arch import get
    from ..connection import connect
    from ..model import profile as profile_mod
    from ..xml.edit import apply, parser

    conn = connect(uri)
    try:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            raise UsageError(f"no domain named {name!r} at {conn.getURI()}") from None
        if not dom.isPersistent():
            raise UsageError(f"domain {name!r} is transient: define it first (virsh define) so the pin persists")
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        # this host's profile: to derive a contract, and for arm64 to plan register pins;
        # an x86 contract given as a file needs none (libvirt and QEMU realise it)
        host = None
        if sealed is None or get(sealed.arch).uses_preload:
            host = profile_mod.load(profile_path)
        elif os.path.exists(profile_path):       # x86: to say which PV features QEMU adds here
            host = profile_mod.load(profile_path)
        if sealed is None:
            assert host is not None
            from lxml import etree

            sealed = get(host.machine).domain_contract(etree.fromstring(xml.encode(), parser()), host)
        refused = get(sealed.arch).verify_pin(conn, conn.getURI(), sealed)
        if refused:
            raise Refusal(f"abiguard: not pinning {name!r} to {sealed.digest[:19]}: {refused}")
        new_xml, notes, cannot = apply(xml, sealed, host)
        try:
            conn.defineXML(new_xml)
        except libvirt.libvirtError as e:
            raise UsageError(f"libvirt refused the pinned definition of {name!r}: {e}") from None
        return {"domain": name, "contract": sealed.digest, "arch": sealed.arch,
                "pinned": notes, "cannot_pin": cannot, **get(sealed.arch).cpu_notes(sealed),
                "note": (f"this host cannot start it with this contract ({len(cannot)} reason(s) below; the "
                         "hook refuses a start here): start it on a host that realises the contract"
                         if cannot else "takes effect at the next start" if dom.isActive() else
                         "takes effect at start")}
    finally:
        conn.close()
