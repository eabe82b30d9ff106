"""Linux's arm64 errata table (data/errata/arm64.json, generated from the kernel's
arch/arm64/kernel/cpu_errata.c by packaging/gen-arm64-errata): which workarounds a guest
kernel applies for a CPU, decided as the kernel decides them by MIDR range (and REVIDR
for the revisions a bit fixes), and the CPU models by name.

Why it matters: a guest kernel without errata discovery (Linux < 6.16) applies only the
workarounds of the CPU it is shown; under a contract of several CPU models it misses those
the other CPUs need (:func:`missed`). Entries decided by a function beyond the table (the
Spectre entries, a mismatched cache type) are not predicted here."""
from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

#: data/errata/arm64.json (tests point it elsewhere)
ERRATA_FILE: str | None = None
_table: dict[str, Any] = {}


def _path() -> str:
    import os

    if ERRATA_FILE is not None:
        return ERRATA_FILE
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(package, "data", "errata", "arm64.json")


def table() -> dict[str, Any]:
    """The data file, checked; a wrong one is a packaging bug (AbiguardError)."""
    if _table:
        return _table
    import json

    from ...errors import AbiguardError

    path = _path()
    fix = "reinstall abiguard (a packaging bug: packaging/gen-arm64-errata writes this file)"
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise AbiguardError(f"cannot read the arm64 errata table {path}: {e}; {fix}") from None
    try:
        models = {name: (int(m["implementer"], 16), int(m["part"], 16)) for name, m in doc["models"].items()}
        errata = [(str(e["desc"]), [(int(r["implementer"], 16), int(r["part"], 16), tuple(r["from"]), tuple(r["to"]))
                                    for r in e["ranges"] if r["implementer"] is not None],
                   [tuple(x) for x in e["fixed"]], e["matches"]) for e in doc["errata"]]
        kernel = str(doc["source"]["kernel"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise AbiguardError(f"the arm64 errata table {path} is malformed ({type(e).__name__}: {e}); {fix}") from None
    _table.update(models=models, errata=errata, kernel=kernel)
    return _table


def _fields(midr: int) -> tuple[int, int, tuple[int, int]]:
    """(implementer, part number, (variant, revision)) of a MIDR_EL1 value"""
    return midr >> 24 & 0xFF, midr >> 4 & 0xFFF, (midr >> 20 & 0xF, midr & 0xF)


def model_name(midr: int) -> str | None:
    """'cortex-a57' for a Cortex-A57's MIDR (the kernel's MIDR_CORTEX_A57, lower case)."""
    imp, part, _ = _fields(midr)
    for name, m in table()["models"].items():
        if m == (imp, part):
            return str(name).removeprefix("MIDR_").lower().replace("_", "-")
    return None


def model_ids(name: str) -> tuple[int, int] | None:
    """(implementer, part) of a model named as :func:`model_name` says it (or MIDR_X)."""
    key = name.strip().upper().replace("-", "_")
    found: tuple[int, int] | None = table()["models"].get(key if key.startswith("MIDR_") else "MIDR_" + key)
    return found


def describe(midr: int) -> str:
    """'0x411fd070 (cortex-a57 r1p0)'"""
    name = model_name(midr)
    imp, part, (var, rev) = _fields(midr)
    return f"{midr:#x} ({name or f'implementer {imp:#x} part {part:#x}'} r{var}p{rev})"


def applies(midr: int, revidr: int) -> list[str]:
    """The errata workarounds Linux's table enables for this CPU, by ``desc`` (what the
    kernel prints after "CPU features: detected: "), in the table's order."""
    imp, part, vr = _fields(midr)
    out = []
    for desc, ranges, fixed, _fn in table()["errata"]:
        hit = any(i == imp and p == part and lo <= vr <= hi for i, p, lo, hi in ranges)
        if hit and any((v, r) == vr and revidr & mask for v, r, mask in fixed):
            hit = False
        if hit and desc not in out:
            out.append(desc)
    return out


def missed(cpus: tuple[tuple[int, int, int], ...], shown: tuple[int, int]) -> dict[int, list[str]]:
    """Per other CPU of *cpus* (MIDR, REVIDR, AIDR), the workarounds it needs that a guest
    shown *shown* (MIDR, REVIDR) and not told the others does not apply."""
    own = set(applies(*shown))
    out = {}
    for midr, revidr, _aidr in cpus:
        if (midr, revidr) != shown:
            lost = [d for d in applies(midr, revidr) if d not in own]
            if lost:
                out[midr] = lost
    return out


def older_guest_note(impl_cpus: tuple[tuple[int, int, int], ...], shown: tuple[int, int]) -> list[str]:
    """What an operator reads about a guest kernel older than 6.16 under a contract that
    tells the guest several CPUs: it asks nothing, so it applies the shown CPU's errata
    only; the ones it misses, named, per CPU (empty for one CPU model)."""
    if len(impl_cpus) < 2:
        return []
    kernel = table()["kernel"]
    lost = missed(impl_cpus, shown)
    head = (f"a guest kernel older than 6.16 (no errata discovery) applies only the errata of the CPU it is "
            f"shown, {describe(shown[0])}")
    if not lost:
        return [head + f"; Linux {kernel}'s errata table names none that the other CPUs need beyond it"]
    return [head + "; it misses, by Linux " + kernel + "'s errata table: "
            + "; ".join(f"on {describe(m)}: {', '.join(d)}" for m, d in lost.items())]
