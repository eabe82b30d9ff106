"""Ground truth without abiguard: every ordered pair of the lab's hosts, a guest booted on the
source and live-migrated to the destination (``virsh migrate --live --persistent
--undefinesource``): migrated with the same view / with a changed view / failed (libvirt's
error, the phase, RAM copied, time lost), with the exact package versions.

    python3 -m lab.armfleet.groundtruth [--out FILE] [--machines virt,virt-7.2]   (from tests/, lab up)

Economy: a failed migration leaves the guest running on its source, so one start serves all
of a source's destinations, tried with the likeliest failures first (older kernels first,
the next newer suite last); only a success makes the next destination need a new start.
Machine types: ``virt`` is what a guest gets by default (the source QEMU's newest virt-X.Y,
which an older QEMU does not know); ``virt-7.2`` is the newest type all three QEMUs run, the
one a fleet that may roll back to bookworm must use. bookworm's ``virt`` is virt-7.2, so its
records serve both."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from . import guest, machine, migration
from .common import REPO, log, set_logfile, write_json
from .fleet import GUEST_IMAGE, Lab

OUT = REPO / "tests/data/arm64/libvirt-groundtruth.json"
SUITE_ORDER = ("bookworm", "trixie", "sid")
#: what a record keeps (the job's per-second progress is summarised, not kept)
DROP = ("console", "console_destination", "job_progress", "job_completed")


def destinations(lab: Lab, src: str, prior: dict[str, dict] | None = None) -> list[str]:
    """the other hosts, likeliest failure first. With a previous record of this matrix
    (*prior*: "SRC->DST" -> record), its failures first and its successes last; without,
    older suites first (their QEMU/KVM lack what a newer one streams), then newer ones."""
    rank = {h: SUITE_ORDER.index(lab.host(h)["suite"]) for h in lab.hosts}
    others = [h for h in lab.hosts if h != src]
    older = sorted((h for h in others if rank[h] <= rank[src]), key=lambda h: rank[h])
    newer = sorted((h for h in others if rank[h] > rank[src]), key=lambda h: -rank[h])
    order = older + newer
    if prior:
        def ok(dst: str) -> bool:
            return str((prior.get(f"{src}->{dst}") or {}).get("outcome", "")).startswith("migrated")
        order.sort(key=ok)            # stable: failures (False) first, in the default order
    return order


def trim(rec: dict) -> dict:
    out = migration.jsonable({k: v for k, v in rec.items() if k not in DROP})
    prog = rec.get("job_progress") or []
    moving = [p for p in prog if (p.get("memory_processed") or 0) > 0]
    out["ram_first_moved_at_s"] = moving[0]["t_s"] if moving else None
    return out


def machine_of(lab: Lab, host: str, dom: str) -> str:
    xml = lab.virsh(host, "dumpxml", dom, quiet=True).stdout
    m = re.search(r"machine='([^']+)'", xml)
    return m.group(1) if m else "?"


def run_matrix(lab: Lab, machine_type: str, reuse: dict[str, dict] | None = None,
               prior: dict[str, dict] | None = None, only: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """{"SRC->DST": record} for every ordered pair (or the pairs *only* names), and {host:
    start record}"""
    pairs: dict[str, dict] = {}
    starts: dict[str, dict] = {}
    for src in lab.hosts:
        if reuse and src in reuse:       # bookworm's "virt" is virt-7.2: same guest, same records
            pairs.update({k: v for k, v in reuse[src].items()})
            continue
        dom = f"afgt-{src}"
        xml = guest.domain_xml(dom, machine=machine_type, image=GUEST_IMAGE)
        st = None
        for dst in destinations(lab, src, prior):
            if only is not None and f"{src}->{dst}" not in only:
                continue
            if st is None:
                st = migration.start_domain(lab, src, xml)
                starts.setdefault(src, {k: v for k, v in st.items() if k not in ("console",)})
                starts[src]["machine"] = machine_of(lab, src, dom)
            rec = migration.migrate_running(lab, src, dst, dom, console=st["console"], view_before=st["view"])
            rec["machine"] = starts[src]["machine"]
            if st is not None and rec.get("console") is not None and not rec["outcome"].startswith("migrated"):
                st["console"] = rec["console"]      # the source's (re-attached) console, for the next try
            elif rec.get("console") is not None:
                rec["console"].close()
            pairs[f"{src}->{dst}"] = trim(rec)
            if rec["outcome"].startswith("migrated"):
                migration.cleanup_domain(lab, dom, [dst])
                st = None                # the guest left: the next destination needs a new start
        if st is not None and st.get("console") is not None:
            st["console"].close()
        migration.cleanup_domain(lab, dom, [src])
    return pairs, starts


def save_checks(lab: Lab) -> dict:
    """virsh save on one host + restore on another (the file carried by the driver), save +
    restore on the same host, and managedsave + start"""
    out: dict = {}
    by_suite = {lab.host(h)["suite"]: h for h in reversed(lab.hosts)}
    hosts = lab.hosts
    # bookworm -> sid is the pair whose live migration works (with a changed view): the save
    # file then shows whether it behaves like the stream; managedsave on trixie
    a = by_suite.get("bookworm", hosts[0])
    b = by_suite.get("sid", hosts[-1])
    dom = "afgt-save"
    xml = guest.domain_xml(dom, machine="virt-7.2", image=GUEST_IMAGE)
    st = migration.start_domain(lab, a, xml)
    rec = migration.save_restore(lab, a, b, dom, console=st["console"], view_before=st["view"])
    out[f"save {a} -> restore {b}"] = trim(rec)
    if rec.get("console"):
        rec["console"].close()
    migration.cleanup_domain(lab, dom, [a, b])
    st = migration.start_domain(lab, a, xml)
    rec = migration.save_restore(lab, a, a, dom, console=st["console"], view_before=st["view"])
    out[f"save {a} -> restore {a}"] = trim(rec)
    if rec.get("console"):
        rec["console"].close()
    migration.cleanup_domain(lab, dom, [a])
    c = by_suite.get("trixie", hosts[len(hosts) // 2])
    st = migration.start_domain(lab, c, xml)
    rec = migration.managedsave_start(lab, c, dom, console=st["console"], view_before=st["view"])
    out[f"managedsave + start on {c}"] = trim(rec)
    if rec.get("console"):
        rec["console"].close()
    migration.cleanup_domain(lab, dom, [c])
    return out


def host_facts(lab: Lab) -> dict:
    facts = {}
    for h in lab.hosts:
        hh = lab.host(h)
        facts[h] = {"suite": hh["suite"], "outer_cpu": hh["cpu"], "kernel_release": lab.sh(h, "uname -r", quiet=True)
                    .stdout.strip(), "packages": lab.versions(h), "boot_to_ready_s": hh.get("ready_s")}
    return facts


#: what a record's outcomes depend on: the hosts' releases, emulated CPUs and package versions,
#: and this machine's QEMU that emulates them (TCG emulates the same arm64 CPU on any x86
#: machine, so nothing else of the machine enters)
def provenance(gt: dict) -> dict:
    return {"outer_qemu": gt["outer_qemu"],
            "hosts": {h: {k: x.get(k) for k in ("suite", "outer_cpu", "packages")} for h, x in gt["hosts"].items()}}


#: the moves re-run when the committed record's provenance is this run's: one guest booted on
#: bookworm, whose move to trixie fails after its RAM was copied (QEMU refuses the register
#: stream at the end) and whose move to sid then migrates with a changed view (the guest-view
#: gap) -- one boot, a failure and a success, each compared with the record
SAMPLE = ("bookworm->trixie", "bookworm->sid")


def this_run(lab: Lab) -> dict:
    """this run's side of :func:`provenance`: the outer QEMU and the hosts' facts"""
    return {"outer_qemu": machine.outer_qemu_version(), "hosts": host_facts(lab)}


def resample(lab: Lab, committed: dict, pairs: tuple[str, ...] = SAMPLE) -> dict:
    """The committed record re-checked here: this run's host facts, *pairs* migrated again on
    virt-7.2 (their fresh records replace the committed ones, which are kept under
    "committed_pairs" for the comparison), and the guest started once on every host the pairs
    do not start from, so that every host's view at start is this run's
    ("sample_views_at_start"); everything else as recorded."""
    t0 = time.monotonic()
    out = json.loads(json.dumps(committed))
    out.update(this_run(lab))
    if provenance(out) != provenance(committed):
        raise RuntimeError("resample: this run's hosts are not the committed record's; record in full")
    prior = committed["matrices"]["virt-7.2"]
    fresh, starts = run_matrix(lab, "virt-7.2", prior=prior, only=pairs)
    for h in lab.hosts:
        if h not in starts:      # every host's guest prints its view in this run (issue 23's probe check)
            dom = f"afgt-{h}"
            st = migration.start_domain(lab, h, guest.domain_xml(dom, machine="virt-7.2", image=GUEST_IMAGE))
            if st.get("console") is not None:
                st["console"].close()
            migration.cleanup_domain(lab, dom, [h])
            starts[h] = {k: v for k, v in st.items() if k != "console"}
    out["mode"] = "sample"
    out["resampled_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["resampled"] = sorted(fresh)
    out["committed_pairs"] = {k: prior[k] for k in fresh}
    out["matrices"]["virt-7.2"].update(fresh)
    out["sample_views_at_start"] = {f"{h} (virt-7.2)": s.get("view") for h, s in starts.items()}
    out["table"] = table(out)
    out["record_seconds"] = round(time.monotonic() - t0, 1)
    return out


def record(lab: Lab, machines: tuple[str, ...] = ("virt", "virt-7.2"), saves: bool = True) -> dict:
    t0 = time.monotonic()
    for h in lab.hosts:        # ground truth *without* abiguard: no hook at all
        hooks = lab.sh(h, "ls /etc/libvirt/hooks/qemu /etc/libvirt/hooks/qemu.d/ 2>/dev/null", check=False,
                       quiet=True).stdout.split()
        if hooks:
            raise RuntimeError(f"{h} has libvirt hooks ({hooks}): the ground truth is recorded without any")
    out: dict = {"what": __doc__.split("\n\n")[0], "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "outer_qemu": machine.outer_qemu_version(), "hosts": host_facts(lab),
                 "command": "virsh -c qemu+tcp://SRC/system migrate --live --persistent --undefinesource --verbose "
                            "DOM qemu+tcp://DST/system --migrateuri tcp://DST (client-driven)",
                 "guest": {"payload": "tests/lab/armfleet/guest.S", "memory_mib": 16,
                           "xml": guest.domain_xml("NAME", machine="MACHINE", image=GUEST_IMAGE)},
                 "matrices": {}, "starts": {}, "mode": "full"}
    reuse: dict[str, dict] = {}
    prior = json.loads(OUT.read_text()).get("matrices", {}) if OUT.exists() else {}
    for mt in machines:
        pairs, starts = run_matrix(lab, mt, reuse if mt == "virt-7.2" else None, prior.get(mt))
        out["matrices"][mt] = pairs
        out["starts"][mt] = {h: {k: v for k, v in s.items() if k not in ("view",)} for h, s in starts.items()}
        for h, s in starts.items():
            if s.get("machine") == "virt-7.2":   # same guest as a virt-7.2 one: reuse its records
                reuse[h] = {k: v for k, v in pairs.items() if k.startswith(f"{h}->")}
        out.setdefault("views_at_start", {}).update(
            {f"{h} ({s.get('machine')})": s.get("view") for h, s in starts.items()})
    views = out["views_at_start"]
    keys = list(views)
    out["view_differences_between_hosts"] = {
        f"{a} vs {b}": guest.diff(views[a], views[b]) for i, a in enumerate(keys) for b in keys[i + 1:]
        if views[a] and views[b] and a.split()[0] != b.split()[0]}
    if saves:
        out["save_restore"] = save_checks(lab)
    out["table"] = table(out)
    out["record_seconds"] = round(time.monotonic() - t0, 1)
    return out


def table(gt: dict) -> dict[str, dict[str, str]]:
    """machine -> 'SRC->DST' -> one line: outcome (phase, error's first line)"""
    t: dict[str, dict[str, str]] = {}
    for mt, pairs in gt["matrices"].items():
        for pair, r in pairs.items():
            line = r["outcome"]
            if r["outcome"] in ("failed", "refused"):
                err = (r.get("error") or "").splitlines()
                line += f" at {r.get('phase')}: {err[-1] if err else ''}"
            elif r.get("diff_after") or r.get("diff_after_reboot"):
                line += ": " + ", ".join(sorted(set(r.get("diff_after") or {}) | set(r.get("diff_after_reboot") or {})))
            t.setdefault(mt, {})[pair] = line
    return t


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="groundtruth")
    ap.add_argument("--run", default=None)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--machines", default="virt,virt-7.2")
    ap.add_argument("--no-saves", action="store_true")
    a = ap.parse_args(argv)
    lab = Lab.attach(a.run)
    set_logfile(lab.dir / "groundtruth.log")
    gt = record(lab, tuple(a.machines.split(",")), saves=not a.no_saves)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(a.out), gt)
    log(f"ground truth -> {a.out} in {gt['record_seconds']} s")
    print(json.dumps(gt["table"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
