"""``abiguard pin``'s definition edits against golden files: tests/data/pin/<case>-in.xml is
edited with a contract (and this host's profile) and must give <case>-out.xml, with the
notes and what it cannot pin in <case>-notes.txt. A change in what pin writes is a visible
diff; ``ABIGUARD_REGENERATE=1 pytest tests/test_edit_golden.py`` rewrites the goldens."""
from __future__ import annotations

import difflib
import json
import os

import pytest
from lxml import etree

from abiguard.builtin import builtin_profiles
from abiguard.model import contract, profile
from abiguard.xml import contract as contract_xml
from abiguard.xml.edit import apply, parser

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "pin")
P = {os.path.basename(p)[:-5]: p for p in builtin_profiles()}
X86 = os.path.join(HERE, "data", "x86")


def _arm(name: str, config: str | None = None) -> contract.Contract:
    return contract.from_profile(profile.load(P[name]), config)


def _x86_baseline() -> contract.Contract:
    with open(os.path.join(X86, "fleet.json")) as f:
        return contract.Contract.from_json(json.load(f)["contract"], "fleet.json")


#: case -> (input file, contract, host profile or None)
CASES = {
    "arm64-same-host": ("arm64-plain", lambda: _arm("7.2.13+deb14-arm64", "psci"), "7.2.13+deb14-arm64"),
    "arm64-rollback-pins": ("arm64-plain", lambda: _arm("6.12.117+deb13-arm64", "psci+pmu"), "7.2.13+deb14-arm64"),
    "arm64-no-profile": ("arm64-plain", lambda: _arm("6.12.117+deb13-arm64", "psci"), None),
    "arm64-refused-values": ("arm64-plain", lambda: _arm("7.2.13+deb14-arm64", "psci"), "6.12.117+deb13-arm64"),
    "arm64-replaces-pins": ("arm64-commandline", lambda: _arm("6.12.117+deb13-arm64", "psci+pmu+sve"),
                            "7.2.13+deb14-arm64"),
    "x86-baseline": ("x86-custom", _x86_baseline, None),
}


def _diff(expected: str, got: str, name: str) -> str:
    return "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True), name, "now"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_pin_edit_matches_golden(case: str) -> None:
    source, make, host = CASES[case]
    with open(os.path.join(GOLDEN, f"{source}-in.xml")) as f:
        xml = f.read()
    sealed = make()
    out, notes, cannot = apply(xml, sealed, profile.load(P[host]) if host else None, nonce="00112233445566aa",
                               at="2026-12-01T12:00:00Z")
    report = "".join(f"pinned: {n}\n" for n in notes) + "".join(f"cannot pin: {c}\n" for c in cannot)
    files = {f"{case}-out.xml": out + "\n", f"{case}-notes.txt": report}
    if os.environ.get("ABIGUARD_REGENERATE") == "1":
        for name, text in files.items():
            with open(os.path.join(GOLDEN, name), "w") as f:
                f.write(text)
    for name, text in files.items():
        with open(os.path.join(GOLDEN, name)) as f:
            expected = f.read()
        assert text == expected, _diff(expected, text, name)
    # what pin wrote parses, carries the contract exactly, and kept everything it does not own
    root = etree.fromstring(out.encode(), parser())
    found = root.find("metadata/{urn:abiguard:contract:1}contract")
    assert contract_xml.from_element(found, case) == sealed
    before = etree.fromstring(xml.encode(), parser())
    for path in ("name", "uuid", "memory", "devices/emulator"):
        assert root.findtext(path) == before.findtext(path)


def test_every_golden_file_belongs_to_a_case() -> None:
    expected = {f"{s}-in.xml" for s, _m, _h in CASES.values()}
    expected |= {f"{c}-{kind}" for c in CASES for kind in ("out.xml", "notes.txt")}
    assert set(os.listdir(GOLDEN)) == expected
