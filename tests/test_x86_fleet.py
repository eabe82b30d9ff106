"""abiguard's x86 verdict against a real mixed-version fleet: libvirt 9.0 + QEMU 7.2
(bookworm, this machine), libvirt 11.3 + QEMU 10.0 (trixie) and libvirt 12.x + QEMU 11.x
(sid), the latter two chrooted hosts of the two-host lab (tests/lab/x86fleet.py).

Three VMs per ordered pair: unpinned (host-model, its boot host's newest machine type),
host-model (host-model on the baseline's machine type, so the CPU is the first thing that
differs: the rollback of a VM started on the newest host) and pinned (``abiguard pin`` to
``abiguard baseline --libvirt`` over the three hosts).

Real part (marker lab; root, /dev/kvm, debootstrap, network for the first rootfs build):
the fleet is recorded *on this machine* and abiguard is held to what happened here: every
move that failed or changed what the guest reads is refused, naming the machine type, the
CPU model or feature (the one libvirt names when it refuses); the baseline is one every
host's libvirt confirms (compareHypervisorCPU), starts on every host and keeps the guest's
CPUID, KVM PV leaf and IA32_ARCH_CAPABILITIES on every move; the contract's PV and
arch-capabilities values are what the guest itself reads. Then the rollback newest ->
oldest through the real hook installed in both hosts.

Pure part: the same rules over the committed record (tests/data/x86, documentation and a
regression record: recorded on one machine's CPU, so only the committed profiles are held
to it, never this machine's).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.realparts import need, need_kvm
from lab import warmup, x86fleet as xf

DATA = xf.DATA
VERSIONS = xf.VERSIONS
PAIRS = [(s, d) for s in VERSIONS for d in VERSIONS if s != d]


# ---------------------------------------------------------------------------- pure part
@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads((DATA / "groundtruth.json").read_text())


@pytest.fixture(scope="module")
def profiles() -> dict:
    return xf.load_profiles(DATA)


@pytest.fixture(scope="module")
def verdicts(truth, profiles) -> dict:
    return xf.verdicts(truth, profiles)


def case_of(truth: dict, vm: str, src: str, dst: str) -> dict:
    found = [c for c in truth["cases"] if (c["vm"], c["source"], c["dest"]) == (vm, src, dst)]
    assert len(found) == 1, f"{vm} {src}->{dst}: {len(found)} cases recorded"
    return found[0]


KINDS = ("unpinned", "host-model", "pinned")


def test_groundtruth_covers_the_fleet(truth, profiles):
    assert set(truth["versions"]) == set(VERSIONS)
    assert truth["versions"]["bookworm"]["libvirt"].startswith("9.") and truth["versions"]["trixie"]["libvirt"] \
        .startswith("11."), truth["versions"]
    for vm in KINDS:
        for s, d in PAIRS:
            case = case_of(truth, vm, s, d)
            assert case["outcome"] in ("kept", "changed", "failed"), case["outcome"]
            if case["outcome"] != "failed":
                assert case["before"]["cpuid"] in truth["cpuid_dumps"]
                assert case["after"]["cpuid"] in truth["cpuid_dumps"]
    for v, p in profiles.items():
        assert p.digest == truth["versions"][v]["digest"], f"{v}: profile and ground truth disagree"


def test_baseline_machine_type_exists_on_every_host(profiles):
    fleet = json.loads((DATA / "fleet.json").read_text())
    machine = fleet["contract"]["machine_type"]
    assert machine, "the baseline names no machine type"
    for v, p in profiles.items():
        assert machine in p.qemu.machine_names(), f"{machine} not on {v}"


def test_pinned_vm_really_kept_its_cpuid_everywhere(truth):
    """The ground truth the verdict is held to: the baseline-pinned VM migrates between all
    three versions, both ways, and the guest reads the same CPUID after every move."""
    for s, d in PAIRS:
        case = case_of(truth, "pinned", s, d)
        assert case["outcome"] == "kept", (s, d, case.get("migrate", {}).get("error"), case.get("cpuid_diff"))


def hold_verdict_to_truth(case: dict, v) -> None:
    """The rules a verdict is held to, against what really happened to that VM."""
    vm, src, dst = case["vm"], case["source"], case["dest"]
    lines = [p.line() for p in v.problems]
    if case["outcome"] == "failed":
        error = case["migrate"]["error"]
        assert not v.allow, f"abiguard allows {vm} {src}->{dst}, but it failed: {error}"
        if "machine type" in error:
            assert any(p.register == "machine type" and p.source == case["machine"] for p in v.problems), lines
        if "unknown CPU feature: " in error:      # the feature libvirt names is among abiguard's
            feat = error.split("unknown CPU feature: ", 1)[1].split()[0].strip("'\".,")
            assert any(p.field == feat for p in v.problems), (feat, lines)
    elif case["outcome"] == "changed":
        assert not v.allow, f"abiguard allows {vm} {src}->{dst}, but the guest's CPUID changed: {case['cpuid_diff']}"
        assert any(p.register.startswith("CPU") or p.register in ("machine type", "KVM PV features",
                                                                     "IA32_ARCH_CAPABILITIES")
                   for p in v.problems), lines
    if vm == "pinned":
        assert case["outcome"] == "kept", (src, dst, case.get("migrate", {}).get("error"), case.get("cpuid_diff"))
        assert v.allow, f"abiguard refuses the baseline-pinned VM {src}->{dst}, which really kept its CPUID: {lines}"


@pytest.mark.parametrize("src, dst", PAIRS, ids=[f"{s}-{d}" for s, d in PAIRS])
@pytest.mark.parametrize("vm", KINDS)
def test_verdict_agrees_with_ground_truth(truth, verdicts, vm, src, dst):
    hold_verdict_to_truth(case_of(truth, vm, src, dst), verdicts[(vm, src, dst)])


def test_a_dump_still_being_written_is_not_read() -> None:
    """the serial log is read while the guest prints: only complete lines and dumps count"""
    done = "ABIGUARD-CPUID-BEGIN 1\r\n00000000 00000000: 0000000d 68747541 444d4163 69746e65\r\nABIGUARD-CPUID-END\r\n"
    assert xf.parse_dumps(done) == {1: {"0x0.0": ["0x0000000d", "0x68747541", "0x444d4163", "0x69746e65"]}}
    for cut in range(len(done) - 1):
        assert xf.parse_dumps(done[:cut]) == {}, cut
    assert xf.parse_dumps(done + "ABIGUARD-CPUID-BEGIN ") == xf.parse_dumps(done)


def test_changed_cpuid_is_named(truth, verdicts):
    """A move that changed CPUID bits: the refusal should name the feature that changed
    (e.g. cmp_legacy for CPUID 0x80000001 ECX bit 1), not only unrelated ones."""
    named = {"0x80000001.0 ecx": {0x2: "cmp_legacy"}}
    misses = []
    for case in truth["cases"]:
        if case["outcome"] != "changed":
            continue
        v = verdicts[(case["vm"], case["source"], case["dest"])]
        fields = {p.field for p in v.problems}
        for line in case["cpuid_diff"]:
            key = line.split(":")[0]
            lost = int(line.split("-")[-1].rstrip(")"), 16)
            for bit, feat in named.get(key, {}).items():
                if lost & bit and feat not in fields:
                    named_now = sorted(f for f in fields if f)[:6]
                    misses.append(f"{case['vm']} {case['source']}->{case['dest']}: {feat} changed, "
                                  f"abiguard names {named_now}")
    assert not misses, "\n".join(misses)


# ---------------------------------------------------------------------------- real part
@pytest.fixture(scope="module")
def real_parts():
    from lab.conftest_twohost import lab_problems

    need(not lab_problems(), "two-host libvirt lab: " + "; ".join(lab_problems()))
    need_kvm()
    need(not xf.problems(), "x86 fleet lab: " + "; ".join(xf.problems()))
    cp = subprocess.run(["env", "-i", sys.executable, "-I", "-c", "import abiguard, qemu.qmp"],
                        check=False, capture_output=True, text=True, timeout=30)
    need(cp.returncode == 0, f"abiguard and qemu.qmp installed in {sys.executable} (packaging/setup-dev test)")
    warmup.wait("x86-rootfs")
    try:
        rootfs = xf.build_rootfs()
    except Exception as e:  # noqa: BLE001 - a missing mirror is a missing real part
        need(False, f"Debian trixie/sid root filesystems (tests/lab/rootfs.sh build trixie sid): {e}")
    return rootfs


@pytest.fixture(scope="module")
def fresh(real_parts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("x86fleet")
    xf.record(out)
    sys.stderr.write("\n" + xf.matrix(json.loads((out / "groundtruth.json").read_text())) + "\n")
    return out


@pytest.fixture(scope="module")
def fresh_truth(fresh) -> dict:
    return json.loads((fresh / "groundtruth.json").read_text())


@pytest.mark.lab
def test_this_machines_fleet_is_judged_right(fresh, fresh_truth, truth):
    """Every move, held to what happened on this machine (not to the committed record,
    which another CPU made)."""
    profiles = xf.load_profiles(fresh)
    verdicts = xf.verdicts(fresh_truth, profiles)
    sys.stderr.write(f"\nx86 fleet on {fresh_truth['machine']['cpu']} ({fresh_truth['machine']['kernel']}); "
                     f"committed record from {truth['machine']['cpu']}\n")
    for vm in KINDS:
        for s, d in PAIRS:
            hold_verdict_to_truth(case_of(fresh_truth, vm, s, d), verdicts[(vm, s, d)])


@pytest.mark.lab
def test_the_baseline_starts_everywhere_and_every_libvirt_confirms_it(fresh, fresh_truth):
    fleet = json.loads((fresh / "fleet.json").read_text())
    assert set(fleet["libvirt"]) == set(VERSIONS)
    for v, said in fleet["libvirt"].items():
        assert said and said["compare"] in ("identical", "superset"), (v, said)
    assert fleet["contract"]["x86_64"]["cpu_model"], fleet["contract"]
    # the x86 half of the invariant (issue 26): abiguard itself says every host it was made
    # from starts and accepts it; the real starts and moves below hold it to that
    for v, rep in fleet["hosts"].items():
        assert rep["starts_with_contract"] and not rep["cannot_start"], (v, rep)
        assert rep["accepts_incoming"], (v, rep["incoming_problems"])
    for s, d in PAIRS:
        case = case_of(fresh_truth, "pinned", s, d)
        assert case["start_attempts"][0]["ok"], (s, case["start_attempts"])
        assert case["outcome"] == "kept", (s, d, case.get("migrate", {}).get("error"), case.get("cpuid_diff"))


@pytest.mark.lab
def test_the_contracts_pv_and_arch_capabilities_are_what_the_guest_reads(fresh, fresh_truth):
    """CPUID 0x40000001 EAX and IA32_ARCH_CAPABILITIES (rdmsr 0x10a) as the guest itself
    read them on its boot host, against the contract the verdict was given."""
    profiles = xf.load_profiles(fresh)
    checked = 0
    seen: dict[str, dict[str, str]] = {}
    for case in fresh_truth["cases"]:
        before = case.get("before")
        if not before or not before.get("cpuid"):
            continue
        dump = fresh_truth["cpuid_dumps"][before["cpuid"]]
        body = xf.case_contract(case, profiles).body
        assert int(dump["0x40000001.0"][0], 16) == body.pv_features, (case["name"], dump["0x40000001.0"])
        # the guest tries rdmsr 0x10a whatever CPUID says: with the MSR in the contract it
        # reads the contract's value; without, the MSR is not there (#GP), never a value
        reads = xf.guest_reads(dump)
        has_msr = body.features.get("arch-capabilities") in ("require", "force")
        if has_msr:
            assert reads["cpuid_7_0_edx_29"] == "1", (case["name"], reads)
            assert reads["msr_0x10a"] == f"{body.arch_capabilities:#x}", (case["name"], reads, body.arch_capabilities)
        else:
            assert reads == {"cpuid_7_0_edx_29": "0", "msr_0x10a": "gp"}, (case["name"], reads)
        seen.setdefault(f"{case['vm']} on {case['source']}", reads)
        checked += 1
    sys.stderr.write("\nwhat the guest read of IA32_ARCH_CAPABILITIES (CPUID.7.0:EDX[29], rdmsr 0x10a):\n"
                     + "".join(f"  {k}: {v}\n" for k, v in sorted(seen.items())))
    assert checked >= len(PAIRS) * len(KINDS) // 2, checked


@pytest.fixture(scope="module")
def hooked(real_parts, fresh):
    """sid (a) and bookworm (b), abiguard installed into both by its own install (inside
    the chroot for sid), each host's profile probed by itself."""
    xf.build_guest()
    fl = xf.FleetLab("sid", "bookworm", "abgfh", real_parts, hook=True)
    try:
        fl.up()
        for h in ("a", "b"):
            assert (fl.lab.host_state(h) / "etc" / "hooks" / "qemu.d" / "abiguard").exists()
            fl.probe(h)
        yield fl
    finally:
        fl.down()
        import shutil

        shutil.rmtree(xf.SHARED, ignore_errors=True)


