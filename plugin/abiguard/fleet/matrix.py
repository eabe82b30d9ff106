"""``fleet matrix``: who can go where, for the whole fleet, one row and one column per
distinct profile (hosts with the same profile answer the same, so 1,000 hosts of 12 kinds
are a 12 x 12 table, each cell judged once).

A cell is what ``abiguard matrix`` says for a VM booted with QEMU's defaults on a host of
the row's profile moving to one of the column's: ``keeps`` (exactly the same ABI), ``pin
first`` (after pinning it to a contract both realise: the pins are named) or ``cannot``
(the first blocker named); the diagonal is ``same`` (hosts of one profile).

The text (this module's :func:`grid` and :func:`reason_lines`, shared with ``abiguard
matrix``) fits :data:`WIDTH` columns: the table is split into column blocks where it would
be wider, and every cell that is not ``keeps`` gets a line of its own that names its pair,
wrapped.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model.profile import Profile
    from .record import HostRecord

STATES = ("same", "keeps", "pin first", "cannot")
#: the terminal width every line of the text fits
WIDTH = 100


class Group:
    """The hosts that share one profile."""

    __slots__ = ("key", "profile", "hosts")

    def __init__(self, key: str, profile: Profile, hosts: list[str]) -> None:
        #: G1, G2, ...: the short name tables and pictures use
        self.key = key
        self.profile = profile
        self.hosts = hosts

    @property
    def label(self) -> str:
        from .names import stack

        return f"{self.key} {stack(self.profile)} ({self.profile.digest[7:19]}): {len(self.hosts)} host(s)"

    def described(self, with_cpu: bool) -> str:
        """What tells this group apart: the kernel, QEMU and libvirt where named, the CPU
        model where the fleet has more than one, the profile's digest, the host count."""
        from ..arch import get
        from .names import stack

        cpu = get(self.profile.machine).cpu_text(self.profile) if with_cpu else None
        return (f"{self.key} {stack(self.profile)}{', CPU ' + cpu if cpu else ''} ({self.profile.digest[7:19]}): "
                f"{len(self.hosts)} host(s)")


def groups(records: list[HostRecord], profiles: dict[str, Profile]) -> list[Group]:
    by: dict[str, list[str]] = {}
    for rec in records:
        by.setdefault(rec.profile, []).append(rec.name)
    order = sorted(by, key=lambda d: (profiles[d].machine, profiles[d].kernel_release, d))
    return [Group(f"G{i + 1}", profiles[d], by[d]) for i, d in enumerate(order)]


def cell(src: Profile, dst: Profile, qemu: tuple[int, ...] | None = None) -> dict[str, Any]:
    """``keeps`` when the VM moves as it is; ``pin first`` when the two hosts have a
    contract both boot and accept (:func:`abiguard.engine.baseline.holds`, what ``baseline``
    writes); ``cannot`` otherwise, with the first reason."""
    from ..engine import baseline, verdict
    from ..model.problem import Policy

    if src.digest == dst.digest:
        return {"state": "same", "problems": 0, "reason": None, "register": None}
    v = verdict.check_pair(src, dst, Policy(qemu=qemu))
    if v.allow:
        return {"state": "keeps", "problems": 0, "reason": None, "register": None}
    # pin first: the two hosts have a contract both boot and accept (what baseline writes)
    if baseline.holds([src, dst], qemu=qemu) is not None:
        state, first, where = "pin first", v.problems[0], dst
    else:
        state, (first, where) = "cannot", (pair_blockers(src, dst, qemu) or [(p, dst) for p in v.problems])[0]
    out = {"state": state, "problems": len(v.problems), "reason": first.line(), "register": first.register}
    # the pair's own values, and the explanation many cells share (said once, as a note)
    reg = first.register + (f" field {first.field}" if first.field else "")
    # a pair whose contract the source refuses: no way back (rollback), said as such
    back = "" if where is dst else f" (on the way back to {src.kernel_release or 'the source'})"
    out["facts"] = f"{reg}: VM has {first.source}, destination {first.destination}{back}"
    out["why"] = f"{first.why}; {first.fix}"
    if state == "pin first":
        out["pins"] = pins(src, dst, qemu)
    return out


def pair_blockers(src: Profile, dst: Profile, qemu: tuple[int, ...] | None) -> list[tuple[Any, Profile]]:
    """Why the two hosts have no contract both boot and accept: what their baseline's
    contract meets on each (arrival first, then start), with the host that meets it."""
    from ..arch import get
    from ..engine import baseline, verdict
    from ..errors import UsageError
    from ..model.contract import Contract

    try:
        doc = baseline.document([src, dst], qemu=qemu)
    except UsageError:
        return []
    sealed = Contract.from_json(doc["contract"], "the pair's baseline")
    streams = baseline.born_streams(get(sealed.arch), sealed, [src, dst], [src, dst])
    return [(p, h) for h in (dst, src) for p in baseline.arrivals(sealed, h, streams, qemu)
            + verdict.realise(sealed, h).problems]


