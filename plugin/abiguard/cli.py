"""``abiguard`` command line: the registry of subcommands (:mod:`abiguard.commands`) and
``main()``, the one place where errors become exit codes: 0 ok/allow, 1 refuse, 2 usage or
bad input, 3 internal error, 130 interrupted."""
from __future__ import annotations

import argparse
import sys
import traceback

from .commands.base import Command
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_REFUSE, EXIT_USAGE, AbiguardError


def _commands() -> dict[str, Command]:
    from .commands.baseline import Baseline
    from .commands.check import Check
    from .commands.diff import Diff
    from .commands.fleet import Fleet
    from .commands.install import Install, Uninstall
    from .commands.matrix import Matrix
    from .commands.pin import Pin
    from .commands.probe import Probe
    from .commands.release import Release
    from .commands.status import Status

    return {c.name: c for c in (Probe(), Check(), Diff(), Baseline(), Matrix(), Install(), Uninstall(), Pin(),
                                Release(), Status(), Fleet())}


COMMANDS: dict[str, Command] = _commands()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abiguard",
        description="Keep a VM's guest ABI identical across live migration, upgrades and rollbacks.")
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"abiguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command].run(args)
    except AbiguardError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_REFUSE
    except Exception:
        traceback.print_exc()
        print("abiguard: internal error (traceback above): please report it", file=sys.stderr)
        return EXIT_INTERNAL


__all__ = ["main", "COMMANDS", "Command"]
