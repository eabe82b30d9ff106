"""A baseline never lies (issue 24), over every subset of the bundled arm64 profiles (the
four real Debian kernels and the CPU-model variants): ``baseline`` either writes a contract
every listed host boots and accepts, per its own ``--json`` and per the engine asked again
(:func:`abiguard.engine.verdict.realise` / :func:`~abiguard.engine.verdict.check`), or
exits 1, writes nothing, names per host what stands in the way, and the fewest hosts to
leave out, whose rest the same command then writes. Which fleets are refused is not
written down here: it follows from the profiles (issue 25 will turn some into fleets with
a contract), and the invariant must hold either way. ``fleet baseline`` over a fleet
directory is held to the same."""
from __future__ import annotations

import copy
import itertools
import json
import os

import pytest

from abiguard.builtin import builtin_profiles
from abiguard.cli import main
from abiguard.engine import baseline, verdict
from abiguard.fleet.store import Store
from abiguard.model import contract, profile

ARM = sorted(p for p in builtin_profiles() if "/arm64/" in p)
LOADED = {p: profile.load(p).with_label(p) for p in ARM}
SUBSETS = [list(s) for k in range(1, len(ARM) + 1) for s in itertools.combinations(ARM, k)]
CCSIDR0 = "0x6020000000110000"
KERNELS = [p for p in ARM if not p.endswith(("a72.json", "n1.json"))]
#: the bundled profiles name no QEMU: every subset judged for QEMU 11.1 (``--qemu``), and the
#: subsets of the four kernels on the strict model too (arrivals fail wherever any QEMU could)
CASES = [(s, "11.1") for s in SUBSETS] + [(list(s), None) for k in range(1, 5)
                                          for s in itertools.combinations(KERNELS, k)]
QEMU = {"11.1": (11, 1), None: None}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def engine_says_it_holds(doc: dict, paths: list[str], qemu: tuple[int, ...] | None = None) -> None:
    """The document's contract, asked of the engine again on every listed host: it boots
    there, and the hook's incoming verdict allows a VM of it started on any listed host
    (carrying that host's boot stream) or moving on from one (its stamp stream), up to the
    registers the hook pins off on arrival."""
    from abiguard.arch import get
    from abiguard.model.problem import Policy

    sealed = contract.Contract.from_json(doc["contract"], "the baseline")
    arch = get(sealed.arch)
    streams = [None] + [arch.boot_stream(sealed, LOADED[p]) for p in paths] \
        + [arch.stamp_stream(sealed, LOADED[p]) for p in paths]
    for p in paths:
        host = LOADED[p]
        assert verdict.realise(sealed, host).allow, (p, [x.line() for x in verdict.realise(sealed, host).problems])
        for stream in streams:
            v = verdict.check(sealed, host, Policy(qemu=qemu), stream)
            hard = [x.line() for x in v.problems if not (x.kind == "widen" and x.pin is not None)]
            assert not hard, (p, hard)


@pytest.fixture(scope="module")
def answers():
    """Each subset's answer from the engine's one question (:func:`baseline.holds`: the
    contract's summary, or None): the truth the command's outcome and leave-out advice are
    held to."""
    return {(frozenset(s), q): baseline.holds([LOADED[p] for p in s], qemu=QEMU[q]) for s, q in CASES}


def test_there_are_subsets_of_both_outcomes(answers):
    """the test below proves something either way: some bundled fleets have a contract, some not"""
    assert any(answers.values()) and not all(answers.values())
    assert all(answers[(frozenset([p]), "11.1")] for p in ARM)     # one host always has its own contract


@pytest.mark.parametrize("paths,qemu", CASES, ids=lambda x: x if isinstance(x, str) or x is None
                         else "+".join(os.path.basename(p)[:-5] for p in x))
