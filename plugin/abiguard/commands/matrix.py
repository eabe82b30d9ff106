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
        from ..fleet.matrix import grid, note_lines, reason_lines

        print("Can a VM booted on SOURCE (QEMU -cpu host defaults) move to DEST with its guest ABI unchanged?")
        print("  keeps     = yes, exactly")
        print("  pin first = only after pinning the VM to a contract both hosts realise (the pins are named)")
        print("  cannot    = no pin helps (the register and both values are named)")
        print("Below each table one line per cell that does not keep the ABI; [n]: the notes at the end.")
        short = dict(zip(names, _short(names)))
        notes: dict[str, int] = {}
        for label, cells in tables.items():
            print(f"\n{label}:")
            rows = [short[n] for n in names]
            for line in grid(rows, rows, {(short[s], short[d]): c["state"] for (s, d), c in cells.items()},
                             "source \\ dest"):
                print(line)
            print()
            for line in reason_lines([(short[s], short[d], cells[(s, d)]) for s in names for d in names
                                      if s != d], notes):
                print(line)
        print()
        for line in note_lines(notes):
            print(line)
        return 0

    @staticmethod
    def _cells(names: list[str], hosts: list[Profile], qemu: tuple[int, ...] | None
               ) -> dict[tuple[str, str], dict[str, Any]]:
        from ..fleet.matrix import cell

        return {(sname, dname): cell(src, dst, qemu) for sname, src in zip(names, hosts)
                for dname, dst in zip(names, hosts) if sname != dname}


def _short(names: list[str]) -> list[str]:
    """6.12.117+deb13-arm64-cortex-a72 -> 6.12.117-cortex-a72: the kernel's version and what
    follows the arch, when every name still differs; else the names as given."""
    short = [n.split("-arm64")[0].split("+")[0] + n.split("-arm64")[1] if "-arm64" in n else n for n in names]
    return short if len(set(short)) == len(short) else names
