#!/usr/bin/python3
"""hook_probe.py -- armfleet fact probe (7b): what a libvirt qemu hook can do when the confined
libvirtd runs it. facts.py installs it as /etc/libvirt/hooks/qemu.d/afprobe on a lab host.

Per call, one JSON line appended to /var/log/abiguard/hook-probe.log: argv, wall time at
entry and exit, its AppArmor label, and whether it could read /var/lib/abiguard/test, read
/run/libvirt/qemu/DOM.pid and that QEMU's /proc/PID/maps, read the record files QEMU left
(globs in /var/lib/abiguard/record-paths, %N = domain name) and the library's lines in the
domain log. Knobs: /var/lib/abiguard/started-delay (seconds to sleep in "started"),
/var/lib/abiguard/started-fail (exit 1 in "started": refuse the start)."""
import glob
import json
import os
import sys
import time

dom, op, sub = sys.argv[1], sys.argv[2], sys.argv[3]
rec = {"t": time.time(), "dom": dom, "op": op, "sub": sub, "extra": sys.argv[4] if len(sys.argv) > 4 else None,
       "label": open("/proc/self/attr/current").read().strip(), "uid": os.getuid()}


def attempt(name, fn):
    try:
        rec[name] = fn()
    except OSError as e:
        rec[name] = f"ERROR {e.errno} {e.strerror}"


def qemu_maps():
    pid = open(f"/run/libvirt/qemu/{dom}.pid").read().strip()
    maps = open(f"/proc/{pid}/maps").read()
    return {"pid": pid, "maps_lines": len(maps.splitlines()),
            "abiguard_libs": sorted({ln.split()[-1] for ln in maps.splitlines() if "abiguard" in ln})}


def records():
    out = {}
    for pattern in open("/var/lib/abiguard/record-paths").read().split():
        for path in glob.glob(pattern.replace("%N", dom)):
            out[path] = open(path).read().strip()
    return out


attempt("read_var_lib_abiguard", lambda: open("/var/lib/abiguard/test").read().strip())
attempt("qemu_pid_and_maps", qemu_maps)
attempt("records", records)
attempt("domain_log_abiguard_lines", lambda: [ln.strip() for ln in open(f"/var/log/libvirt/qemu/{dom}.log",
                                                                       errors="replace") if "abiguard-" in ln][-4:])
rec["stdin_bytes"] = len(sys.stdin.read()) if op in ("migrate", "restore") else 0
if op == "started" and os.path.exists("/var/lib/abiguard/started-delay"):
    rec["slept"] = float(open("/var/lib/abiguard/started-delay").read())
    time.sleep(rec["slept"])
fail = op == "started" and os.path.exists("/var/lib/abiguard/started-fail")
rec["exit"] = 1 if fail else 0
rec["t_end"] = time.time()
try:
    with open("/var/log/abiguard/hook-probe.log", "a") as f:
        f.write(json.dumps(rec) + "\n")
except OSError as e:
    sys.stderr.write(f"afprobe: cannot write /var/log/abiguard/hook-probe.log: {e}\n")
if fail:
    sys.stderr.write("afprobe: refusing this start (lab test of a failing started hook)\n")
sys.exit(rec["exit"])
