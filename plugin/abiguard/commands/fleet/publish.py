"""``abiguard fleet publish [--fleet DIR] [--host NAME] [--uri URI] [PROFILE]``: store a
host profile in the fleet directory and point the host's record at it (the record keeps
the profile it named before as ``previous``)."""
from __future__ import annotations

import argparse

from ..base import Command, print_json
from . import add_common, open_store


class FleetPublish(Command):
    name = "publish"
    help = "publish a host profile (default: this host's) into the fleet directory"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("profile", nargs="?", metavar="PROFILE",
                            help="the profile (default: this host's, /var/lib/abiguard/host-profile.json)")
        parser.add_argument("--host", help="the host's name (default: [fleet] host, else this host's node name)")
        parser.add_argument("--uri", help="the libvirt URI its VMs are read through, e.g. qemu+ssh://NAME/system "
                                          "(default: [fleet] uri, else what its record says)")
        add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ... import state
        from ...fleet.publish import publish
        from ...model import profile
        from ...model.config import Config

        path = args.profile or state.PROFILE
        doc = profile.load(path).doc
        assert doc is not None
        store = open_store(args)
        done = publish(store, doc, path, Config.load(), args.host, args.uri)
        rec = done.record
        if args.json:
            print_json({"record": rec.to_json(), "profile_written": done.wrote_profile, "repaired": done.repaired,
                        "replaced_bad_record": done.replaced_bad_record}, "fleet-publish")
            return 0
        print(f"published {path} to {store.root} as {rec.name}: {rec.profile}"
              + (" (new profile there)" if done.wrote_profile else " (profile already there)"))
        if rec.previous:
            print(f"  previous profile kept: {rec.previous}")
        if done.repaired:
            print(f"  replaced a damaged {store.profile_path(rec.profile)}")
        if done.replaced_bad_record:
            print(f"  replaced {store.record_path(rec.name)}, which was not a readable record")
        return 0
