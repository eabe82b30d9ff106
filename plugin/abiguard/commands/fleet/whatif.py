"""``abiguard fleet whatif --host H --as PROFILE``: what would change if host H ran the
kernel and QEMU of PROFILE (a file, a digest in the fleet directory, or ``previous``)."""
from __future__ import annotations

import argparse

from ..base import Command, print_json
from . import add_common, add_contract_sources, contracts, need_records, open_store, read_vms


class FleetWhatif(Command):
    name = "whatif"
    help = ("if host H ran PROFILE: which VMs could no longer come to it or leave it, which contracts it "
            "would stop realising (exit 1 if any)")

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--host", required=True, help="the host, by its record's name")
        parser.add_argument("--as", dest="as_profile", required=True, metavar="PROFILE",
                            help="a profile file, a digest in the fleet directory (sha256:...), or 'previous' "
                                 "(the profile the host ran before its last publish)")
        add_contract_sources(parser)
        add_common(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ...errors import EXIT_REFUSE, UsageError, printable
        from ...fleet import whatif
        from ...fleet.judge import Judge
        from ...model import profile
        from ...model.fields import is_digest

        store = open_store(args)
        records = need_records(store)
        host = next((r for r in records if r.name == args.host), None)
        if host is None:
            raise UsageError(f"no host {printable(args.host, 80)!r} in {store.root} (abiguard fleet hosts lists them)")
        if args.as_profile == "previous":
            if host.previous is None:
                raise UsageError(f"{host.name} has published one profile only: there is no previous one")
            new = store.profile(host.previous, store.record_path(host.name))
        elif is_digest(args.as_profile):
            new = store.profile(args.as_profile, "--as")
        else:
            new = profile.load(args.as_profile)
        profiles = store.profiles_of(records)
        vms, _errors = read_vms(args, records)
        doc = whatif.whatif(host, new, records, profiles, vms, contracts(args, vms), Judge())
        if args.json:
            print_json(doc, "fleet-whatif")
        else:
            print("\n".join(whatif.lines(doc)))
        return EXIT_REFUSE if whatif.harmful(doc) else 0
