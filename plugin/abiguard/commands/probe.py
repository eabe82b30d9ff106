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
        parser.add_argument("--no-publish", action="store_true",
                            help="do not publish the profile to the fleet directory ([fleet] dir in abiguard.toml)")

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
        if not args.no_publish:
            # a probe with a fleet directory configured publishes what it found; a fleet
            # that cannot take it is reported, never a failed probe
            from ..fleet.publish import publish_configured

            line = publish_configured(doc, args.output or "probe", "probe")
            if line is not None:
                print(f"abiguard probe: {line}", file=sys.stderr)
        return 0
