"""What an operator reads, held to golden files: the human-readable forms of ``check``,
``diff``, ``matrix``, ``status`` and the hook's refusal line, over the bundled real
profiles, so a change in wording is a visible diff (``ABIGUARD_REGENERATE=1`` rewrites
them). ``status`` reads domains through libvirt's own test driver (``test:///FILE``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "data" / "report"
ARM = "plugin/abiguard/data/arm64"
X86 = "tests/data/x86/profiles"


def abiguard(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "plugin"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "abiguard", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


def hold(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("ABIGUARD_REGENERATE"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with ABIGUARD_REGENERATE=1"
    assert text == path.read_text(), f"{name}: the output changed (ABIGUARD_REGENERATE=1 to accept)"


CASES = {
    "check-7.2-to-6.12": ["check", "--from", f"{ARM}/7.2.13+deb14-arm64.json",
                          "--to", f"{ARM}/6.12.117+deb13-arm64.json"],
    "check-7.2-to-6.1": ["check", "--from", f"{ARM}/7.2.13+deb14-arm64.json", "--to", f"{ARM}/6.1.0-50-arm64.json"],
    "check-6.1-to-7.2": ["check", "--from", f"{ARM}/6.1.0-50-arm64.json", "--to", f"{ARM}/7.2.13+deb14-arm64.json"],
    "check-x86-sid-to-bookworm": ["check", "--from", f"{X86}/sid.json", "--to", f"{X86}/bookworm.json"],
    "diff-6.1-7.2": ["diff", f"{ARM}/6.1.0-50-arm64.json", f"{ARM}/7.2.13+deb14-arm64.json"],
    "matrix": ["matrix"],
    "matrix-all-builtin": ["matrix", "--all-builtin", "--qemu", "11.1"],
}
#: a fleet of the bundled arm64 hosts: three of them run one kernel on three CPU models
FLEET = {"arm510": "5.10.0-32-arm64", "arm61": "6.1.0-50-arm64", "arm612": "6.12.117+deb13-arm64",
         "arm612-a72": "6.12.117+deb13-arm64-cortex-a72", "arm612-n1": "6.12.117+deb13-arm64-neoverse-n1",
         "arm72": "7.2.13+deb14-arm64", "arm72-a72": "7.2.13+deb14-arm64-cortex-a72"}
#: the terminal width every text report fits (issue 27)
WIDTH = 100


@pytest.mark.parametrize("name", sorted(CASES))
def test_report_reads_as_its_golden_file(name: str) -> None:
    cp = abiguard(*CASES[name])
    assert cp.returncode in (0, 1) and cp.stderr == "", cp.stderr
    hold(name, cp.stdout)


def test_fleet_matrix_reads_as_its_golden_file(tmp_path) -> None:
    """Hosts told apart by what differs (the three 6.12 hosts by CPU model), every cell that
    does not keep the ABI on a line naming its pair, pin-first cells naming the pins."""
    for host, name in FLEET.items():
        cp = abiguard("fleet", "publish", "--fleet", str(tmp_path), "--host", host, f"{ARM}/{name}.json")
        assert cp.returncode == 0, cp.stderr
    cp = abiguard("fleet", "matrix", "--fleet", str(tmp_path), "--qemu", "11.1")
    assert cp.returncode == 0 and cp.stderr == "", cp.stderr
    assert "CPU cortex-a72 (MIDR 0x410fd083)" in cp.stdout and "CPU MIDR 0xf0510" in cp.stdout
    assert "pin first: on 7.2.13+deb14-arm64 at start: PSCI_VERSION = 0x10001" in cp.stdout
    hold("fleet-matrix", cp.stdout)


def test_the_matrices_fit_a_terminal() -> None:
    """Every line of ``matrix`` (the bundled hosts, and all of them on one QEMU) and ``fleet
    matrix`` within 100 columns: tables split into column blocks, reasons wrapped."""
    names = ["matrix.txt", "matrix-all-builtin.txt", "fleet-matrix.txt"]
    wide = [(n, i + 1, len(ln)) for n in names for i, ln in enumerate((GOLDEN / n).read_text().splitlines())
            if len(ln) > WIDTH]
    assert not wide, f"lines wider than {WIDTH} columns (file, line, width): {wide[:20]}"


def test_one_word_per_verdict_everywhere() -> None:
    """ALLOW / REFUSE, whatever prints it (the CLI's check and diff, the report module the
    hook's line is built from)."""
    from abiguard.engine.report import VERDICT

    assert VERDICT == {True: "ALLOW", False: "REFUSE"}
    for name in ("check-7.2-to-6.12", "check-6.1-to-7.2", "diff-6.1-7.2"):
        text = (GOLDEN / f"{name}.txt").read_text()
        heads = [ln for ln in text.splitlines() if not ln.startswith(" ")]
        assert heads and all(ln.endswith((": ALLOW", ": REFUSE")) for ln in heads), heads


def test_version_is_the_packages() -> None:
    from abiguard import __version__

    cp = abiguard("--version")
    assert (cp.returncode, cp.stdout.strip()) == (0, f"abiguard {__version__}")


def _node(tmp_path: Path) -> str:
    """A libvirt test-driver node: an arm64 VM pinned to the 7.2 kernel's contract, a
    plain x86 VM, both 'running' (the test driver runs what it defines)."""
    from abiguard.model import contract, profile
    from abiguard.xml.contract import to_xml_text
    from abiguard.xml.edit import boot_stamp

    c = contract.from_profile(profile.load(str(REPO / ARM / "7.2.13+deb14-arm64.json")))
    meta = to_xml_text(c) + boot_stamp(c, nonce="00" * 8, at="2026-01-01T00:00:00Z").decode()
    node = (f"<node><domain type='test'><name>arm-pinned</name><uuid>6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10</uuid>"
            f"<memory>65536</memory><metadata>{meta}</metadata><os><type arch='aarch64' machine='virt-7.2'>hvm"
            f"</type></os></domain><domain type='test'><name>plain</name>"
            f"<uuid>6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a11</uuid><memory>65536</memory><os><type arch='x86_64'>hvm"
            f"</type></os></domain></node>")
    path = tmp_path / "node.xml"
    path.write_text(node)
    return f"test://{path}"


def test_status_reads_as_its_golden_file(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    cp = abiguard("status", "-c", _node(tmp_path), f"{ARM}/7.2.13+deb14-arm64.json", f"{ARM}/6.12.117+deb13-arm64.json")
    assert cp.returncode == 0, cp.stderr
    hold("status", cp.stdout)


def test_hook_refusal_line_reads_as_its_golden_file(tmp_path: Path) -> None:
    from abiguard import install
    from abiguard.model import contract, profile
    from abiguard.xml.contract import to_xml_text
    from abiguard.xml.edit import boot_stamp

    (tmp_path / "var/lib/abiguard").mkdir(parents=True)
    profile.save(profile.load(str(REPO / ARM / "6.1.0-50-arm64.json")).doc,
                 str(tmp_path / "var/lib/abiguard/host-profile.json"))
    shim = tmp_path / "hook"
    shim.write_text(install.render("qemu", sys.executable, str(REPO / "plugin")))
    shim.chmod(0o755)
    c = contract.from_profile(profile.load(str(REPO / ARM / "7.2.13+deb14-arm64.json")))
    meta = to_xml_text(c) + boot_stamp(c, nonce="00" * 8, at="2026-01-01T00:00:00Z").decode()
    xml = (f"<domain type='kvm'><name>vm</name><uuid>6f1c0d2e-8a51-4d8e-9d53-2b1f8c3e7a10</uuid>"
           f"<metadata>{meta}</metadata><os><type arch='aarch64' machine='virt-7.2'>hvm</type></os>"
           f"<devices/></domain>").encode()
    cp = subprocess.run([str(shim), "vm", "migrate", "begin", "-"], input=xml, capture_output=True, timeout=60,
                        env={"ABIGUARD_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 1
    hold("hook-refusal-7.2-vm-to-6.1", cp.stderr.decode())


def test_every_json_answer_names_a_schema_the_man_page_documents(tmp_path: Path) -> None:
    import json

    man = (REPO / "packaging/debian/abiguard.8").read_text().replace("\\-", "-")
    runs = {"check": CASES["check-7.2-to-6.1"] + ["--json"], "diff": CASES["diff-6.1-7.2"] + ["--json"],
            "matrix": ["matrix", "--json"]}
    try:
        import libvirt  # noqa: F401

        runs["status"] = ["status", "--json", "-c", _node(tmp_path)]
    except ImportError:
        pass
    for name, args in runs.items():
        doc = json.loads(abiguard(*args).stdout)
        assert doc["schema"] == f"abiguard-{name}/1", (name, doc.get("schema"))
        assert f"abiguard-{name}/1" in man, name
        if name == "check":
            assert doc["verdict"] in ("allow", "refuse") and "by_qemu" in doc
