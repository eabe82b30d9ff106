"""Issue 25's seed case in the arm64 lab: a VM pinned to the {bookworm, sid} contract
(6.1 and 7.x), born on one host, live to the other and back, AppArmor on, the guest's own
view compared after each move and after a reboot. ``python3 -m lab.armfleet.seedcase``
brings bookworm and sid up, installs abiguard, runs both directions and writes
$ARMFLEET_RESULTS/seedcase.json; tests/test_armfleet_lab.py runs :func:`run` on its own
lab."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import abiguard as afa, guest, migration
from .common import log, write_json
from .fleet import GUEST_IMAGE, Lab

#: the two directions of the seed case: (born on, moves)
LEGS = (("sid", ("bookworm", "sid")), ("bookworm", ("sid", "bookworm")))


def _keep(r: dict) -> dict:
    keep = ("from", "to", "outcome", "phase", "error", "migrate_s", "diff_after", "diff_after_reboot",
            "view_before", "view_after", "view_after_reboot", "hook_log", "qemu_log_tail")
    return {k: r[k] for k in keep if k in r}


def leg(lab: Lab, base: Path, born: str, moves: tuple[str, ...], reboot_last: bool = True) -> dict:
    """One direction: start on *born* pinned to *base*, then each move in turn; the
    guest's view is held against the one it printed at its first boot."""
    dom = f"afs-{born}"
    out: dict = {"born": born, "moves": [], "ok": False}
    t0 = time.monotonic()
    st = migration.start_domain(lab, born, guest.domain_xml(dom, machine="virt-7.2", image=GUEST_IMAGE),
                                baseline=base)
    out["start"] = {k: st[k] for k in ("pin", "error", "start_s", "view", "qemu_log_tail") if k in st}
    if "error" in st:
        migration.cleanup_domain(lab, dom, [born])
        out["seconds"] = round(time.monotonic() - t0, 1)
        return out
    out["record"] = lab.sh(born, f"cat /var/lib/libvirt/qemu/domain-*-{dom}/abiguard-pin.record", check=False,
                           quiet=True).stdout.splitlines()[-4:]
    first, con, src = st["view"], st["console"], born
    try:
        for i, dst in enumerate(moves):
            last = i == len(moves) - 1
            r = migration.migrate_running(lab, src, dst, dom, console=con, view_before=first,
                                          reboot_check=reboot_last and last)
            con = r.get("console") or con
            r["hook_log"] = afa.hook_log(lab, dst, 3)
            if r["outcome"] == "failed":
                r["qemu_log_tail"] = lab.sh(dst, f"tail -n 15 /var/log/libvirt/qemu/{dom}.log", check=False,
                                            quiet=True).stdout.splitlines()
            out["moves"].append(_keep(r))
            if not r["outcome"].startswith("migrated"):
                break
            src = dst
        out["ok"] = len(out["moves"]) == len(moves) and all(m["outcome"] == "migrated-same-view"
                                                               for m in out["moves"])
    finally:
        if con:
            con.close()
        migration.cleanup_domain(lab, dom, lab.hosts)
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def run(lab: Lab, profiles: dict[str, Path]) -> dict:
    """Both directions of the seed case on this lab (abiguard installed), with the baseline
    of bookworm's and sid's own profiles."""
    base = afa.baseline([profiles["bookworm"], profiles["sid"]], lab.dir / "baseline-bookworm-sid.json")
    rec: dict = {"baseline": base, "legs": []}
    for born, moves in LEGS:
        rec["legs"].append(leg(lab, Path(base["file"]), born, moves))
        moves_done = rec["legs"][-1]["moves"]
        log(f"seed case born on {born}: {[m['outcome'] for m in moves_done]}")
    return rec


def main() -> None:
    t0 = time.monotonic()
    with Lab.session(hosts="bookworm,sid") as lab:
        up_s = round(time.monotonic() - t0, 1)
        inst = afa.install(lab)
        profiles = {h: Path(x["profile"]) for h, x in inst["hosts"].items()}
        rec = run(lab, profiles)
        rec["up_s"], rec["install"] = up_s, inst
        out = Path(os.environ.get("ARMFLEET_RESULTS", lab.dir)) / "seedcase.json"
        write_json(out, migration.jsonable(rec))
        log(f"seed case record: {out}")
    print(json.dumps({"seconds": round(time.monotonic() - t0, 1)}))


if __name__ == "__main__":
    main()