def pins(src: Profile, dst: Profile, qemu: tuple[int, ...] | None = None) -> list[str]:
    """What pinning means for a pin-first pair: what abiguard_pin.so does at start on each
    host for the pair's baseline contract, one item per host: the register values it writes
    (a register KVM defaults otherwise) and how many registers it hides from QEMU's list."""
    from ..engine.baseline import compute

    doc = compute([src, dst], leave_out=False, qemu=qemu)
    out = []
    for p in (src, dst):
        for rep in doc["hosts"].values():
            if rep["profile"] != p.digest:
                continue
            items = [pin.partition(" (")[0] for pin in rep.get("pins", ())]
            hidden = [i.partition(" hidden from")[0] for i in items if " hidden from " in i]
            written = [i for i in items if " hidden from " not in i]
            if hidden:
                written.append(f"{len(hidden)} register(s) hidden from QEMU's list ({_runs(hidden)})")
            if written:
                out.append(f"on {p.kernel_release} at start: " + ", ".join(written))
    return out + [f"conflict: {c}" for c in doc["conflicts"]]


def _runs(names: list[str]) -> str:
    """DEMUX_CCSIDR[3], ..., DEMUX_CCSIDR[13] -> DEMUX_CCSIDR[3..13]: indexed names in runs."""
    import re

    out: list[str] = []
    run: tuple[str, int, int] | None = None
    for n in names + [""]:
        m = re.fullmatch(r"(.+)\[(\d+)\]", n)
        if m and run and m.group(1) == run[0] and int(m.group(2)) == run[2] + 1:
            run = (run[0], run[1], int(m.group(2)))
            continue
        if run:
            out.append(f"{run[0]}[{run[1]}]" if run[1] == run[2] else f"{run[0]}[{run[1]}..{run[2]}]")
            run = None
        if m:
            run = (m.group(1), int(m.group(2)), int(m.group(2)))
        elif n:
            out.append(n)
    return ", ".join(out)


def detail(c: dict[str, Any], notes: dict[str, int]) -> str:
    """One cell's reason: the blocker that makes it ``cannot`` with the pair's own values,
    or what to pin; the explanation as a numbered note (``notes``: text -> number)."""
    why = c.get("why")
    ref = f" [{notes.setdefault(why, len(notes) + 1)}]" if why else ""
    if c["state"] == "pin first":
        what = "; ".join(c.get("pins") or ()) or "the pair's contract alone, no register pins"
        return (f"pin first: {what} (both hosts' baseline: abiguard baseline, abiguard pin)"
                + (f"; unpinned: {c['facts']}{ref}" if c.get("facts") else ""))
    return f"{c['state']}: {c.get('facts') or c['reason']}{ref}"


def grid(rows: list[str], columns: list[str], text: dict[tuple[str, str], str], corner: str,
         width: int = WIDTH) -> list[str]:
    """The table, split into blocks of columns so that no line is wider than ``width``."""
    first = max(len(corner), *(len(r) for r in rows)) + 2
    col = max(*(len(c) for c in columns), *(len(t) for t in text.values()), 4) + 2
    per = max(1, (width - first) // col)
    out: list[str] = []
    for at in range(0, len(columns), per):
        block = columns[at:at + per]
        if out:
            out.append("")
        out.append((corner.ljust(first) + "".join(c.ljust(col) for c in block)).rstrip())
        for r in rows:
            out.append((r.ljust(first) + "".join(text.get((r, c), "-").ljust(col) for c in block)).rstrip())
    return out


def reason_lines(pairs: list[tuple[str, str, dict[str, Any]]], notes: dict[str, int],
                 width: int = WIDTH) -> list[str]:
    """One wrapped line per cell that does not keep the ABI, naming its pair; the
    explanations go to ``notes`` (:func:`note_lines`)."""
    import textwrap

    out = []
    for s, d, c in pairs:
        if c["state"] in ("keeps", "same"):
            continue
        out += textwrap.wrap(f"{s} -> {d}: {detail(c, notes)}", width, initial_indent="  ",
                             subsequent_indent="      ", break_on_hyphens=False)
    return out


def note_lines(notes: dict[str, int], width: int = WIDTH) -> list[str]:
    import textwrap

    out = []
    for text, n in sorted(notes.items(), key=lambda kv: kv[1]):
        out += textwrap.wrap(f"[{n}] {text}", width, subsequent_indent="    ", break_on_hyphens=False)
    return out


def cells(gs: list[Group], qemu: tuple[int, ...] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s.key, d.key): cell(s.profile, d.profile, qemu) for s in gs for d in gs}


def to_json(gs: list[Group], table: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return {"groups": {g.key: {"profile": g.profile.digest, "kernel": g.profile.kernel_release,
                               "machine": g.profile.machine, "hosts": g.hosts} for g in gs},
            "cells": {f"{s} -> {d}": c for (s, d), c in table.items()}}


def lines(gs: list[Group], table: dict[tuple[str, str], dict[str, Any]], names_shown: int = 4) -> list[str]:
    import textwrap

    from ..arch import get

    cpus = {get(g.profile.machine).cpu_text(g.profile) for g in gs}
    out = []
    for g in gs:
        more = f" and {len(g.hosts) - names_shown} more" if len(g.hosts) > names_shown else ""
        out += textwrap.wrap(f"{g.described(len(cpus) > 1)}: {', '.join(g.hosts[:names_shown])}{more}", WIDTH,
                             subsequent_indent="    ", break_on_hyphens=False)
    keys = [g.key for g in gs]
    out.append("")
    out += grid(keys, keys, {k: c["state"] for k, c in table.items()}, "from \\ to")
    notes: dict[str, int] = {}
    reasons = reason_lines([(s, d, table[(s, d)]) for s in keys for d in keys], notes)
    if reasons:
        out += ["", *reasons, "", *note_lines(notes)]
    return out
