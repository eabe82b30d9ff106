#!/usr/bin/env python3
"""Runs inside an L1 arm64 kernel (initramfs /init) as the QMP client of an inner
qemu-system-aarch64 -accel kvm -cpu host, following the steps of /plan.json:

  {"op": "pintest", "name": N, "pins": "ID=V,..."|null, "args": ["scratch"?, ID...]}
      run /opt/abiguard/pintest (real KVM vCPU) with LD_PRELOAD=abiguard_pin.so
  {"op": "save", "name": N, "pins": ...|null, "lines": 3, "dump": true}
      start QEMU -S (pins via the preload library), cont, wait for `lines` full guest lines,
      stop, migrate to exec:cat > /tmp/state-N.bin, quit; dump: base64 on the console
  {"op": "restore", "name": N, "state": PATH, "pins": ...|null, "lines": 2, "reset": true}
      QEMU -incoming exec:cat PATH; on success cont and read `lines` new guest lines;
      reset: then system_reset and record what the rebooted guest sees

The guest (payload.S) prints lines "NNNN r1 ... r9": a counter and the SMCCC/PSCI/KVM
hypercall discovery answers. Prints one JSON object between markers."""
import base64
import binascii
import json
import os
import socket
import subprocess
import time

T0 = time.monotonic()
R = {"steps": [], "errors": []}
def t(): return round(time.monotonic() - T0, 3)
QDIR = "/opt/qemu"
QBIN = [QDIR + "/lib/ld-linux-aarch64.so.1", "--library-path", QDIR + "/lib", QDIR + "/bin/qemu-system-aarch64"]
BASE = ["-accel", "kvm", "-M", "virt,gic-version=3", "-cpu", "host", "-m", "64", "-smp", "1",
        "-nodefaults", "-no-user-config", "-nographic", "-L", QDIR + "/share", "-kernel", "/payload.bin"]
PIN_LIB = "/opt/abiguard/abiguard_pin.so"
FUNCS = ["PSCI_VERSION", "SMCCC_VERSION", "ARCH_FEATURES(WORKAROUND_1)", "ARCH_FEATURES(PV_TIME)",
         "TRNG_VERSION", "PSCI_FEATURES(SYSTEM_OFF2)", "KVM_VENDOR_FEATURES", "KVM_DISCOVER_IMPL_VER",
         "KVM_PTP"]

def read_text(path, errors="replace"):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors)

def log(*a): print("NESTED", t(), *a, flush=True)

class QMP:
    def __init__(self, path, proc, timeout=90):
        end = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX); self.s.connect(path); break
            except OSError:
                if time.monotonic() > end or proc.poll() is not None: raise
                time.sleep(0.05)
        self.f = self.s.makefile("rwb")
        self.greeting = json.loads(self.f.readline())
        self.cmd("qmp_capabilities")
    def cmd(self, name, **args):
        m = {"execute": name}
        if args: m["arguments"] = args
        self.f.write(json.dumps(m).encode() + b"\n"); self.f.flush()
        while True:
            line = self.f.readline()
            if not line: raise EOFError("QMP closed during " + name)
            r = json.loads(line)
            if "event" in r: continue
            if "error" in r: raise RuntimeError("{}: {}".format(name, r["error"]))
            return r["return"]

def env_for(pins):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None); env.pop("ABIGUARD_PINS", None)
    if pins is not None:
        env["LD_PRELOAD"] = PIN_LIB; env["ABIGUARD_PINS"] = pins
    return env

def serial(path):
    try: return open(path, "rb").read().decode("latin-1")
    except OSError: return ""

def services(seen):
    """what the guest can use: the answers, with KVM_PTP's time value reduced to available"""
    out = dict(seen)
    out["KVM_PTP"] = "not-supported" if seen["KVM_PTP"] == "ffffffff" else "available"
    return out

def lines_of(text):
    """complete guest lines, parsed: (counter, {func: value})"""
    out = []
    for l in text.split("\r\n")[:-1]:
        f = l.split()
        if len(f) == 1 + len(FUNCS):
            out.append((int(f[0], 16), services(dict(zip(FUNCS, f[1:])))))
    return out

