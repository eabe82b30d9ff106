"""Arch knowledge lives in plugin/abiguard/arch/ (issue 21): outside it no code compares a
value with an architecture's name -- it asks the arch plugin (``arch.get(machine)``)."""
from __future__ import annotations

import ast
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1] / "plugin" / "abiguard"
#: the names an arch is known by: libvirt's / uname's, Debian's, QEMU's, the short ones
ARCH_WORDS = {"aarch64", "x86_64", "arm64", "amd64", "x86", "i386", "i686", "arm"}


def arch_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, name) of every comparison (==, !=, in, not in, is) with an arch-name literal"""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op in operands:
            elts = op.elts if isinstance(op, (ast.Tuple, ast.List, ast.Set)) else [op]
            for e in elts:
                if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in ARCH_WORDS:
                    found.append((node.lineno, e.value))
    return found


def test_no_arch_branch_outside_arch() -> None:
    offenders = []
    for path in sorted(PLUGIN.rglob("*.py")):
        rel = path.relative_to(PLUGIN)
        if rel.parts[0] == "arch":
            continue
        offenders += [f"{rel}:{line} compares with {name!r}" for line, name in arch_comparisons(path.read_text())]
    assert not offenders, "ask the arch plugin instead (abiguard.arch.get(machine)):\n" + "\n".join(offenders)


def test_the_scan_finds_branches() -> None:
    """the scan itself: each shape of comparison it must catch, and what it must not"""
    assert arch_comparisons('if p.machine == "x86_64": pass') == [(1, "x86_64")]
    assert arch_comparisons('ok = m in ("aarch64", "x86_64")') == [(1, "aarch64"), (1, "x86_64")]
    assert arch_comparisons('ok = "arm64" != m') == [(1, "arm64")]
    assert arch_comparisons('choices = ("aarch64", "x86_64")') == []
    assert arch_comparisons('if m == "x86_64-v2": pass') == []