def test_every_subset_is_written_only_if_every_host_boots_and_accepts_it(paths, qemu, answers, tmp_path, capsys):
    out = tmp_path / "baseline.json"
    rc, doc_text, err = run(["baseline", *paths, "--json", "-o", str(out)] + (["--qemu", qemu] if qemu else []),
                            capsys)
    doc = json.loads(doc_text)
    o = doc["outcome"]
    answers = {s: a for (s, q), a in answers.items() if q == qemu}
    assert o["holds"] is (answers[frozenset(paths)] is not None)
    if rc == 0:
        assert o["holds"] and o["verdict"] == "written" and not o["blocked"] and not err
        written = json.loads(out.read_text())
        assert written["contract"] == doc["contract"]
        assert doc["contract"]["digest"] == answers[frozenset(paths)]["contract"]
        assert all(h["boots_with_contract"] and h["accepts_incoming"] for h in doc["hosts"].values())
        engine_says_it_holds(doc, paths, QEMU[qemu])
        return
    assert rc == 1 and not out.exists(), err
    assert not o["holds"] and o["blocked"]
    assert err.startswith("abiguard: no contract written")
    for label, b in o["blocked"].items():
        rep = doc["hosts"][label]
        assert b["accepts"] is rep["accepts_incoming"] and b["boots"] is rep["boots_with_contract"]
        assert not (b["accepts"] and b["boots"])
        assert b["why"] and all(": VM has " in line for line in b["why"]), b["why"]   # register and both values
        assert f"  {label}: " in err and all(line in err for line in b["why"])
    # the fewest to leave out: each suggestion's rest has the contract it names, no smaller removal has one
    rests = [frozenset(paths) - frozenset(s["leave_out"]) for s in o["leave_out"]]
    assert rests, "a refusal always has one: every single host has its own contract"
    assert len({len(s["leave_out"]) for s in o["leave_out"]}) == 1
    smaller = [frozenset(paths) - frozenset(r) for k in range(1, len(o["leave_out"][0]["leave_out"]))
               for r in itertools.combinations(paths, k)]
    assert not any(answers[r] for r in smaller)
    for s, rest in zip(o["leave_out"], rests):
        assert answers[rest] is not None and answers[rest]["contract"] == s["contract"]
        assert sorted(rest) == s["hosts"]
        assert f"leave out {', '.join(s['leave_out'])}: the rest have contract {s['contract'][:19]}" in err


def test_the_human_report_of_a_refusal_and_the_advice_taken(capsys, tmp_path):
    """without --json: the reasons on stdout, exit 1, nothing written; the rest it names is
    written by the same command"""
    paths = [p for p in ARM if os.path.basename(p)[:-5] in ("6.1.0-50-arm64", "6.12.117+deb13-arm64",
                                                               "7.2.13+deb14-arm64")]
    out = tmp_path / "b.json"
    rc, text, err = run(["baseline", *paths, "--qemu", "11.1", "-o", str(out)], capsys)
    _, doc_text, _ = run(["baseline", *paths, "--qemu", "11.1", "--json"], capsys)
    o = json.loads(doc_text)["outcome"]
    if o["holds"]:
        assert rc == 0 and out.exists()
        return
    assert rc == 1 and not out.exists() and not err
    assert text.startswith("abiguard: no contract written") and "leave out " in text
    rest = [p for p in paths if p not in o["leave_out"][0]["leave_out"]]
    rc, text, _ = run(["baseline", *rest, "--qemu", "11.1", "-o", str(out)], capsys)
    assert rc == 0 and json.loads(out.read_text())["contract"]["digest"] == o["leave_out"][0]["contract"]
    assert all("accepts and boots VMs with this contract" in text for _ in rest)


def test_fold_takes_the_value_of_a_host_that_cannot_change_a_field():
    """before 6.7 no ID register is writable: {5.10, 6.1} must have equal values, and the
    conflicts say which fields differ, with both hosts' values (the contract is refused)"""
    paths = [p for p in ARM if os.path.basename(p).startswith(("5.10", "6.1.0"))]
    doc = baseline.compute([LOADED[p] for p in paths], leave_out=False)
    text = "\n".join(doc["conflicts"])
    assert "ID_AA64DFR0_EL1.DebugVer: 5.10.0-32-arm64 has no writable ID registers (before Linux 6.7), so it " \
           "gives only its own 0x9; 6.1.0-50-arm64 has no writable ID registers (before Linux 6.7), so it gives " \
           "only its own 0x6: no value every host takes" in text, text
    assert "ID_AA64DFR0_EL1.PMUVer" in text and "ID_DFR0_EL1.PerfMon" in text
    assert doc["outcome"]["holds"] is False