def set_policy(fl, host: str, unpinned: str) -> None:
    (fl.lab.host_state(host) / "abiguard-etc" / "abiguard.toml").write_text(
        f'[policy]\nunpinned = "{unpinned}"\nallow_widening = false\n')


def hook_line(cp: subprocess.CompletedProcess) -> str:
    return next((ln for ln in cp.stderr.splitlines() if "abiguard:" in ln), "")


@pytest.mark.lab
@pytest.mark.parametrize("kind", ["unpinned", "host-model"])
def test_rollback_sid_to_bookworm_unpinned_through_the_hook(hooked, fresh_truth, kind):
    """A VM started with host-model on the newest host, moved back to the oldest without a
    contract: policy refuse stops it up front; policy warn lets libvirt try, and what
    happens is what this machine's record says (unpinned: the machine type; host-model on
    the baseline's machine type: a CPU feature libvirt 9.0 does not know)."""
    fl, name = hooked, f"x86-hook-{kind}"
    truth_case = case_of(fresh_truth, kind, "sid", "bookworm")
    machine = truth_case["machine"]
    try:
        fl.define("a", name, machine, truth_case["cpu"])
        assert fl.start("a", name).returncode == 0
        pid = fl.lab.qemu_pid("a", name)
        # policy refuse: abiguard says no before anything moves
        set_policy(fl, "b", "refuse")
        cp = fl.lab.migrate("a", "b", name, *xf.MOVE, p2p=True, check=False)
        assert cp.returncode != 0 and "has no guest ABI contract" in cp.stderr, cp.stderr
        assert fl.lab.domstate("a", name) == "running" and fl.lab.qemu_pid("a", name) == pid
        # policy warn: abiguard lets it through; what happens is the ground truth's outcome
        set_policy(fl, "b", "warn")
        cp = fl.lab.migrate("a", "b", name, *xf.MOVE, p2p=True, check=False)
        sys.stderr.write(f"\nunpinned sid->bookworm, policy warn: rc={cp.returncode} {cp.stderr.strip()}\n")
        assert (cp.returncode == 0) == truth_case["migrate"]["ok"], cp.stderr
        if not truth_case["migrate"]["ok"]:
            assert truth_case["migrate"]["error"].split(":", 1)[-1].strip()[:60] in cp.stderr, cp.stderr
            assert fl.lab.domstate("a", name) == "running" and fl.lab.qemu_pid("a", name) == pid
    finally:
        set_policy(fl, "b", "warn")
        fl.cleanup(name)


