"""The facts issue 13's design rests on, measured on the running lab (brief item 7):

  (a) preload: abiguard's real library (plugin/abiguard/preload/abiguard_pin.c, cross-built)
      at /usr/lib/abiguard/abiguard_pin.so, given to a libvirt-launched, AppArmor-confined
      QEMU with <qemu:env LD_PRELOAD/ABIGUARD_PINS>: mapped? pins applied (its log lines, the
      guest's PSCI version)? AT_SECURE? DENIED lines? -- on every host; plus a negative
      control (the library under /opt: no AppArmor rule).
  (b) hooks: a python3 hook in /etc/libvirt/hooks/qemu.d run by the confined libvirtd: its
      label, what it can read/write, and the order and times of migrate/prepare/start/started
      on the destination of an incoming migration against the RAM the source sends (the
      started hook sleeps, so RAM that waited for it is visible), then a failing started hook.
  (c) records: where the confined QEMU can create a file without any profile change (a
      probe library tries candidate paths at load and after vCPU init, i.e. under -sandbox).

    python3 -m lab.armfleet.facts [--run ID] [--src bookworm --dst trixie] [--out FILE]

Everything installed is removed again (hooks, libraries, directories; libvirtd re-reads its
hooks on SIGHUP), so a ground-truth run after this one sees hosts without hooks."""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from . import guest, migration
from .common import CROSS, HERE, REPO, log, run, set_logfile, write_json
from .fleet import GUEST_IMAGE, Lab

FACTS = HERE / "facts"
OUT = HERE / "results" / "facts.json"
PSCI_ID = "0x6030000000140000"
LIB = "/usr/lib/abiguard/abiguard_pin.so"
PROBE_LIB = "/usr/lib/abiguard/abiguard_probe.so"
AUXV = ("python3 -c \"import struct; d=open('/proc/{pid}/auxv','rb').read(); "
        "v=dict(struct.unpack('<QQ', d[i:i+16]) for i in range(0, len(d), 16)); print(v.get(23))\"")
#: where QEMU might leave a record (%D: the domain's private dir, %C: its channel dir name)
CANDIDATES = ["%D/abiguard-record", "/run/libvirt/qemu/channel/%C/abiguard-record", "/run/libvirt/qemu/abiguard-record",
              "/var/lib/libvirt/qemu/abiguard-record", "/var/log/libvirt/qemu/abiguard-record",
              "/var/cache/libvirt/qemu/abiguard-record", "/dev/shm/abiguard-record", "/tmp/abiguard-record",
              "/var/tmp/abiguard-record", "/var/lib/abiguard/abiguard-record", "/run/abiguard/abiguard-record"]
RECORD_GLOBS = " ".join(p.replace("%D", "/var/lib/libvirt/qemu/domain-*-%N").replace("%C", "*-%N") + "-*"
                        for p in CANDIDATES)


