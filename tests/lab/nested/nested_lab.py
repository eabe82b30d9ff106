#!/usr/bin/env python3
"""nested_lab.py: abiguard's enforcement proof with real QEMU on real arm64 kernels.

An L1 arm64 Debian kernel (the armlab's, booted under host qemu-system-aarch64 TCG with
EL2) runs Debian's arm64 qemu-system-aarch64 -accel kvm -cpu host (bookworm 7.2 or sid 11.1,
fetched by fetch_qemu.sh SUITE) on a tiny guest (payload.S) that prints what the hypercall
discovery calls answer. A pair SRC -> DST: boot SRC, save the VM to a file without and with
abiguard's pin (abiguard_pin.so via LD_PRELOAD, ABIGUARD_PINS), carry both files out as
base64 on the console, boot DST and restore each with -incoming.

  nested_lab.py pair SRC DST SUITE SRC_PINS [DST_PINS] [--out results.json]
      SRC/DST: kernel release dirs under $ARMLAB_CACHE/kernels (or prefix 6.12, 7, ...);
      SRC_PINS: ABIGUARD_PINS of the pinned boot on SRC; DST_PINS: of the pinned restore
      on DST (the registers DST has and the stream lacks, kept off); "-" = none

Needs: tests/lab/armlab.sh fetch (kernels, python debs), fetch_qemu.sh SUITE, and
aarch64-linux-gnu-gcc (Debian gcc-aarch64-linux-gnu) for the library, pintest and payload.
Paths: ARMLAB_CACHE (/var/cache/abiguard-lab/armlab, read only), NESTED_CACHE
(/var/cache/abiguard-lab/nested), NESTED_BUILD (/var/tmp/abiguard-lab/nested-build).
Knobs: NESTED_L1_CPU (outer -cpu, default max,lpa2=off: with LPA2 QEMU's scratch VMs take
~30 s to tear down on the 7.x kernel), NESTED_TIMEOUT (300 s per boot), QEMU (host binary).
The only process ever signalled is the timeout(1) this script started."""
import base64
import binascii
import json
import os
import shutil
import subprocess
import sys
import time

ND = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(ND, "..", "..", ".."))
ARMLAB_CACHE = os.environ.get("ARMLAB_CACHE", "/var/cache/abiguard-lab/armlab")
NESTED_CACHE = os.environ.get("NESTED_CACHE", "/var/cache/abiguard-lab/nested")
BUILD = os.environ.get("NESTED_BUILD", "/var/tmp/abiguard-lab/nested-build")
CROSS = os.environ.get("NESTED_CROSS", "aarch64-linux-gnu-")
L1_CPU = os.environ.get("NESTED_L1_CPU", "max,lpa2=off")
TIMEOUT = int(os.environ.get("NESTED_TIMEOUT", "300"))
PY_KEEP = ("ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libz.so.1", "libexpat.so.1", "libffi.so.8")
PY_DROP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "distutils",
           "unittest", "sqlite3", "ctypes", "email/test", "asyncio", "multiprocessing", "xml", "pydoc.py")

def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)

def kernel_dir(k):
    kd = os.path.join(ARMLAB_CACHE, "kernels")
    names = sorted(os.listdir(kd))
    exact = [n for n in names if n == k]
    pref = [n for n in names if n.startswith((k + ".", k + "-"))]
    hit = exact or pref
    if len(hit) != 1:
        sys.exit(f"nested: kernel {k!r}: {hit or names}")
    return hit[0]

