"""``abiguard matrix``: for every ordered pair of hosts, keeps / pin first / cannot."""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .base import Command, print_json, qemu_version

if TYPE_CHECKING:
    from ..model.profile import Profile


class Matrix(Command):
    name = "matrix"
    help = ("for every ordered pair of hosts: does a VM keep its guest ABI, need pinning first, "
            "or can it not move at all?")

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("profiles", nargs="*", metavar="PROFILE",
                            help="host profiles (default: the bundled real arm64 kernels, -cpu max)")
        parser.add_argument("--all-builtin", action="store_true",
                            help="include the bundled hosts with other emulated CPUs")
        parser.add_argument("--qemu", metavar="VERSION",
                            help="destination QEMU version where a profile does not name one "
                                 "(the bundled arm64 profiles do not), e.g. 7.2 or 11.1")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from ..arch import get
        from ..builtin import builtin_profiles
        from ..model import profile

        paths = args.profiles or [p for p in builtin_profiles()
                                  if args.all_builtin or p.endswith("-arm64.json")]
        if len(paths) < 2:
            raise UsageError("matrix needs at least two host profiles")
        hosts = [profile.load(p) for p in paths]
        names = [os.path.basename(p).removesuffix(".json") for p in paths]
        # profiles without a QEMU version (the lab's KVM-only ones) get one table per
        # released QEMU rule: whether a move works depends on the destination's QEMU
        unnamed = any(h.qemu_version() is None for h in hosts)
        versions: list[tuple[str, tuple[int, ...] | None]]
        if args.qemu:
            versions = [(f"destination QEMU {args.qemu}", qemu_version(args.qemu))]
        elif unnamed and len({h.machine for h in hosts}) == 1 and get(hosts[0].machine).qemu_rules():
            versions = [(f"destination {name}", since) for name, since in get(hosts[0].machine).qemu_rules()]
        else:
            versions = [("destination QEMU as profiled", None)]
        tables = {label: self._cells(names, hosts, version) for label, version in versions}
        if args.json:
            print_json({"tables": {label: {f"{s} -> {d}": c for (s, d), c in cells.items()}
                                    for label, cells in tables.items()}}, "matrix")
            return 0
        print("Can a VM booted on SOURCE (QEMU -cpu host defaults) move to DEST with its guest ABI unchanged?")
        print("  keeps     = yes, exactly")
        print("  pin first = only after pinning the VM to a contract both hosts realise (abiguard baseline + pin)")
        print("  cannot    = no pin helps: the register named is why")
        reasons: dict[str, str] = {}
        for label, cells in tables.items():
            print(f"\n{label}:")
            self._print(names, cells, reasons)
        print()
        for line in reasons.values():
            print(f"  {line}")
        return 0

    @staticmethod
    def _cells(names: list[str], hosts: list[Profile], qemu: tuple[int, ...] | None
               ) -> dict[tuple[str, str], dict[str, Any]]:
        from ..fleet.matrix import cell

        cells: dict[tuple[str, str], dict[str, Any]] = {}
        for sname, src in zip(names, hosts):
            for dname, dst in zip(names, hosts):
                if sname != dname:
                    cells[(sname, dname)] = cell(src, dst, qemu)
        return cells

    @staticmethod
    def _print(names: list[str], cells: dict[tuple[str, str], dict[str, Any]], reasons: dict[str, str]) -> None:
        short = [n.split("-arm64")[0].split("+")[0] + n.split("-arm64")[1] if "-arm64" in n else n for n in names]
        texts = {k: c["state"] if c["state"] != "cannot" else f"cannot:{c['register']}" for k, c in cells.items()}
        # every cell whole: the column is as wide as its widest entry
        width = max(24, *(len(x) + 2 for x in short), *(len(t) + 2 for t in texts.values()))
        print(("source \\ dest".ljust(width) + "".join(x.ljust(width) for x in short)).rstrip())
        for sname, sshort in zip(names, short):
            row = sshort.ljust(width)
            for dname in names:
                if sname == dname:
                    row += "-".ljust(width)
                    continue
                c = cells[(sname, dname)]
                if c["state"] == "cannot":
                    reasons.setdefault(f"{c['register']}", c["reason"])
                row += texts[(sname, dname)].ljust(width)
            print(row.rstrip())
