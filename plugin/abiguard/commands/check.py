"""``abiguard check``: will a VM keep its guest ABI moving from S to D?"""
from __future__ import annotations

import argparse

from .base import Command, print_verdict, qemu_version


class Check(Command):
    name = "check"
    help = "will a VM keep its guest ABI when it moves from S to D? (exit 0 allow, 1 refuse)"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--from", dest="source", required=True,
                            help="source: a host profile, a contract or a baseline file")
        parser.add_argument("--to", dest="dest", required=True, help="destination host profile")
        parser.add_argument("--config", help="arm64 vCPU configuration, e.g. psci+pmu (default: "
                            "every feature the source offers, as -cpu host does)")
        parser.add_argument("--allow-widening", action="store_true",
                            help="accept a destination that adds guest-visible registers")
        parser.add_argument("--qemu", metavar="VERSION",
                            help="destination QEMU version where its profile does not name one, e.g. 7.2")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from ..engine import verdict
        from ..engine.baseline import load_contract_or_profile
        from ..model import profile
        from ..model.problem import Policy

        source = load_contract_or_profile(args.source, args.config)
        dest = profile.load(args.dest)
        v = verdict.check(source, dest, Policy(allow_widening=args.allow_widening, qemu=qemu_version(args.qemu)),
                          per_qemu=True)
        print_verdict(v, args.json, f"{args.source} -> {args.dest}")
        return 0 if v.allow else 1