@pytest.mark.lab
@pytest.mark.parametrize("machine", ["q35", "baseline"])
def test_rollback_sid_to_bookworm_pinned_to_its_boot_host_is_refused(hooked, fresh, machine):
    """Pinned to what it has on sid (``abiguard pin VM`` inside sid): the hook on bookworm
    refuses up front, naming the machine type (sid's newest) or, on a machine type both
    have, the CPU model or a CPU feature bookworm's libvirt or QEMU lacks; the VM stays."""
    fl, name = hooked, f"x86-hook-ownpin-{machine}"
    if machine == "baseline":
        machine = json.loads((fresh / "fleet.json").read_text())["contract"]["machine_type"]
    try:
        fl.define("a", name, machine, "host-model")
        out = fl.abiguard("a", "pin", name).stdout
        sys.stderr.write(f"\npin on sid ({machine}): {out.strip()}\n")
        cp = fl.start("a", name)
        assert cp.returncode == 0, f"sid cannot start a VM pinned to sid's own profile: {cp.stderr}"
        pid = fl.lab.qemu_pid("a", name)
        cp = fl.lab.migrate("a", "b", name, *xf.MOVE, p2p=True, check=False)
        line = hook_line(cp)
        sys.stderr.write(f"refused: {line}\n")
        assert cp.returncode != 0 and "abiguard: refusing migrate" in line, cp.stderr
        if machine == "q35":
            assert "machine type" in line and "pc-q35-" in line, line
        else:
            assert "CPU model" in line or "CPU feature" in line, line
        assert fl.lab.domstate("a", name) == "running" and fl.lab.qemu_pid("a", name) == pid
    finally:
        fl.cleanup(name)


