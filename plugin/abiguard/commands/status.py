"""``abiguard status``: every domain, its contract, and where it may move."""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .base import Command, print_json

if TYPE_CHECKING:
    from ..model.profile import Profile


class Status(Command):
    name = "status"
    help = "every domain, its contract, and which of the given hosts it may move to"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("profiles", nargs="*", metavar="PROFILE", help="candidate destination hosts")
        parser.add_argument("-c", "--connect", help="libvirt URI")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from ..model import profile

        hosts = profile.load_labelled(args.profiles)
        rows = status(args.connect, hosts)
        if args.json:
            print_json({"domains": rows}, "status")
            return 0
        for row in rows:
            print(f"{row['domain']}: {row['state']}, contract {row['contract']}")
            for key in ("unpinned", "cpu", "running_on_profile", "enforced"):
                if key in row:
                    print(f"  {key.replace('_', ' ')}: {row[key]}")
            if "may_move_to" in row and hosts:
                print(f"  may move to: {', '.join(row['may_move_to']) or 'none of the given hosts'}")
        return 0


def _enforced(arch: str, qemu_env: dict[str, Any]) -> str:
    """How the contract is realised, as ``status`` says it."""
    from ..arch import get
    from ..model.pins import parse_env, parse_env_cpus
    from ..preload import ENV_PINS

    if not get(arch).uses_preload:
        return "machine type and CPU model/features by libvirt"
    from ..arch.arm64.regs import reg_name

    try:
        text = qemu_env.get(ENV_PINS, ("", None))[0]
        pins, cpus = parse_env(text), parse_env_cpus(text)
    except ValueError:
        return f"PMU/SVE by libvirt; {ENV_PINS} in the definition is malformed"
    regs = [f"{reg_name(k)}={v:#x}" for k, v in pins.items()]
    told = (f"; the guest is told {len(cpus)} CPUs (errata discovery): "
            + ", ".join(f"MIDR {m:#x}" for m, _r, _a in cpus)) if cpus else ""
    return ("PMU/SVE by libvirt; " + (f"{len(regs)} registers by abiguard_pin.so (LD_PRELOAD): {', '.join(regs)}"
                                      if regs else "firmware and ID registers by refusal only (no pins)") + told)


def status(uri: str | None, profiles: list[Profile]) -> list[dict[str, Any]]:
    import libvirt

    from ..connection import connect
    from ..engine import verdict
    from ..xml import contract, domain

    # the migratable XML of a running domain needs a read-write connection (secure flag)
    conn = connect(uri, readonly=os.geteuid() != 0)
    try:
        rows = []
        for dom in sorted(conn.listAllDomains(), key=lambda d: d.name()):
            active = dom.isActive()
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE if active else libvirt.VIR_DOMAIN_XML_INACTIVE)
            facts = domain.parse(xml.encode(), f"domain {dom.name()}")
            row: dict[str, Any] = {"domain": dom.name(), "state": "running" if active else "shut off"}
            try:
                sealed = contract.from_element(facts.contract, dom.name()) if facts.contract is not None else None
            except InputError as e:
                row["contract"] = f"invalid: {e}"
                rows.append(row)
                continue
            if sealed is None:
                row["contract"] = "none"
                rows.append(row)
                continue
            from ..model.contract import SEEN

            if sealed.origin.kind == SEEN:
                from ..xml.vm import seen_note

                row["contract"] = "none"
                row["unpinned"] = seen_note(facts, sealed)
                rows.append(row)
                continue
            row["contract"] = sealed.digest
            row["arch"] = sealed.arch
            if facts.stamp is not None and facts.stamp.get("profile"):
                # a VM started here carries a start stamp naming no profile: nothing to say
                row["running_on_profile"] = facts.stamp.get("profile")
            from ..arch import get

            if "cpu" in (notes := get(sealed.arch).cpu_notes(sealed)):
                row["cpu"] = notes["cpu"]
            row["enforced"] = _enforced(sealed.arch, facts.qemu_env)
            row["may_move_to"] = [p.label for p in profiles if verdict.check(sealed, p).allow]
            rows.append(row)
        return rows
    finally:
        conn.close()
