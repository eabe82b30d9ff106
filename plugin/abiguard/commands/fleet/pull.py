"""``abiguard fleet pull HOST...``: fetch hosts' profiles over SSH into the fleet directory."""
from __future__ import annotations

import argparse

from ..base import Command, print_json
from . import add_common, open_store


class FleetPull(Command):
    name = "pull"
    help = "fetch hosts' profiles over ssh (ssh HOST cat /var/lib/abiguard/host-profile.json) and publish them"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        from ...fleet.pull import DEFAULT_TIMEOUT, REMOTE_PROFILE

        parser.add_argument("hosts", nargs="+", metavar="HOST", help="[user@]host, as ssh takes it")
        parser.add_argument("--ssh-config", metavar="FILE", help="ssh -F FILE (default: your own ssh set-up)")
        parser.add_argument("--path", default=REMOTE_PROFILE, help="the profile on the hosts (default: %(default)s)")
        parser.add_argument("--uri", metavar="TEMPLATE",
                            help="libvirt URI to record, {host} standing for the host, e.g. qemu+ssh://{host}/system "
                                 "(default: keep what the record says)")
        parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                            help="per host (default: %(default)s)")
        add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        import sys

        from ...errors import EXIT_REFUSE, EXIT_USAGE
        from ...fleet.pull import pull

        store = open_store(args)
        results = pull(store, args.hosts, args.path, args.ssh_config, args.uri, args.timeout)
        if args.json:
            print_json({"hosts": [{"host": r.dest, "record": r.published.record.to_json() if r.published else None,
                                   "error": r.error, "bad_input": r.bad} for r in results]}, "fleet-pull")
        for r in results:
            if r.published is not None:
                if not args.json:
                    rec = r.published.record
                    print(f"pulled {r.dest}: {rec.profile}" + (" (new profile)" if r.published.wrote_profile else ""))
            else:
                print(f"abiguard: fleet pull: host {r.dest}: {r.error}", file=sys.stderr)
        if any(r.bad for r in results):
            return EXIT_USAGE
        return EXIT_REFUSE if any(r.error for r in results) else 0