def tools():
    """abiguard_pin.so, pintest, payload.bin, cross-built once per source change"""
    out = os.path.join(BUILD, "tools"); os.makedirs(out, exist_ok=True)
    lib = os.path.join(REPO, "plugin/abiguard/preload/abiguard_pin.c")
    jobs = [("abiguard_pin.so", [lib], [CROSS + "gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror",
                                        "-shared", "-fPIC", "-o", "{o}", lib, "-ldl"]),
            ("pintest", [os.path.join(ND, "pintest.c")], [CROSS + "gcc", "-O2", "-Wall", "-o", "{o}",
                                                          os.path.join(ND, "pintest.c")])]
    for name, srcs, cmd in jobs:
        o = os.path.join(out, name)
        if not os.path.exists(o) or os.path.getmtime(o) < max(os.path.getmtime(s) for s in srcs):
            sh(*[c.replace("{o}", o) for c in cmd])
    pay = os.path.join(out, "payload.bin"); src = os.path.join(ND, "payload.S")
    if not os.path.exists(pay) or os.path.getmtime(pay) < os.path.getmtime(src):
        sh(CROSS + "gcc", "-nostdlib", "-DDELAY_HI=0x40", "-x", "assembler-with-cpp", "-c", src, "-o", pay + ".o")
        sh(CROSS + "objcopy", "-O", "binary", pay + ".o", pay)
    return out

def pystage():
    py = os.path.join(BUILD, "pystage")
    if not os.path.isdir(py):
        os.makedirs(py + ".tmp", exist_ok=True)
        d = os.path.join(ARMLAB_CACHE, "debs", "initramfs")
        for f in sorted(os.listdir(d)):
            sh("dpkg-deb", "-x", os.path.join(d, f), py + ".tmp")
        os.rename(py + ".tmp", py)
    return py

def needed(stage):
    return subprocess.run([sys.executable, os.path.join(ND, "needed.py"), stage, "usr/bin/qemu-system-aarch64"],
                          check=True, capture_output=True, text=True).stdout.split()

def build(suite, tag, plan, states):
    """initramfs for one L1 boot: plan (list of steps), states {name: path} -> /state-in/NAME.bin"""
    q = os.path.join(NESTED_CACHE, "stage-" + suite)
    if not os.path.exists(os.path.join(q, "usr/bin/qemu-system-aarch64")):
        sys.exit(f"nested: no QEMU for {suite}: run tests/lab/nested/fetch_qemu.sh {suite}")
    tl, py = tools(), pystage()
    r = os.path.join(BUILD, "rootfs-" + tag)
    shutil.rmtree(r, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "tmp", "root", "etc", "usr/bin", "usr/lib", "opt/qemu/bin",
              "opt/qemu/lib", "opt/qemu/share", "opt/abiguard", "state-in"):
        os.makedirs(os.path.join(r, d))
    shutil.copy2(os.path.join(py, "bin/busybox"), os.path.join(r, "bin"))
    for dp, _dns, fns in os.walk(py):
        for f in fns:
            if f.startswith(PY_KEEP):
                rel = os.path.relpath(os.path.join(dp, f), py)
                os.makedirs(os.path.dirname(os.path.join(r, rel)), exist_ok=True)
                shutil.copy2(os.path.join(py, rel), os.path.join(r, rel), follow_symlinks=False)
    shutil.copy2(os.path.join(py, "usr/bin/python3.11"), os.path.join(r, "usr/bin"))
    shutil.copytree(os.path.join(py, "usr/lib/python3.11"), os.path.join(r, "usr/lib/python3.11"), symlinks=True)
    pl = os.path.join(r, "usr/lib/python3.11")
    for n in PY_DROP:
        p = os.path.join(pl, n)
        shutil.rmtree(p) if os.path.isdir(p) else (os.path.exists(p) and os.unlink(p))
    shutil.copy2(os.path.join(q, "usr/bin/qemu-system-aarch64"), os.path.join(r, "opt/qemu/bin"))
    for l in needed(q):
        shutil.copy(os.path.join(q, l), os.path.join(r, "opt/qemu/lib"))
    for c in ("lib/ld-linux-aarch64.so.1", "usr/lib/ld-linux-aarch64.so.1"):
        if os.path.exists(os.path.join(q, c)):
            shutil.copy(os.path.join(q, c), os.path.join(r, "opt/qemu/lib")); break
    for f in ("abiguard_pin.so", "pintest"):
        shutil.copy2(os.path.join(tl, f), os.path.join(r, "opt/abiguard"))
    shutil.copy2(os.path.join(tl, "payload.bin"), r)
    shutil.copy2(os.path.join(ND, "l1_driver.py"), r)
    for name, path in states.items():
        shutil.copy2(path, os.path.join(r, "state-in", name + ".bin"))
    with open(os.path.join(r, "plan.json"), "w") as f:
        json.dump(plan, f, indent=1)
    with open(os.path.join(r, "init"), "w") as f:
        f.write("""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read up _ < /proc/uptime
echo "NESTED-INIT uptime=$up kernel=$(uname -r)"
dmesg -n 1
export LD_LIBRARY_PATH=/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu PYTHONHASHSEED=0
/usr/bin/python3.11 -I -S -u /l1_driver.py
echo "NESTED-DONE"
poweroff -f
""")
    os.chmod(os.path.join(r, "init"), 0o755)
    out = os.path.join(BUILD, f"initramfs-{tag}.cpio.gz")
    sh(sys.executable, os.path.join(ND, "..", "mkcpio.py"), r, out, stderr=subprocess.DEVNULL)
    shutil.rmtree(r)
    return out

