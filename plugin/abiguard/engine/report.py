"""How an answer reads: one story per verdict, the same words everywhere (the CLI, the
hook's one refusal line, its log, the man page).

- The verdict first: ``ALLOW`` or ``REFUSE`` (:data:`VERDICT`).
- Problems that fail for the same reason are one line, their registers listed once, an
  indexed run as a range: ``DEMUX_CCSIDR[3..13] (11 registers): ...``.
- Where the destination's QEMU version is not known and the answer depends on it, what
  holds on every version comes first, then each version range with its own verdict: never
  a refusal and an "it loads" note for the same register side by side.

Standard library only and nothing imported at module level: the hook's refusal line is
built here.
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from ..model.problem import Problem, Verdict

#: the one vocabulary for a verdict
VERDICT = {True: "ALLOW", False: "REFUSE"}


class Group:
    """Problems with one reason: their registers (or items of one category, such as CPU
    features), and the reason's text."""

    __slots__ = ("names", "reason", "kind", "category")

    def __init__(self, names: list[str], reason: str, kind: str, category: str | None) -> None:
        self.names, self.reason, self.kind, self.category = names, reason, kind, category

    def line(self) -> str:
        names = compress(self.names)
        if self.category is not None:       # "CPU feature: a, b (2)"
            count = f" ({len(self.names)})" if len(self.names) > 1 else ""
            return f"{self.category} {names}{count}: {self.reason}"
        count = f" ({len(self.names)} registers)" if len(self.names) > 1 else ""
        return f"{names}{count}: {self.reason}"


def _category(p: Problem) -> str | None:
    """A problem about an item of a named category rather than a register (an x86 CPU
    feature, a CPU model): the category; None for a register."""
    return p.register if p.reg_id is None and p.field else None


def _what(p: Problem) -> str:
    if _category(p) is not None:
        return str(p.field)
    what = p.register + (f" ({p.reg_id:#x})" if p.reg_id is not None and not _indexed(p.register) else "")
    return what + (f" field {p.field}" if p.field else "")


def _indexed(name: str) -> bool:
    head, sep, tail = name.rpartition("[")
    return bool(head and sep and tail.endswith("]") and tail[:-1].isdigit())


def group(problems: list[Problem]) -> list[Group]:
    """Problems with the same reason (what the VM has, what the destination does, why, the
    fix) as one group each, in the order their first member came."""
    groups: dict[tuple[str, str, str | None], Group] = {}
    for p in problems:
        reason = f"VM has {p.source}, destination {p.destination}: {p.why}; {p.fix}"
        key = (reason, p.kind, _category(p))
        g = groups.get(key)
        if g is None:
            groups[key] = Group([_what(p)], reason, p.kind, _category(p))
        else:
            g.names.append(_what(p))
    return list(groups.values())


def compress(names: list[str]) -> str:
    """``A[3], A[4], A[5], B`` -> ``A[3..5], B``: a run of consecutive indexes as a range."""
    out: list[str] = []
    i = 0
    while i < len(names):
        head, _sep, tail = names[i].rpartition("[")
        if not _indexed(names[i]):
            out.append(names[i])
            i += 1
            continue
        start = end = int(tail[:-1])
        j = i + 1
        while j < len(names) and _indexed(names[j]) and names[j].rpartition("[")[0] == head \
                and int(names[j].rpartition("[")[2][:-1]) == end + 1:
            end += 1
            j += 1
        out.append(f"{head}[{start}..{end}]" if end > start else names[i])
        i = j
    return ", ".join(out)


def lines(v: Verdict, indent: str = "  ") -> list[str]:
    """The verdict's problems (grouped) and notes, as a report prints them under its title."""
    out = [f"{indent}- {g.line()}" for g in group(v.problems)]
    out += [f"{indent}note: {n}" for n in v.notes]
    return out


def story(v: Verdict, title: str) -> list[str]:
    """The whole answer: the verdict, then what holds on every destination QEMU, then each
    QEMU version range where it differs."""
    out = [f"{title}: {VERDICT[v.allow]}"]
    if not v.by_qemu:
        return out + lines(v)
    everywhere = [p for p in v.problems if all(any(q.line() == p.line() for q in per.problems)
                                               for _label, per in v.by_qemu)]
    common = {p.line() for p in everywhere}
    if everywhere:
        out.append("  on every destination QEMU:")
        out += [f"    - {g.line()}" for g in group(everywhere)]
    for label, per in v.by_qemu:
        own = [p for p in per.problems if p.line() not in common]
        out.append(f"  destination {label}: {VERDICT[per.allow]}" + ("" if own or not per.problems
                                                                     else " (for the reasons above)"))
        out += [f"    - {g.line()}" for g in group(own)]
        out += [f"    note: {n}" for n in per.notes]
    return out


def refusal_line(what: str, problems: list[Problem]) -> str:
    """The hook's one line: the first reason with every register that shares it, and how
    many other reasons there are."""
    groups = group(problems)
    more = len(groups) - 1
    extra = ""
    if more:
        others = compress([n if g.category is None else f"{g.category} {n}" for g in groups[1:] for n in g.names])
        if len(others) > 400:
            others = others[:400].rpartition(", ")[0] + ", ..."
        extra = f" (+{more} more reason{'s' if more > 1 else ''}, for {others}: abiguard check)"
    return f"abiguard: {what}: {groups[0].line()}{extra}"