def test_the_three_debian_kernels_name_hcx_where_the_lab_sees_it():
    """{6.1, 6.12, 7.2}: the field trixie refuses is named in the conflicts and in 6.12's reasons"""
    keys = ("6.1.0-50-arm64", "6.12.117+deb13-arm64", "7.2.13+deb14-arm64")
    paths = [p for p in ARM if os.path.basename(p)[:-5] in keys]
    doc = baseline.compute([LOADED[p] for p in paths])
    assert any(c.startswith("ID_AA64MMFR1_EL1.HCX: 6.1.0-50-arm64 has no writable ID registers")
               and "6.12.117+deb13-arm64 has the field outside its writable mask" in c for c in doc["conflicts"])
    trixie = next(p for p in paths if "6.12" in p)
    assert any("field HCX" in w and "outside its writable mask" in w for w in doc["outcome"]["blocked"][trixie]["why"])


def test_accept_only_is_explicit_named_and_still_needs_acceptance(capsys, tmp_path):
    """{6.12, 7.2} plus 6.1 to roll back to: --accept-only for a host that accepts but
    cannot boot is written, named in the output and the document; a host that refuses the
    arrival is never waved through by it"""
    p612, p72 = (next(p for p in ARM if os.path.basename(p)[:-5] == k)
                 for k in ("6.12.117+deb13-arm64", "7.2.13+deb14-arm64"))
    p61 = next(p for p in ARM if os.path.basename(p)[:-5] == "6.1.0-50-arm64")
    rc, doc_text, _ = run(["baseline", p612, p72, "--rollback-to", p61, "--json"], capsys)
    refused_text = doc_text
    doc = json.loads(doc_text)
    refusing = [label for label, b in doc["outcome"]["blocked"].items() if not b["accepts"]]
    assert rc == 1 and refusing                                 # 6.12 refuses HCX: accept-only cannot help
    for label in refusing:
        rc, _, _ = run(["baseline", p612, p72, "--rollback-to", p61, "--accept-only", label, "--json"], capsys)
        assert rc == 1
    # a host that accepts the contract but cannot boot it: 7.2 with another cache geometry
    # (CCSIDR[0]'s associativity; KVM >= 6.3 takes a line size not below its own arriving,
    # and a start keeps the host's): written only with the option, and said so
    doc72 = copy.deepcopy(LOADED[p72].doc)
    for probed in doc72["kvm"]["aarch64"]["configs"].values():
        regs = probed.get("registers") or {}
        if CCSIDR0 in regs:
            regs[CCSIDR0] = hex(int(regs[CCSIDR0], 16) ^ 0x8)
    doc72["digest"] = profile.digest_of(doc72)
    other = tmp_path / "7.2-other-cache.json"
    profile.save(doc72, str(other))
    paths = [p72, str(other)]
    rc, doc_text, _ = run(["baseline", *paths, "--json"], capsys)
    doc = json.loads(doc_text)
    blocked = doc["outcome"]["blocked"]
    if rc == 1:             # the other host cannot realise the cache geometry at a start
        assert set(blocked) == {str(other)} and blocked[str(other)]["accepts"], blocked
        assert any("DEMUX_CCSIDR[0]" in w and w.startswith("cannot boot it") for w in blocked[str(other)]["why"])
        assert "--accept-only" in run(["baseline", *paths], capsys)[1]      # the option is offered, named
    out = tmp_path / "b.json"
    rc, text, err = run(["baseline", *paths, "--accept-only", str(other), "-o", str(out)], capsys)
    assert rc == 0, text + err
    written = json.loads(out.read_text())
    assert written["outcome"]["accept_only"] == [str(other)]
    assert f"  {other}: accepts and " in text and "(--accept-only: it need only accept them)" in text, text
    for label, rep in written["hosts"].items():
        assert rep["accepts_incoming"] and (rep["boots_with_contract"] or label == str(other))
    # and pin never pins to a refused document
    refused = tmp_path / "refused.json"
    refused.write_text(refused_text)
    with pytest.raises(Exception, match="refused baseline"):
        baseline.load_contract_or_profile(str(refused), written_only=True)


def test_accept_only_names_only_listed_hosts(capsys):
    rc, _, err = run(["baseline", ARM[0], "--accept-only", "no-such-host"], capsys)
    assert rc == 2 and "neither a listed host nor a profile file" in err