def boot(kernel, initrd, tag):
    """one L1 boot; returns (result dict, {state name: bytes}); console in BUILD/logs/TAG.log"""
    os.makedirs(os.path.join(BUILD, "logs"), exist_ok=True)
    img = os.path.join(ARMLAB_CACHE, "kernels", kernel, "Image")
    logp = os.path.join(BUILD, "logs", tag + ".log")
    cmd = ["timeout", "-k", "10", str(TIMEOUT), os.environ.get("QEMU", "qemu-system-aarch64"),
           "-M", "virt,virtualization=on,gic-version=3", "-cpu", L1_CPU, "-m", "2048", "-smp", "1",
           "-nographic", "-no-reboot", "-nic", "none", "-kernel", img, "-initrd", initrd,
           "-append", "console=ttyAMA0 panic=-1 rdinit=/init"]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, marks = [], {}
    with open(logp, "w") as log:
        for raw in p.stdout:
            l = raw.decode("latin-1").rstrip("\r\n"); dt = round(time.time() - t0, 2)
            lines.append(l); log.write(f"{dt:7.2f} {l}\n")
            for m in ("NESTED-INIT", "NESTED kvm=", "=====NESTED-JSON-BEGIN", "NESTED-DONE"):
                if m in l and m not in marks: marks[m] = dt
    p.wait()
    res = {"errors": [f"no JSON from the L1 boot (console: {logp})"]}
    if "=====NESTED-JSON-BEGIN=====" in lines and "=====NESTED-JSON-END=====" in lines:
        b, e = lines.index("=====NESTED-JSON-BEGIN====="), lines.index("=====NESTED-JSON-END=====")
        res = json.loads("".join(lines[b + 1:e]))
    states, i = {}, 0
    while i < len(lines):
        if lines[i].startswith("=====NESTED-STATE-BEGIN name="):
            name = lines[i].split("name=")[1].split("=")[0]
            e = lines.index("=====NESTED-STATE-END=====", i)
            states[name] = base64.b64decode("".join(lines[i + 1:e])); i = e
        i += 1
    res["l1_kernel"] = kernel; res["l1_cpu"] = L1_CPU; res["console"] = logp
    res["host_s"] = {"init": marks.get("NESTED-INIT"), "test_start": marks.get("NESTED kvm="),
                     "json": marks.get("=====NESTED-JSON-BEGIN"), "done": marks.get("NESTED-DONE"),
                     "total": round(time.time() - t0, 2)}
    return res, states

PSCI = 0x6030000000140000; BMAP = 0x6030000000160002; BMAP2 = 0x6030000000160003
ISAR0 = 0x603000000013C030   # ID_AA64ISAR0_EL1

