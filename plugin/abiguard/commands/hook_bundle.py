"""``abiguard hook-bundle``: write the hook's precompiled bundle (abiguard.bundle).

The packages run it after every installation and upgrade; ``abiguard install`` and the
daemon hook write it too. Without a current bundle the hook works the same, slower."""
from __future__ import annotations

import argparse
import os

from .base import Command


class HookBundle(Command):
    name = "hook-bundle"
    help = "precompile the hook's modules into one file for faster judged hook runs (maintenance)"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--root", default="/", help="below this directory (default: /)")

    def run(self, args: argparse.Namespace) -> int:
        from .. import bundle

        print(f"wrote {bundle.write(os.path.join(args.root, bundle.RELPATH))}")
        return 0
