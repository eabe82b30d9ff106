"""What every subcommand shares: the command interface, JSON and file output, the verdict's
report, and ``--qemu``. (A contract, baseline or profile file as a contract:
:func:`abiguard.engine.baseline.load_contract_or_profile`.)"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..model.problem import Verdict


class Command:
    """A subcommand: ``name``, ``help``, its arguments, and ``run() -> exit code``."""

    name = ""
    help = ""

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


#: the version of every --json document's layout (documented in abiguard(8), JSON OUTPUT):
#: a member is only ever added within a version; a change of meaning is a new version
JSON_SCHEMA_VERSION = 1


def print_json(doc: Any, schema: str | None = None) -> None:
    """A command's --json answer; ``schema`` names its layout ("abiguard-check/1")."""
    if schema is not None:
        doc = {"schema": f"abiguard-{schema}/{JSON_SCHEMA_VERSION}", **doc}
    sys.stdout.write(json.dumps(doc, sort_keys=True, indent=1) + "\n")


def write(text: str, output: str | None) -> None:
    if output in (None, "-"):
        sys.stdout.write(text)
    else:
        from ..model.profile import atomic_write
        atomic_write(output, text)


def print_verdict(v: Verdict, as_json: bool, header: str) -> None:
    if as_json:
        print_json(v.to_json(), "check")
        return
    from ..engine.report import story

    print("\n".join(story(v, header)))


def qemu_version(text: str | None) -> tuple[int, ...] | None:
    """``--qemu 7.2`` as a version tuple."""
    if text is None:
        return None
    from ..model.stack import parse_version

    version = parse_version(text)
    if version is None:
        raise UsageError(f"--qemu {text!r}: expected a version such as 7.2 or 11.1")
    return version