def idreg_pintests(kernel):
    """ID-register pins on real KVM, from the bundled profile of that kernel: AES lowered to 0
    (inside the writable mask, lower is safe) is accepted where abiguard's pin check says so, and
    refused by the kernel where it says no (before 6.7: no writable ID registers); a bit
    outside the mask is refused by the kernel (the library exits 1)"""
    path = os.path.join(REPO, "plugin/abiguard/data/arm64", kernel + ".json")
    if not os.path.exists(path):
        return []
    sys.path.insert(0, os.path.join(REPO, "plugin"))
    from abiguard.arch.arm64 import pins as arm64_pins
    from abiguard.model import profile
    prof = profile.load(path)
    host = int(prof.doc["kvm"]["aarch64"]["configs"]["psci"]["registers"][f"{ISAR0:#x}"], 16)
    lowered, outside = host & ~0xF0, host ^ 0x1
    refused = [p.line() for p in arm64_pins.check({ISAR0: lowered}, prof, "psci")]
    assert arm64_pins.check({ISAR0: outside}, prof, "psci")
    args = [f"{ISAR0:#x}"]
    return [{"op": "pintest", "name": "src-idreg-lowered", "pins": f"{ISAR0:#x}={lowered:#x}", "args": args,
             "expect": f"{lowered:#x}", "default": f"{host:#x}", "abiguard_refuses": refused},
            {"op": "pintest", "name": "src-idreg-outside-mask", "pins": f"{ISAR0:#x}={outside:#x}", "args": args}]

def pair(src, dst, suite, pins, dst_pins=None):
    src, dst = kernel_dir(src), kernel_dir(dst)
    t0 = time.time()
    name = f"{suite}-{src}-to-{dst}"
    regs = [f"{PSCI:#x}", f"{BMAP2:#x}"]
    plan1 = [
        {"op": "pintest", "name": "src-default", "pins": None, "args": regs},
        {"op": "pintest", "name": "src-pinned", "pins": pins, "args": regs},
        {"op": "pintest", "name": "src-scratch-untouched", "pins": pins, "args": ["scratch"] + regs},
        {"op": "pintest", "name": "src-bad-bitmap", "pins": f"{BMAP:#x}=0x80", "args": regs},
        {"op": "pintest", "name": "src-missing-register", "pins": f"{BMAP2:#x}=0x0", "args": regs},
    ] + idreg_pintests(src) + [
        {"op": "save", "name": "unpinned", "pins": None, "lines": 3, "dump": True},
        {"op": "save", "name": "pinned", "pins": pins, "lines": 3, "dump": True},
    ]
    initrd = build(suite, name + "-src", plan1, {})
    r1, states = boot(src, initrd, name + "-src")
    bdir = os.path.join(BUILD, "states", name); os.makedirs(bdir, exist_ok=True)
    paths = {}
    for n, data in states.items():
        paths[n] = os.path.join(bdir, n + ".bin")
        with open(paths[n], "wb") as f:
            f.write(data)
    r1["states_carried"] = {n: f"{binascii.crc32(d):08x}" for n, d in states.items()}
    plan2 = [
        {"op": "pintest", "name": "dst-default", "pins": None, "args": regs},
        {"op": "pintest", "name": "dst-refused", "pins": f"{PSCI:#x}=0x10003", "args": regs},
    ]
    for n in ("unpinned", "pinned"):
        if n in paths:
            plan2.append({"op": "restore", "name": n, "state": f"/state-in/{n}.bin",
                          "pins": dst_pins if n == "pinned" else None, "lines": 2, "reset": True})
    initrd2 = build(suite, name + "-dst", plan2, paths)
    r2, _ = boot(dst, initrd2, name + "-dst")
    return {"pair": name, "suite": suite, "src": src, "dst": dst, "pins": pins, "dst_pins": dst_pins, "l1_cpu": L1_CPU,
            "source_boot": r1, "destination_boot": r2, "host_wall_s": round(time.time() - t0, 1)}

def main(argv):
    if len(argv) >= 5 and argv[0] == "pair":
        out = argv[argv.index("--out") + 1] if "--out" in argv else None
        pos = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")]
        dst_pins = pos[5] if len(pos) > 5 and pos[5] != "-" else None
        res = pair(pos[1], pos[2], pos[3], pos[4], dst_pins)
        text = json.dumps(res, indent=1, sort_keys=True)
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                f.write(text + "\n")
        else:
            print(text)
        return 0
    print(__doc__, file=sys.stderr)
    return 2

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