@pytest.mark.lab
def test_rollback_sid_to_bookworm_and_back_pinned_to_the_baseline(hooked, fresh):
    """Pinned to the three-host baseline: the hook allows sid -> bookworm -> sid, the guest
    reads the same CPUID on both, and the stamp names the host it runs on."""
    fl, name = hooked, "x86-hook-pinned"
    try:
        fl.define("a", name, "q35", "prepin")
        subprocess.run([sys.executable, "-m", "abiguard", "pin", name, "--baseline", str(fresh / "fleet.json"),
                        "-c", fl.lab.uri("a")], check=True, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(xf.PLUGIN)))
        cp = fl.start("a", name)
        assert cp.returncode == 0, f"sid refuses to start the baseline-pinned VM: {cp.stderr}"
        before = fl.wait_dump("a", name, 1)
        assert before
        cp = fl.lab.migrate("a", "b", name, *xf.MOVE, p2p=True, check=False)
        assert cp.returncode == 0, f"sid -> bookworm refused for the baseline-pinned VM: {cp.stderr}"
        xml = fl.lab.virsh("b", "dumpxml", name).stdout
        assert "urn:abiguard:stamp:1" in xml
        fl.lab.virsh("b", "inject-nmi", name)
        after = fl.wait_dump("b", name, 2)
        assert after == before, xf.cpuid_diff(before, after)
        cp = fl.lab.migrate("b", "a", name, *xf.MOVE, p2p=True, check=False)
        assert cp.returncode == 0, f"bookworm -> sid refused for the baseline-pinned VM: {cp.stderr}"
        fl.lab.virsh("a", "reset", name)  # one NMI per boot (see CPUID_ASM): read again after a reset
        again = fl.wait_dump("a", name, 1)
        assert again == before, xf.cpuid_diff(before, again)
    finally:
        fl.cleanup(name)


