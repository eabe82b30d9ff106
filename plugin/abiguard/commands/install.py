"""``abiguard install`` and ``abiguard uninstall``: the hooks, the config, the library."""
from __future__ import annotations

import argparse
import sys

from .base import Command


class Install(Command):
    name = "install"
    help = "install the libvirt hooks, the default config and this host's profile"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--root", default="/", help="install below this directory (default: /)")
        parser.add_argument("--python", help="interpreter for the hook scripts (default: this one)")
        parser.add_argument("--no-probe", action="store_true", help="do not probe this host now")

    def run(self, args: argparse.Namespace) -> int:
        from .. import install

        for path in install.install(args.root, args.python, probe=not args.no_probe):
            print(f"installed {path}")
        print(install.RESTART_NOTE, file=sys.stderr)
        return 0


class Uninstall(Command):
    name = "uninstall"
    help = "remove abiguard's libvirt hooks (files that are not abiguard's are left alone)"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--root", default="/")
        parser.add_argument("--purge", action="store_true", help="also remove config, state and logs")

    def run(self, args: argparse.Namespace) -> int:
        from .. import install

        for path in install.uninstall(args.root, args.purge):
            print(f"removed {path}")
        return 0