def wait_lines(path, n, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ls = lines_of(serial(path))
        if len(ls) >= n: return ls
        time.sleep(0.05)
    raise RuntimeError(f"guest printed only {serial(path)[-300:]!r}")

def start(st, tag, extra, pins):
    sock, ser, out = f"/tmp/{tag}.sock", f"/tmp/{tag}.serial", f"/tmp/{tag}.out"
    for p in (sock, ser):
        if os.path.exists(p): os.unlink(p)
    cmd = QBIN + BASE + ["-serial", "file:" + ser, "-qmp", f"unix:{sock},server=on,wait=off"] + extra
    st["output_file"] = out
    t1 = time.monotonic()
    with open(out, "wb") as outf:
        p = subprocess.Popen(cmd, stdout=outf, stderr=subprocess.STDOUT, env=env_for(pins))
    try:
        q = QMP(sock, p)
    except Exception as e:  # noqa: BLE001 (whatever stops QMP: record QEMU's output)
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill(); p.wait()
        st["rc"] = p.returncode
        st["qemu_output"] = read_text(out)[-2000:]
        raise RuntimeError(f"no QMP ({type(e).__name__})") from e
    st["qmp_ready_s"] = round(time.monotonic() - t1, 3)
    v = q.greeting["QMP"]["version"]["qemu"]
    st["qemu_version"] = "{}.{}.{}".format(v["major"], v["minor"], v["micro"])
    return p, q, ser, out

def finish(st, p, q, out):
    try: q.cmd("quit")
    except (EOFError, OSError, RuntimeError): pass
    try: p.wait(30)
    except subprocess.TimeoutExpired: p.kill(); p.wait()
    st["rc"] = p.returncode
    st["qemu_output"] = read_text(out).strip()[-2000:]

def pintest(st):
    cmd = ["/opt/abiguard/pintest"] + st["args"]
    r = subprocess.run(cmd, env=env_for(st.get("pins")), capture_output=True, timeout=60, check=False)
    st["rc"] = r.returncode
    st["stdout"] = r.stdout.decode("utf-8", "replace")
    st["stderr"] = r.stderr.decode("utf-8", "replace")
    st["values"] = dict(l.split("=", 1) for l in st["stdout"].split() if "=" in l)

def save(st):
    tag = "save-" + st["name"]; state = "/tmp/state-{}.bin".format(st["name"])
    p, q, ser, out = start(st, tag, ["-S"], st.get("pins"))
    q.cmd("cont")
    ls = wait_lines(ser, st.get("lines", 3))
    q.cmd("stop"); time.sleep(0.2)
    ls = lines_of(serial(ser))
    st["guest_lines"] = len(ls); st["guest_last"] = ls[-1][0]; st["guest_sees"] = ls[-1][1]
    st["serial_tail"] = serial(ser)[-200:]
    st["guest_consistent"] = all(l[1] == ls[0][1] for l in ls)
    t1 = time.monotonic()
    q.cmd("migrate", uri="exec:cat > " + state)
    while True:
        m = q.cmd("query-migrate")
        if m.get("status") in ("completed", "failed", "cancelled"): break
        time.sleep(0.02)
    st["migrate_s"] = round(time.monotonic() - t1, 3); st["migrate_status"] = m.get("status")
    if "error-desc" in m: st["migrate_error"] = m["error-desc"]
    finish(st, p, q, out)
    with open(state, "rb") as f:
        data = f.read()
    st["state_bytes"] = len(data); st["state_crc32"] = f"{binascii.crc32(data):08x}"

def restore(st):
    tag = "restore-" + st["name"]
    t1 = time.monotonic()
    p, q, ser, out = start(st, tag, ["-incoming", "exec:cat " + st["state"]], st.get("pins"))
    status = "inmigrate"
    while status == "inmigrate":
        try:
            status = q.cmd("query-status")["status"]
        except (EOFError, OSError):
            status = "qemu-exited"; break
        if time.monotonic() - t1 > 90: status = "timeout"; break
        time.sleep(0.02)
    st["incoming_s"] = round(time.monotonic() - t1, 3)
    st["status_after_incoming"] = status
    try:
        m = q.cmd("query-migrate")
        st["incoming_migrate_status"] = m.get("status")
        if "error-desc" in m: st["incoming_error"] = m["error-desc"]
    except (EOFError, OSError, RuntimeError):
        pass
    st["restored"] = status in ("paused", "running", "postmigrate")
    if st["restored"]:
        if status != "running": q.cmd("cont")
        ls = wait_lines(ser, st.get("lines", 2))
        st["guest_first"] = ls[0][0]; st["guest_sees"] = ls[0][1]
        st["serial_head"] = serial(ser)[:200]
        st["guest_consistent"] = all(l[1] == ls[0][1] for l in ls)
        if st.get("reset"):
            # a guest reboot here: QEMU re-inits the vCPU (KVM_ARM_VCPU_INIT) and reads the
            # registers back; what does the rebooted guest see? (stopped first, so the new
            # output starts at a line boundary)
            q.cmd("stop"); time.sleep(0.1)
            mark = len(serial(ser))
            q.cmd("system_reset"); q.cmd("cont")
            end = time.monotonic() + 30
            while time.monotonic() < end and not lines_of(serial(ser)[mark:]):
                time.sleep(0.05)
            after = lines_of(serial(ser)[mark:])
            if after and after[0][0] == 0:
                st["after_reset_sees"] = after[0][1]
            else:
                st["after_reset_error"] = f"no fresh line after system_reset: {serial(ser)[mark:][-200:]!r}"
    finish(st, p, q, out)

def main():
    print("NESTED kvm={} kernel={}".format(os.path.exists("/dev/kvm"), os.uname().release), flush=True)
    R["kernel"] = os.uname().release
    with open("/plan.json") as f:
        plan = json.load(f)
    for step in plan:
        st = dict(step); R["steps"].append(st)
        t1 = time.monotonic()
        try:
            {"pintest": pintest, "save": save, "restore": restore}[st["op"]](st)
        except Exception as e:  # noqa: BLE001 (a failed step is a result)
            st["error"] = f"{type(e).__name__}: {e}"
            if "qemu_output" not in st and os.path.exists(st.get("output_file", "")):
                time.sleep(0.5)
                st["qemu_output"] = read_text(st["output_file"]).strip()[-2000:]
            R["errors"].append("{} {}: {}".format(st["op"], st.get("name"), st["error"]))
        st["wall_s"] = round(time.monotonic() - t1, 3)
        log(st["op"], st.get("name"), "rc={}".format(st.get("rc")), st.get("error", ""))
    R["total_s"] = t()
    print("=====NESTED-JSON-BEGIN=====")
    js = json.dumps(R)
    for i in range(0, len(js), 1000): print(js[i:i + 1000])
    print("=====NESTED-JSON-END=====", flush=True)
    for st in R["steps"]:
        if st["op"] == "save" and st.get("dump") and os.path.exists("/tmp/state-{}.bin".format(st["name"])):
            print("=====NESTED-STATE-BEGIN name={}=====".format(st["name"]))
            with open("/tmp/state-{}.bin".format(st["name"]), "rb") as f:
                b = base64.b64encode(f.read()).decode()
            for i in range(0, len(b), 4000): print(b[i:i + 4000])
            print("=====NESTED-STATE-END=====", flush=True)
main()