@pytest.mark.lab
def test_the_baseline_said_where_its_contract_starts(fresh, fresh_truth):
    """issue 24: the baseline's outcome per host (boots_with_contract: the profile-based
    judgement, and libvirt's compareHypervisorCPU) against the pinned VM's real start there"""
    fleet = json.loads((fresh / "fleet.json").read_text())
    said = {label: rep["boots_with_contract"] for label, rep in fleet["hosts"].items()}
    libvirt_ok = {v: (x or {}).get("compare") in ("identical", "superset") for v, x in fleet["libvirt"].items()}
    started: dict[str, bool] = {}
    for c in fresh_truth["cases"]:
        if c["vm"] == "pinned":
            started[c["source"]] = started.get(c["source"], False) or c["start_attempts"][0]["ok"]
    sys.stderr.write(f"\nbaseline {fleet['outcome']['verdict']}; said boots {said}, libvirt {libvirt_ok}; "
                     f"started {started}\n")
    for v, ok in started.items():
        assert ok == (said[v] and libvirt_ok.get(v, True)), (v, ok, said[v], fleet["outcome"])
    assert fleet["outcome"]["holds"] is (all(said.values()) and all(libvirt_ok.values())
                                         and all(r["accepts_incoming"] for r in fleet["hosts"].values()))
