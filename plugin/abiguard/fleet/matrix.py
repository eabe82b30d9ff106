"""``fleet matrix``: who can go where, for the whole fleet, one row and one column per
distinct profile (hosts with the same profile answer the same, so 1,000 hosts of 12 kinds
are a 12 x 12 table, each cell judged once).

A cell is what ``abiguard matrix`` says for a VM booted with QEMU's defaults on a host of
the row's profile moving to one of the column's: ``keeps`` (exactly the same ABI), ``pin
first`` (after pinning it to a contract both realise) or ``cannot`` (the first blocker
named); the diagonal is ``same`` (hosts of one profile).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model.profile import Profile
    from .record import HostRecord

STATES = ("same", "keeps", "pin first", "cannot")


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
    if baseline.holds([src, dst], qemu=qemu) is not None:
        first = v.problems[0]
        return {"state": "pin first", "problems": len(v.problems), "reason": first.line(), "register": first.register}
    blockers = pair_blockers(src, dst, qemu) or v.problems
    return {"state": "cannot", "problems": len(v.problems), "reason": blockers[0].line(),
            "register": blockers[0].register}


def pair_blockers(src: Profile, dst: Profile, qemu: tuple[int, ...] | None) -> list[Any]:
    """Why the two hosts have no contract both boot and accept: what their baseline's
    contract meets on each (arrival first, then start)."""
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
    return [p for h in (dst, src) for p in baseline.arrivals(sealed, h, streams, qemu)
            + verdict.realise(sealed, h).problems]


def cells(gs: list[Group], qemu: tuple[int, ...] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s.key, d.key): cell(s.profile, d.profile, qemu) for s in gs for d in gs}


def to_json(gs: list[Group], table: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return {"groups": {g.key: {"profile": g.profile.digest, "kernel": g.profile.kernel_release,
                               "machine": g.profile.machine, "hosts": g.hosts} for g in gs},
            "cells": {f"{s} -> {d}": c for (s, d), c in table.items()}}


def lines(gs: list[Group], table: dict[tuple[str, str], dict[str, Any]], names_shown: int = 4) -> list[str]:
    out = []
    for g in gs:
        more = f" and {len(g.hosts) - names_shown} more" if len(g.hosts) > names_shown else ""
        out.append(f"{g.label}: {', '.join(g.hosts[:names_shown])}{more}")
    texts = {k: c["state"] if c["state"] != "cannot" else f"cannot:{c['register']}" for k, c in table.items()}
    width = max(8, *(len(t) + 2 for t in texts.values())) if texts else 8
    out.append("")
    out.append("from \\ to".ljust(10) + "".join(g.key.ljust(width) for g in gs))
    for s in gs:
        out.append((s.key.ljust(10) + "".join(texts[(s.key, d.key)].ljust(width) for d in gs)).rstrip())
    reasons: dict[str, str] = {}
    for c in table.values():
        if c["state"] == "cannot" and c["register"] not in reasons:
            reasons[c["register"]] = c["reason"]
    if reasons:
        out.append("")
        out += [f"  {r}" for r in reasons.values()]
    return out