@pytest.fixture(scope="module")
def fleet_dirs(tmp_path_factory):
    """A fleet directory per subset of the four kernels, two hosts per profile, the first
    host of the first profile upgraded from the last (so a rollback profile is in play)."""
    kernels = [p for p in ARM if os.path.basename(p).count("-") == 2 or "deb1" in os.path.basename(p)
               and not os.path.basename(p).endswith(("a72.json", "n1.json"))]
    out = []
    for k in range(1, len(kernels) + 1):
        for s in itertools.combinations(kernels, k):
            root = tmp_path_factory.mktemp("fleet")
            store = Store(str(root))
            for i, p in enumerate(s):
                for n in range(2):
                    store.publish(LOADED[p].doc, os.path.basename(p), f"h{i}{n}")
            if len(s) > 1:
                store.publish(LOADED[s[0]].doc, os.path.basename(s[0]), "up")
                store.publish(LOADED[s[-1]].doc, os.path.basename(s[-1]), "up")   # previous: s[0]
            out.append((str(root), list(s)))
    return out


def test_fleet_baseline_holds_the_same_invariant(fleet_dirs, capsys, tmp_path):
    assert len(fleet_dirs) == 15
    for root, paths in fleet_dirs:
        out = tmp_path / "fleet.json"
        if out.exists():
            out.unlink()
        rc, text, err = run(["fleet", "baseline", "--fleet", root, "-o", str(out)], capsys)
        rc_json, doc_text, _ = run(["fleet", "baseline", "--fleet", root, "--json"], capsys)
        doc = json.loads(doc_text)
        # the same answer abiguard baseline gives over the same distinct profiles
        assert doc["outcome"]["holds"] is (baseline.holds([LOADED[p] for p in paths]) is not None), paths
        assert rc == rc_json
        if rc == 0:
            assert all(h["boots_with_contract"] and h["accepts_incoming"] for h in doc["hosts"].values())
            engine_says_it_holds(doc, paths)
            assert json.loads(out.read_text())["contract"] == doc["contract"]
        else:
            assert rc == 1 and not out.exists() and "abiguard: no contract written" in text, text + err
            assert doc["outcome"]["blocked"] and doc["outcome"]["leave_out"]
            for s in doc["outcome"]["leave_out"]:
                rest = [p for p in paths if not any(LOADED[p].digest[7:19] in x for x in s["leave_out"])]
                assert baseline.holds([LOADED[p] for p in rest]) is not None, (paths, s)


@pytest.mark.parametrize("qemu", [(7, 2), (11, 1)])
def test_matrix_pin_first_is_the_baseline_question(qemu):
    """a cell is "pin first" exactly when baseline over the two hosts writes a contract"""
    from abiguard.fleet.matrix import cell

    for s, d in itertools.permutations(KERNELS, 2):
        c = cell(LOADED[s], LOADED[d], qemu)
        if c["state"] == "keeps":
            continue
        assert (c["state"] == "pin first") is (baseline.holds([LOADED[s], LOADED[d]], qemu=qemu) is not None), (s, d)


def test_whatif_says_whether_the_fleet_keeps_a_contract(tmp_path):
    """fleet whatif asks the same question of the fleet as it would be: {6.12, 7.2} (judged
    on the strict model: the bundled profiles name no QEMU) and one host upgraded to 7.2"""
    from abiguard.fleet import whatif
    from abiguard.fleet.judge import Judge

    store = Store(str(tmp_path))
    k612, k72 = (next(p for p in KERNELS if os.path.basename(p).startswith(k)) for k in ("6.12", "7.2"))
    for name, p in (("a", k612), ("b", k72), ("c", k72)):
        store.publish(LOADED[p].doc, os.path.basename(p), name)
    records = store.records()
    profiles = store.profiles_of(records)
    a = next(r for r in records if r.name == "a")
    doc = whatif.whatif(a, LOADED[k72], records, profiles, [], {}, Judge())
    now = baseline.holds([LOADED[k612], LOADED[k72]])
    then = baseline.holds([LOADED[k72]], [LOADED[k612]])
    assert doc["fleet_contract"]["now"]["holds"] is (now is not None)
    assert doc["fleet_contract"]["then"]["holds"] is (then is not None)
    text = "\n".join(whatif.lines(doc))
    assert "the fleet's contract now: " in text and "the fleet's contract then: " in text
    if now is not None and then is None:
        assert whatif.harmful(doc)
