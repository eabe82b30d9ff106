"""``abiguard`` command line: one class per subcommand, registered in :data:`COMMANDS`.

Exit codes are decided in one place, :func:`main`: 0 ok/allow, 1 refuse, 2 usage or
bad input, 3 internal error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any

from .errors import AbiguardError, UsageError


class Command:
    name = ""
    help = ""

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def _write(text: str, output: str | None) -> None:
    if output in (None, "-"):
        sys.stdout.write(text)
    else:
        from .profile import atomic_write
        atomic_write(output, text)


class Probe(Command):
    name = "probe"
    help = "read what this host's KVM, QEMU and libvirt offer a guest; write a host profile"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output", help="write the profile here (default: stdout)")
        parser.add_argument("--kvm-only", action="store_true",
                            help="skip QEMU and libvirt (what the arm64 lab's initramfs does)")
        parser.add_argument("--device", default="/dev/kvm", help="KVM device (default: %(default)s)")

    def run(self, args: argparse.Namespace) -> int:
        from .probe import probe_host
        from .profile import render, save

        doc = probe_host(with_stack=not args.kvm_only, device=args.device)
        if args.output in (None, "-"):
            sys.stdout.write(render(doc))
        else:
            save(doc, args.output)  # with the hook's view of it
        for item in doc["unavailable"]:
            print(f"abiguard probe: not available: {item['what']}: {item['error']} {item['detail']}".rstrip(),
                  file=sys.stderr)
        return 0


def load_contract_or_profile(path: str, config: str | None = None) -> dict[str, Any]:
    """A contract file, a baseline file (its contract) or a host profile (the contract a
    VM booted there with defaults has)."""
    from . import contract, profile
    from .errors import InputError

    try:
        with open(path, "rb") as f:
            text = f.read(profile.MAX_BYTES + 1)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror}") from e
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InputError(path, f"not valid JSON ({e}): is the file complete?") from e
    kind = doc.get("format") if isinstance(doc, dict) else None
    if kind == contract.FORMAT:
        return contract.validate(doc, path)
    if kind == "abiguard-baseline":
        return contract.validate(doc.get("contract"), path)
    if kind == profile.FORMAT:
        return contract.from_profile(profile.validate(doc, path), config)
    raise InputError(path, "not an abiguard host profile, contract or baseline (member 'format')")


def _print_verdict(v: Any, as_json: bool, header: str) -> None:
    if as_json:
        print_json(v.to_json())
        return
    print(f"{header}: {'ALLOW' if v.allow else 'REFUSE'}")
    for p in v.problems:
        print(f"  - {p.line()}")
    for n in v.notes:
        print(f"  note: {n}")


def _qemu_version(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    from .verdict import parse_version

    version = parse_version(text)
    if version is None:
        raise UsageError(f"--qemu {text!r}: expected a version such as 7.2 or 11.1")
    return version


class Check(Command):
    name = "check"
    help = "will a VM keep its guest ABI when it moves from S to D? (exit 0 allow, 1 refuse)"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--from", dest="source", required=True,
                            help="source: a host profile, a contract or a baseline file")
        parser.add_argument("--to", dest="dest", required=True, help="destination host profile")
        parser.add_argument("--config", help="arm64 vCPU configuration, e.g. psci+pmu (default: "
                            "every feature the source offers, as -cpu host does)")
        parser.add_argument("--allow-widening", action="store_true",
                            help="accept a destination that adds guest-visible registers")
        parser.add_argument("--qemu", metavar="VERSION",
                            help="destination QEMU version where its profile does not name one, e.g. 7.2")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from . import profile, verdict

        source = load_contract_or_profile(args.source, args.config)
        dest = profile.load(args.dest)
        v = verdict.check(source, dest, verdict.Policy(allow_widening=args.allow_widening,
                                                       qemu=_qemu_version(args.qemu)))
        _print_verdict(v, args.json, f"{args.source} -> {args.dest}")
        return 0 if v.allow else 1


class Diff(Command):
    name = "diff"
    help = "every guest-ABI difference between two host profiles, both directions"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("a")
        parser.add_argument("b")
        parser.add_argument("--config", help="arm64 vCPU configuration (default: the richest both have)")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from . import contract, profile, verdict

        a, b = profile.load(args.a), profile.load(args.b)
        config = args.config
        if config is None and a["host"]["machine"] == b["host"]["machine"] == "aarch64":
            common = set(a["kvm"]["aarch64"]["configs"]) & set(b["kvm"]["aarch64"]["configs"])
            from .arch import arm64
            config = max(common, key=lambda c: (len(arm64.config_features(c)), c)) if common else None
        out = {}
        for label, src, dst in (("a_to_b", a, b), ("b_to_a", b, a)):
            v = verdict.check(contract.from_profile(src, config), dst)
            out[label] = v
        if args.json:
            print_json({k: v.to_json() for k, v in out.items()})
        else:
            _print_verdict(out["a_to_b"], False, f"{args.a} -> {args.b}")
            _print_verdict(out["b_to_a"], False, f"{args.b} -> {args.a}")
        return 0 if all(v.allow for v in out.values()) else 1


class Baseline(Command):
    name = "baseline"
    help = "the richest contract every listed host (and every rollback host) can provide"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("profiles", nargs="+", metavar="PROFILE")
        parser.add_argument("--rollback-to", action="append", default=[], metavar="PROFILE",
                            help="a host the fleet may roll back to (repeatable)")
        parser.add_argument("--config", help="arm64 vCPU configuration (default: the richest all have)")
        parser.add_argument("-o", "--output", help="write the baseline here (default: stdout)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from . import baseline, profile

        verified: dict[str, dict[str, Any]] = {}
        result = baseline.compute(profile.load_labelled(args.profiles, verified),
                                  profile.load_labelled(args.rollback_to, verified), args.config)
        text = json.dumps(result, sort_keys=True, indent=1) + "\n"
        if args.output:
            _write(text, args.output)
        if args.json or not args.output:
            sys.stdout.write(text)
        else:
            c = result["contract"]
            body = c[c["arch"]]
            print(f"baseline over {len(result['hosts'])} distinct host(s): {c['arch']} "
                  f"machine {c.get('machine_type')}, {body.get('config', body.get('cpu_model'))}")
            for conflict in result["conflicts"]:
                print(f"  conflict: {conflict}")
            for host, rep in sorted(result["hosts"].items()):
                state = "accepts" if rep["accepts_incoming"] else "REFUSES"
                print(f"  {host}: {state} VMs with this contract"
                      + (f"; cannot pin {len(rep.get('cannot_pin', []))} item(s)" if rep.get("cannot_pin") else ""))
                for line in rep["incoming_problems"][:3] + rep.get("cannot_pin", [])[:3]:
                    print(f"      {line}")
        return 0


def builtin_profiles() -> list[str]:
    """The real arm64 host profiles shipped with abiguard (measured by its arm64 lab)."""
    import glob
    import os

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "arm64")
    return sorted(glob.glob(os.path.join(here, "*.json")))


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
        import os

        from . import profile
        from .arch import arm64

        paths = args.profiles or [p for p in builtin_profiles()
                                  if args.all_builtin or p.endswith("-arm64.json")]
        if len(paths) < 2:
            raise UsageError("matrix needs at least two host profiles")
        hosts = [profile.load(p) for p in paths]
        names = [os.path.basename(p).removesuffix(".json") for p in paths]
        # profiles without a QEMU version (the lab's KVM-only ones) get one table per
        # released QEMU rule: whether a move works depends on the destination's QEMU
        unnamed = any(not ((h.get("stack") or {}).get("qemu") or {}).get("version") for h in hosts)
        if args.qemu:
            versions = [(f"destination QEMU {args.qemu}", _qemu_version(args.qemu))]
        elif unnamed and all(h["host"]["machine"] == "aarch64" for h in hosts):
            versions = [(f"destination {r.name}", r.since) for r in arm64.QEMU_CPREG_RULES[1:]]
        else:
            versions = [("destination QEMU as profiled", None)]
        tables = {label: self._cells(names, hosts, version) for label, version in versions}
        if args.json:
            print_json({label: {f"{s} -> {d}": c for (s, d), c in cells.items()}
                        for label, cells in tables.items()})
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
    def _cells(names: list[str], hosts: list[dict[str, Any]], qemu: tuple[int, ...] | None
               ) -> dict[tuple[str, str], dict[str, Any]]:
        from . import verdict

        cells: dict[tuple[str, str], dict[str, Any]] = {}
        for sname, src in zip(names, hosts):
            for dname, dst in zip(names, hosts):
                if sname == dname:
                    continue
                v = verdict.check_pair(src, dst, verdict.Policy(qemu=qemu))
                blockers = [p for p in v.problems if not p.pinnable]
                state = "keeps" if v.allow else ("pin first" if not blockers else "cannot")
                first = (blockers or v.problems or [None])[0]
                cells[(sname, dname)] = {"state": state, "problems": len(v.problems),
                                         "reason": first.line() if first else None,
                                         "register": first.register if first else None}
        return cells

    @staticmethod
    def _print(names: list[str], cells: dict[tuple[str, str], dict[str, Any]], reasons: dict[str, str]) -> None:
        short = [n.split("-arm64")[0].split("+")[0] + n.split("-arm64")[1] for n in names]
        width = max(24, *(len(x) + 2 for x in short))
        print("source \\ dest".ljust(width) + "".join(x.ljust(width) for x in short))
        for sname, sshort in zip(names, short):
            row = sshort.ljust(width)
            for dname in names:
                if sname == dname:
                    row += "-".ljust(width)
                    continue
                c = cells[(sname, dname)]
                text = c["state"] if c["state"] != "cannot" else f"cannot:{c['register']}"
                if c["state"] == "cannot":
                    reasons.setdefault(f"{c['register']}", c["reason"])
                row += text[:width - 1].ljust(width)
            print(row)


class Install(Command):
    name = "install"
    help = "install the libvirt hooks, the default config and this host's profile"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--root", default="/", help="install below this directory (default: /)")
        parser.add_argument("--python", help="interpreter for the hook scripts (default: this one)")
        parser.add_argument("--no-probe", action="store_true", help="do not probe this host now")

    def run(self, args: argparse.Namespace) -> int:
        from . import install

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
        from . import install

        for path in install.uninstall(args.root, args.purge):
            print(f"removed {path}")
        return 0


class Pin(Command):
    name = "pin"
    help = "write a guest ABI contract (and what realises it) into a domain's persistent definition"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("domain")
        src = parser.add_mutually_exclusive_group()
        src.add_argument("--baseline", help="a baseline (or contract) file from 'abiguard baseline'")
        src.add_argument("--profile", help="pin to what a VM booted on this profile's host has")
        parser.add_argument("-c", "--connect", help="libvirt URI (default: libvirt's default)")
        parser.add_argument("--host-profile", default="/var/lib/abiguard/host-profile.json",
                            help="this host's profile, used when neither --baseline nor --profile is given")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from . import contract, pin, profile

        sealed = None
        if args.baseline:
            sealed = load_contract_or_profile(args.baseline)
        elif args.profile:
            sealed = contract.from_profile(profile.load(args.profile))
        report = pin.pin(args.connect, args.domain, sealed, args.host_profile)
        if args.json:
            print_json(report)
        else:
            print(f"pinned {report['domain']} to {report['contract']} ({report['arch']}); {report['note']}")
            for line in report["pinned"]:
                print(f"  pinned: {line}")
            for line in report["cannot_pin"]:
                print(f"  cannot pin: {line}")
        return 0


class Status(Command):
    name = "status"
    help = "every domain, its contract, and which of the given hosts it may move to"

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("profiles", nargs="*", metavar="PROFILE", help="candidate destination hosts")
        parser.add_argument("-c", "--connect", help="libvirt URI")
        parser.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from . import pin, profile

        hosts = profile.load_labelled(args.profiles)
        rows = pin.status(args.connect, hosts)
        if args.json:
            print_json(rows)
            return 0
        for row in rows:
            print(f"{row['domain']}: {row['state']}, contract {row['contract']}")
            for key in ("running_on_profile", "enforced"):
                if key in row:
                    print(f"  {key.replace('_', ' ')}: {row[key]}")
            if "may_move_to" in row and hosts:
                print(f"  may move to: {', '.join(row['may_move_to']) or 'none of the given hosts'}")
        return 0


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Probe(), Check(), Diff(), Baseline(), Matrix(), Install(), Uninstall(), Pin(), Status())}


def register(command: Command) -> None:
    COMMANDS[command.name] = command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abiguard",
        description="Keep a VM's guest ABI identical across live migration, upgrades and rollbacks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure_parser(p)
    return parser


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    _load_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command].run(args)
    except AbiguardError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception:
        traceback.print_exc()
        print("abiguard: internal error (traceback above): please report it", file=sys.stderr)
        return 3


def _load_commands() -> None:
    """Commands of other modules register themselves on import."""
    import importlib

    for module in ("abiguard.commands",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


__all__ = ["main", "Command", "COMMANDS", "register", "UsageError"]
