"""``abiguard probe``: this host's profile."""
from __future__ import annotations

import argparse
import sys

from .base import Command


class Probe(Command):
    name = "probe"
    help = "read what this host's KVM, QEMU and libvirt offer a guest; write a host profile"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output", help="write the profile here (default: stdout)")
        parser.add_argument("--kvm-only", action="store_true",
                            help="skip QEMU and libvirt (what the arm64 lab's initramfs does)")
        parser.add_argument("--device", default="/dev/kvm", help="KVM device (default: %(default)s)")

    def run(self, args: argparse.Namespace) -> int:
        from ..model.profile import render, save
        from ..probe.host import probe_host

        doc = probe_host(with_stack=not args.kvm_only, device=args.device)
        if args.output in (None, "-"):
            sys.stdout.write(render(doc))
        else:
            save(doc, args.output)  # with the hook's view of it
        for item in doc["unavailable"]:
            print(f"abiguard probe: not available: {item['what']}: {item['error']} {item['detail']}".rstrip(),
                  file=sys.stderr)
        return 0