def build_libs(out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    pin, probe = out / "abiguard_pin.so", out / "abiguard_probe.so"
    # the project's real library, built as the brief says
    run([f"{CROSS}gcc", "-std=c99", "-O2", "-shared", "-fPIC", "-o", str(pin),
         str(REPO / "plugin/abiguard/preload/abiguard_pin.c"), "-ldl"], quiet=True)
    run([f"{CROSS}gcc", "-std=gnu99", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(probe),
         str(FACTS / "record_probe.c"), "-ldl"], quiet=True)
    return pin, probe


def _start_with_env(lab: Lab, host: str, name: str, env: dict[str, str]) -> tuple[dict, float]:
    since = lab.kmsg_mark(host)
    return migration.start_domain(lab, host, guest.domain_xml(name, image=GUEST_IMAGE, qemu_env=env)), since


def preload(lab: Lab, pin: Path) -> dict:
    """(a) on every host, pinned to PSCI 1.1 (the brief's value: the kernels' default too, so
    only the library's own lines show it) and to PSCI 1.0 (a value the guest would not see
    unpinned), then the negative control on the last host"""
    out: dict = {}
    for h in lab.hosts:
        lab.sh(h, "mkdir -p /usr/lib/abiguard")
        lab.copy_in(h, pin, LIB)
        out[h] = {}
        for value in ("0x10001", "0x10000"):
            dom = "afgpin"
            st, since = _start_with_env(lab, h, dom, {"LD_PRELOAD": LIB, "ABIGUARD_PINS": f"{PSCI_ID}={value}"})
            pid = st.get("qemu_pid")
            r = {"start_s": st["start_s"], "apparmor_compiles": st["apparmor_compiles"], "error": st.get("error"),
                 "qemu_label": st.get("label")}
            if pid:
                r["maps"] = lab.sh(h, f"grep abiguard_pin /proc/{pid}/maps | awk '{{print $2, $6}}'", check=False,
                                   quiet=True).stdout.split("\n")[:-1]
                env_cmd = f"tr '\\0' '\\n' < /proc/{pid}/environ | grep -E '^(LD_PRELOAD|ABIGUARD_PINS)='"
                r["environ"] = lab.sh(h, env_cmd, check=False, quiet=True).stdout.split()
                r["at_secure"] = lab.sh(h, AUXV.format(pid=pid), check=False, quiet=True).stdout.strip()
                log_cmd = f"grep -a -E 'abiguard-pin:|ld.so' /var/log/libvirt/qemu/{dom}.log | tail -n 3"
                r["domain_log"] = lab.sh(h, log_cmd, check=False, quiet=True).stdout.splitlines()
                r["guest_psci"] = (st.get("view") or {}).get("psci")
            r["denied"] = lab.dmesg_since(h, since, 'apparmor="DENIED"')
            if st.get("console"):
                st["console"].close()
            migration.cleanup_domain(lab, dom, [h])
            lab.sh(h, f"rm -f /var/log/libvirt/qemu/{dom}.log", quiet=True)
            out[h][f"PSCI pinned to {value}"] = r
    h = lab.hosts[-1]
    lab.sh(h, "mkdir -p /opt/abiguard")
    lab.copy_in(h, pin, "/opt/abiguard/abiguard_pin.so")
    st, since = _start_with_env(lab, h, "afgneg", {"LD_PRELOAD": "/opt/abiguard/abiguard_pin.so",
                                                   "ABIGUARD_PINS": f"{PSCI_ID}=0x10000"})
    out["negative control"] = {
        "host": h, "library": "/opt/abiguard/abiguard_pin.so", "error": st.get("error"),
        "guest_psci": (st.get("view") or {}).get("psci"),
        "domain_log": lab.sh(h, "grep -a -E 'abiguard-pin:|ld.so' /var/log/libvirt/qemu/afgneg.log | tail -n 3",
                             check=False, quiet=True).stdout.splitlines(),
        "denied": lab.dmesg_since(h, since, 'apparmor="DENIED"')}
    if st.get("console"):
        st["console"].close()
    migration.cleanup_domain(lab, "afgneg", [h])
    lab.sh(h, "rm -rf /opt/abiguard /var/log/libvirt/qemu/afgneg.log", quiet=True)
    return out


def _install_probes(lab: Lab, hosts: list[str], probe: Path) -> None:
    for h in hosts:
        lab.sh(h, "mkdir -p /etc/libvirt/hooks/qemu.d /var/lib/abiguard /var/log/abiguard /usr/lib/abiguard"
                  " /run/abiguard && chmod 1777 /var/lib/abiguard /run/abiguard"
                  " && echo probe-ok > /var/lib/abiguard/test"
                  f" && echo '{RECORD_GLOBS}' > /var/lib/abiguard/record-paths"
                  " && rm -f /var/log/abiguard/hook-probe.log /var/lib/abiguard/started-*")
        lab.copy_in(h, FACTS / "hook_probe.py", "/etc/libvirt/hooks/qemu.d/afprobe", mode="0755")
        lab.copy_in(h, probe, PROBE_LIB)
        # libvirtd decides at start (and on SIGHUP) whether hooks exist at all
        lab.sh(h, "kill -HUP $(cat /run/libvirtd.pid) && sleep 3")


def _remove_probes(lab: Lab, hosts: list[str]) -> None:
    for h in hosts:
        lab.sh(h, "rm -rf /etc/libvirt/hooks/qemu.d /var/lib/abiguard /var/log/abiguard /usr/lib/abiguard /run/abiguard"
                  " /tmp/abiguard-record-* /dev/shm/abiguard-record-* && kill -HUP $(cat /run/libvirtd.pid) && sleep 3",
               check=False)


def _clock_offset(lab: Lab, h: str) -> float:
    t0 = time.time()
    remote = float(lab.sh(h, "date +%s.%N", quiet=True).stdout)
    return round(remote - (t0 + time.time()) / 2, 3)


def _hooklog(lab: Lab, h: str, t_ref: float | None, offset: float) -> list[dict]:
    out = []
    for line in lab.sh(h, "cat /var/log/abiguard/hook-probe.log", check=False, quiet=True).stdout.splitlines():
        r = json.loads(line)
        t, t_end = r.pop("t"), r.pop("t_end")
        if t_ref is None:                  # relative to the first call
            t_ref = t - offset
        r["t_s"] = round(t - offset - t_ref, 2)     # seconds after t_ref, on this machine's clock
        r["took_s"] = round(t_end - t, 2)
        out.append(r)
    return out


def hooks_and_records(lab: Lab, src: str, dst: str, probe: Path, delay: float = 20) -> dict:
    """(b) and (c) on one source/destination pair"""
    _install_probes(lab, [src, dst], probe)
    try:
        offsets = {h: _clock_offset(lab, h) for h in (src, dst)}
        env = {"LD_PRELOAD": PROBE_LIB, "ABIGUARD_PROBE_PATHS": ":".join(CANDIDATES)}
        st, since_src = _start_with_env(lab, src, "afgprobe", env)
        out: dict = {"clock_offset_s": offsets, "candidates": CANDIDATES}
        out["records_from_qemu_on_" + src] = lab.sh(src, "grep -a 'abiguard-probe:' /var/log/libvirt/qemu/afgprobe.log",
                                                    check=False, quiet=True).stdout.splitlines()
        out["hook_calls_start_on_" + src] = _hooklog(lab, src, None, offsets[src])
        out["denied_on_" + src] = lab.dmesg_since(src, since_src, 'apparmor="DENIED"')
        lab.sh(dst, f"echo {delay} > /var/lib/abiguard/started-delay && rm -f /var/log/abiguard/hook-probe.log")
        since_dst = lab.kmsg_mark(dst)
        mig = migration.migrate_running(lab, src, dst, "afgprobe", console=st["console"], view_before=st["view"],
                                        reboot_check=False)
        t_ref = datetime.fromisoformat(mig["started_utc"]).timestamp()
        moved = [p for p in mig["job_progress"] if (p.get("memory_processed") or 0) > 0]
        out["incoming_migration"] = {
            "pair": f"{src}->{dst}", "started_hook_sleeps_s": delay, "outcome": mig["outcome"], "error": mig["error"],
            "phases": mig["phases"], "ram_first_moved_at_s": moved[0]["t_s"] if moved else None,
            "ram": mig["ram"], "hook_calls_on_destination": _hooklog(lab, dst, t_ref, offsets[dst]),
            "records_from_qemu_on_" + dst: lab.sh(dst, "grep -a 'abiguard-probe:' /var/log/libvirt/qemu/afgprobe.log",
                                                  check=False, quiet=True).stdout.splitlines(),
            "denied_on_" + dst: lab.dmesg_since(dst, since_dst, 'apparmor="DENIED"')}
        con = mig.get("console") or st["console"]
        if mig["outcome"].startswith("migrated"):      # bring it back to the source for the refusal test
            con.close()
            migration.cleanup_domain(lab, "afgprobe", [dst])
            st, _ = _start_with_env(lab, src, "afgprobe", env)
            con = st["console"]
        lab.sh(dst, "rm -f /var/lib/abiguard/started-delay /var/log/abiguard/hook-probe.log"
                    " && touch /var/lib/abiguard/started-fail")
        mig2 = migration.migrate_running(lab, src, dst, "afgprobe", console=con, view_before=con.fresh_view(),
                                         reboot_check=False)
        t_ref2 = datetime.fromisoformat(mig2["started_utc"]).timestamp()
        out["failing_started_hook"] = {
            k: mig2.get(k) for k in ("outcome", "error", "phase", "phases", "ram", "migrate_s", "time_lost_s",
                                     "source_state_after", "source_qemu_pid_before", "source_qemu_pid_after",
                                     "source_same_qemu", "guest_alive_on_source")}
        out["failing_started_hook"]["hook_calls_on_destination"] = _hooklog(lab, dst, t_ref2, offsets[dst])
        if mig2.get("console"):
            mig2["console"].close()
        con.close()
        migration.cleanup_domain(lab, "afgprobe", [src, dst])
        return out
    finally:
        _remove_probes(lab, [src, dst])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="facts")
    ap.add_argument("--run", default=None)
    ap.add_argument("--src", default="bookworm")
    ap.add_argument("--dst", default="trixie")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--only", choices=("preload", "hooks"), default=None)
    a = ap.parse_args(argv)
    lab = Lab.attach(a.run)
    set_logfile(lab.dir / "facts.log")
    pin, probe = build_libs(lab.dir / "facts")
    t0 = time.monotonic()
    out: dict = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "hosts": {h: lab.host(h).get("versions") for h in lab.hosts}}
    try:
        if a.only in (None, "preload"):
            out["a_preload"] = preload(lab, pin)
        if a.only in (None, "hooks"):
            out["b_c_hooks_and_records"] = hooks_and_records(lab, a.src, a.dst, probe)
    finally:
        for h in lab.hosts:
            lab.sh(h, "rm -rf /usr/lib/abiguard", check=False, quiet=True)
    out["seconds"] = round(time.monotonic() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(a.out), out)
    log(f"facts -> {a.out} in {out['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
