"""abiguard in the arm64 lab, as an operator puts it there: the arm64 .deb that
``packaging/build-deb --arch arm64`` makes, ``apt install ./abiguard_*.deb`` in every host
(its postinst probes the host), libvirtd restarted so that it finds
the hooks, the hosts' own profiles carried back here for ``abiguard baseline``."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .common import LabError, log, write_json
from .fleet import Lab

REPO = Path(__file__).resolve().parents[3]
PROFILE = "/var/lib/abiguard/host-profile.json"
CONFIG = "/etc/abiguard/abiguard.toml"


def build_deb(out: Path) -> Path:
    """The arm64 package, cross-built here (seconds; no arm64 code runs)."""
    out.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([str(REPO / "packaging/build-deb"), "--arch", "arm64", str(out)], capture_output=True,
                       text=True, timeout=900)
    debs = sorted(out.glob("abiguard_*_arm64.deb"))
    if p.returncode != 0 or not debs:
        raise LabError(f"build-deb --arch arm64 failed (rc {p.returncode}): {p.stderr[-2000:]}")
    return debs[-1]


def install(lab: Lab, deb: Path | None = None) -> dict:
    """Install abiguard in every host at once; returns per-host seconds (install, libvirtd
    restart), what the postinst printed, and the local paths of the hosts' profiles."""
    t0 = time.monotonic()
    deb = deb or build_deb(lab.dir / "deb")
    rec: dict = {"deb": deb.name, "build_s": round(time.monotonic() - t0, 1), "hosts": {}}
    errors: list[str] = []

    def one(h: str) -> None:
        try:
            lab.copy_in(h, deb, "/root/")
            t1 = time.monotonic()
            p = lab.sh(h, f"cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y ./{deb.name} 2>&1 && "
                          "dpkg-query -W -f '${Status} ${Version}\\n' abiguard", check=False, timeout=1500)
            if p.returncode != 0:
                raise LabError(f"{h}: apt install ./{deb.name} failed: {p.stdout[-1500:]}")
            install_s = round(time.monotonic() - t1, 1)
            restart_s = lab.restart_libvirtd(h)
            local = lab.dir / "profiles" / f"{h}.json"
            local.parent.mkdir(exist_ok=True)
            lab.copy_out(h, PROFILE, local)
            rec["hosts"][h] = {"install_s": install_s, "libvirtd_restart_s": restart_s, "profile": str(local),
                               "postinst": [ln for ln in p.stdout.splitlines() if ln.startswith("abiguard:")
                                            or ln.startswith("  ")]}
        except BaseException as e:  # reported below, with every host's failure
            errors.append(f"{h}: {e}")

    threads = [threading.Thread(target=one, args=(h,)) for h in lab.hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise LabError("; ".join(errors))
    rec["install_all_s"] = round(time.monotonic() - t0, 1)
    log(f"abiguard installed in {rec['install_all_s']} s: " +
        ", ".join(f"{h} {x['install_s']} s" for h, x in sorted(rec["hosts"].items())))
    return rec


def set_policy(lab: Lab, host: str, unpinned: str) -> None:
    """``[policy] unpinned`` of the host's abiguard.toml (allow | warn | refuse)."""
    if unpinned not in ("allow", "warn", "refuse"):
        raise LabError(f"unpinned policy {unpinned!r}")
    lab.sh(host, f"mkdir -p /etc/abiguard && printf '[policy]\\nunpinned = \"{unpinned}\"\\n' > {CONFIG}",
           quiet=True)


def baseline(profiles: list[Path], out: Path, accept_only: list[Path] | None = None) -> dict:
    """``abiguard baseline --json -o`` here over the hosts' own profiles: what it said, and
    either the file it wrote (``holds``) or, refused (exit 1, nothing written), the
    outcome (each host's reasons, what to leave out) and the refused contract as a contract
    file (``contract_file``) a lab may pin to see the refusal reproduced by real KVM."""
    import json

    extra = [x for p in accept_only or [] for x in ("--accept-only", str(p))]
    p = subprocess.run([sys.executable, "-m", "abiguard", "baseline", *map(str, profiles), *extra, "--json",
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    if p.returncode not in (0, 1):
        raise LabError(f"abiguard baseline failed (rc {p.returncode}): {p.stderr[-1500:]}")
    doc = json.loads(p.stdout)
    holds = doc["outcome"]["holds"]
    if holds != (p.returncode == 0) or holds != out.exists():
        raise LabError(f"abiguard baseline: exit {p.returncode}, outcome holds={holds}, file written={out.exists()}")
    contract_file, report = out.with_suffix(".contract.json"), out.with_suffix(".report.json")
    contract_file.write_text(json.dumps(doc["contract"], indent=1) + "\n")
    report.write_text(p.stdout)
    return {"file": str(out) if holds else None, "holds": holds, "contract_file": str(contract_file),
            "report": str(report),
            "outcome": doc["outcome"], "accept_only": [str(x) for x in accept_only or []],
            "hosts": {label: {"boots": h["boots_with_contract"], "accepts": h["accepts_incoming"]}
                      for label, h in doc["hosts"].items()},
            "said": p.stderr.strip().splitlines()}


def check(src: Path, dst: Path) -> dict:
    """``abiguard check --json`` for a VM booted with the source's defaults."""
    import json

    p = subprocess.run([sys.executable, "-m", "abiguard", "check", "--from", str(src), "--to", str(dst), "--json"],
                       capture_output=True, text=True, timeout=120)
    if p.returncode not in (0, 1):
        raise LabError(f"abiguard check failed (rc {p.returncode}): {p.stderr[-1500:]}")
    return json.loads(p.stdout)


def hook_log(lab: Lab, host: str, lines: int = 6) -> list[str]:
    return lab.sh(host, f"tail -n {lines} /var/log/abiguard/hook.log", check=False, quiet=True).stdout.splitlines()


@contextlib.contextmanager
def recorded(lab: Lab, name: str, runs: dict) -> Iterator[dict]:
    """Yield *runs* to the tests that fill it; whatever happens, write it to
    $ARMFLEET_RESULTS/*name* (default: the run's directory)."""
    try:
        yield runs
    finally:
        out = Path(os.environ.get("ARMFLEET_RESULTS", lab.dir)) / name
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, runs)


#: what libvirt runs of the qemu hook for a ``virsh start`` and at the destination of an
#: incoming live migration (libvirt's qemu_process.c / qemu_migration.c; the judged ones are
#: abiguard's hook.protocol.JUDGED, the others exit at the shim's first line)
START_OPS = (("prepare", "begin"), ("start", "begin"), ("started", "begin"))
ARRIVAL_OPS = (("migrate", "begin"), ("prepare", "begin"), ("start", "begin"), ("started", "begin"))
HOOK = "/etc/libvirt/hooks/qemu.d/abiguard"


def hook_cost(lab: Lab, host: str, dom: str, runs: int = 7) -> dict:
    """The installed hook run by hand inside *host*, as libvirt runs it (argv, the domain's
    XML on stdin), *runs* times per operation, against ``python3 -IS -c pass`` alternating
    with it; medians in ms. The hook's state is a copy under ABIGUARD_ROOT (the host's
    profile, config and views), so the real hook log and markers are not touched."""
    script = (
        "set -e; r=$(mktemp -d); trap 'rm -rf $r' EXIT; mkdir -p $r/etc $r/var/lib $r/var/log/abiguard; "
        "cp -a /etc/abiguard $r/etc/ 2>/dev/null || mkdir -p $r/etc/abiguard; cp -a /var/lib/abiguard $r/var/lib/; "
        f"virsh -q dumpxml --migratable {dom} > $r/dom.xml; "
        "ms() { a=$(date +%s%N); \"$@\" < $r/dom.xml >/dev/null 2>&1 || true; b=$(date +%s%N); "
        "echo $(( (b - a) / 1000 )); }; "
        f"for i in $(seq {runs}); do "
        + "".join(f"echo {op}-{ph} $(ms env ABIGUARD_ROOT=$r {HOOK} {dom} {op} {ph} -); "
                  "echo pass $(ms env ABIGUARD_ROOT=$r python3 -IS -c pass); "
                  for op, ph in dict.fromkeys(START_OPS + ARRIVAL_OPS))
        + "done")
    out = lab.sh(host, script, quiet=True, timeout=600).stdout
    samples: dict[str, list[int]] = {}
    for line in out.splitlines():
        name, _, us = line.partition(" ")
        if us.strip().isdigit():
            samples.setdefault(name, []).append(int(us))

    def median_ms(name: str) -> float:
        xs = sorted(samples[name])
        return round(xs[len(xs) // 2] / 1000, 1)
    ops = {name: median_ms(name) for name in samples}
    return {"runs": runs, "median_ms": ops,
            "start_ms": round(sum(ops[f"{o}-{p}"] for o, p in START_OPS), 1),
            "arrival_ms": round(sum(ops[f"{o}-{p}"] for o, p in ARRIVAL_OPS), 1)}
