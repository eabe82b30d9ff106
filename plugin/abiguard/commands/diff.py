"""``abiguard diff``: every guest-ABI difference between two hosts, both directions."""
from __future__ import annotations

import argparse

from .base import Command, print_json, print_verdict


class Diff(Command):
    name = "diff"
    help = "every guest-ABI difference between two host profiles, both directions"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("a")
        parser.add_argument("b")
        parser.add_argument("--config", help="arm64 vCPU configuration (default: the richest both have)")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from ..arch import get
        from ..engine import verdict
        from ..model import contract, profile

        a, b = profile.load(args.a), profile.load(args.b)
        config = args.config
        if config is None and a.machine == b.machine:
            config = get(a.machine).common_config([a, b])
        out = {}
        for label, src, dst in (("a_to_b", a, b), ("b_to_a", b, a)):
            out[label] = verdict.check(contract.from_profile(src, config), dst, per_qemu=True)
        if args.json:
            print_json({k: v.to_json() for k, v in out.items()}, "diff")
        else:
            print_verdict(out["a_to_b"], False, f"{args.a} -> {args.b}")
            print_verdict(out["b_to_a"], False, f"{args.b} -> {args.a}")
        return 0 if all(v.allow for v in out.values()) else 1
