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
        from .profile import render

        doc = probe_host(with_stack=not args.kvm_only, device=args.device)
        _write(render(doc), args.output)
        for item in doc["unavailable"]:
            print(f"abiguard probe: not available: {item['what']}: {item['error']} {item['detail']}".rstrip(),
                  file=sys.stderr)
        return 0


COMMANDS: dict[str, Command] = {c.name: c for c in (Probe(),)}


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
