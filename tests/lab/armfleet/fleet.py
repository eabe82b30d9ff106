"""The running lab: arm64 libvirt hosts on one private L2 segment, and the driver's hands on
them (shell, files, virsh, the guest's console).

    lab = Lab.create(hosts="bookworm,trixie,sid")    # or Lab.attach(run_id)
    lab.up()
    lab.sh("trixie", "dpkg -l libvirt-daemon")
    lab.copy_in("sid", "abiguard_1.0_arm64.deb", "/root/")
    lab.virsh("bookworm", "list", "--all")
    lab.down()

Network: a network namespace of this run (``afl-<run id>``) holds a bridge with the
driver's address (10.77.0.254) and one tap per host; each outer QEMU runs inside it
(nsenter) with ``-netdev tap``; the hosts are 10.77.0.11, .12, ... and know each other by
name (/etc/hosts, written at boot from the kernel command line). Nothing else is on that
segment and it has no route out. Everything the driver runs against the hosts (virsh over
qemu+tcp, ssh, the console helper) runs inside the namespace too.

Control channel: sshd in every host, root with this run's ed25519 key, one ControlMaster
connection per host (kept for the run), so a command costs a channel, not a handshake.
State: $ARMFLEET_RUNS/armfleet-<run id>/ (state.json, consoles, overlays, keys, logs);
``down`` stops exactly the processes that state records (pid + start time), then whatever
is still inside the run's namespace (only we start processes there), then removes it.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import shlex
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from . import guest, machine, rootfs
from .common import (
    CHILDREN,
    HERE,
    RUNS,
    LabError,
    kill_recorded,
    log,
    proc_starttime,
    run,
    same_process,
    set_logfile,
    write_json,
)

SUBNET = "10.77.0"
DRIVER_IP = f"{SUBNET}.254"
FIRST_HOST = 11
BOOT_TIMEOUT = float(os.environ.get("ARMFLEET_BOOT_TIMEOUT", "900"))
SYSTEM_PYTHON = "/usr/bin/python3"          # the distribution's python3, with python3-libvirt
DEFAULT_HOSTS = "bookworm,trixie,sid"
GUEST_IMAGE = "/var/lib/libvirt/images/armfleet-guest.bin"


@dataclass
class HostSpec:
    """One lab host: NAME=SUITE[:CPU] (NAME alone = that suite, outer -cpu default)."""
    name: str
    suite: str
    cpu: str = machine.DEFAULT_CPU

    @classmethod
    def parse_list(cls, text: str) -> list[HostSpec]:
        specs = []
        for item in filter(None, (x.strip() for x in text.split(","))):
            name, _, rest = item.partition("=")
            suite, _, cpu = (rest or name).partition(":")
            if suite not in rootfs.SUITES:
                raise LabError(f"host {item!r}: suite must be one of {', '.join(rootfs.SUITES)}")
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name):
                raise LabError(f"host name {name!r}: lowercase letters, digits, '-'")
            specs.append(cls(name, suite, cpu or machine.DEFAULT_CPU))
        if len({s.name for s in specs}) != len(specs):
            raise LabError(f"duplicate host names in {text!r}")
        return specs


def new_run_id() -> str:
    return time.strftime("%m%d%H%M%S") + f"-{os.getpid()}"


class Lab:
    def __init__(self, run_id: str, state: dict) -> None:
        self.run_id = run_id
        self.dir = RUNS / f"armfleet-{run_id}"
        self.state = state
        self._lock = threading.Lock()
        self._helpers: list[subprocess.Popen] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    @contextlib.contextmanager
    def session(cls, hosts: str = DEFAULT_HOSTS, run_id: str | None = None,
                attach: str | None = None) -> Iterator[Lab]:
        """A lab for one test module: *attach* (a run that is up: used, left up), or a new
        run created, brought up and always brought down -- on SIGTERM too (CI's timeout),
        with atexit as the last resort."""
        import signal

        if attach:
            yield cls.attach(attach)
            return
        from helpers.timing import phase

        lab = cls.create(hosts=hosts, run_id=run_id)
        atexit.register(lab.down)           # down() is idempotent

        def term(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")
        old = signal.signal(signal.SIGTERM, term)
        try:
            with phase(f"arm64 hosts {', '.join(lab.hosts)}: build or reuse the bases, boot, libvirtd ready"):
                lab.up()
            yield lab
        finally:
            try:
                with phase("arm64 hosts down"):
                    lab.down()
            finally:
                signal.signal(signal.SIGTERM, old)
                atexit.unregister(lab.down)

    @classmethod
    def create(cls, hosts: str = DEFAULT_HOSTS, run_id: str | None = None) -> Lab:
        run_id = run_id or os.environ.get("ARMFLEET_RUN") or new_run_id()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", run_id):
            raise LabError(f"bad run id {run_id!r}")
        d = RUNS / f"armfleet-{run_id}"
        if (d / "state.json").exists():
            old = json.loads((d / "state.json").read_text())
            if old.get("status") != "down":
                raise LabError(f"run {run_id} is {old.get('status')} ({d}); 'down' it first or use another "
                               "ARMFLEET_RUN")
            # a finished run of the same id: keep its records, start a fresh state
            os.replace(d / "state.json", d / f"state-{int(old.get('created', 0))}.json")
        specs = HostSpec.parse_list(hosts)
        state = {"run": run_id, "netns": f"afl-{run_id}", "status": "new", "created": time.time(),
                 "hosts": {s.name: {**asdict(s), "ip": f"{SUBNET}.{FIRST_HOST + i}",
                                    "mac": f"52:54:00:77:00:{FIRST_HOST + i:02x}", "tap": f"tap{i}",
                                    "host_uuid": str(uuid.uuid4())} for i, s in enumerate(specs)},
                 "order": [s.name for s in specs], "processes": {}, "timings": {}}
        lab = cls(run_id, state)
        lab.dir.mkdir(parents=True, exist_ok=True)
        lab.save()
        return lab

    @classmethod
    def attach(cls, run_id: str | None = None) -> Lab:
        """The run *run_id* (default: $ARMFLEET_RUN, else the only run with a state dir)."""
        run_id = run_id or os.environ.get("ARMFLEET_RUN")
        if not run_id:
            runs = sorted(f.parent.name[len("armfleet-"):] for f in RUNS.glob("armfleet-*/state.json")
                          if json.loads(f.read_text()).get("status") != "down")
            if len(runs) != 1:
                raise LabError(f"say which run (ARMFLEET_RUN): {runs or 'none'} under {RUNS}")
            run_id = runs[0]
        f = RUNS / f"armfleet-{run_id}" / "state.json"
        if not f.exists():
            raise LabError(f"no run {run_id} ({f})")
        return cls(run_id, json.loads(f.read_text()))

    def save(self) -> None:
        with self._lock:
            write_json(self.dir / "state.json", self.state)

    @property
    def hosts(self) -> list[str]:
        """host names in the order --hosts gave them (state.json itself is written sorted)"""
        return list(self.state.get("order") or self.state["hosts"])

    def host(self, name: str) -> dict:
        try:
            return self.state["hosts"][name]
        except KeyError:
            raise LabError(f"no host {name!r} in run {self.run_id} (hosts: {', '.join(self.hosts)})") from None

    @property
    def netns(self) -> str:
        return self.state["netns"]

    @property
    def nsenter(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--"]

    def _record(self, key: str, pid: int, what: str) -> None:
        with self._lock:
            self.state["processes"][key] = {"pid": pid, "starttime": proc_starttime(pid), "what": what}
        self.save()

    # ------------------------------------------------------------------ up / down
    def up(self) -> dict:
        """Build (or reuse) the base images, make the network, boot every host, wait until
        each has libvirtd ready and answers over ssh. Returns the timings."""
        set_logfile(self.dir / "lab.log")
        t0 = time.monotonic()
        self.state["status"] = "starting"
        self.save()
        suites = sorted({h["suite"] for h in self.state["hosts"].values()})
        bases = rootfs.ensure_all(suites)
        t_build = time.monotonic() - t0
        for h in self.state["hosts"].values():
            h["base"] = str(bases[h["suite"]].dir)
            h["versions"] = bases[h["suite"]].manifest["versions"]
            h["kernel"] = bases[h["suite"]].manifest["kernel_packages"]
        self._network()
        self._ssh_setup(bases)
        payload = guest.build(self.dir / "guest.bin")
        t1 = time.monotonic()
        with ThreadPoolExecutor(len(self.hosts)) as ex:
            ready = dict(zip(self.hosts, ex.map(lambda n: self._boot(n, bases[self.host(n)["suite"]]), self.hosts)))
        t_boot = time.monotonic() - t1
        with ThreadPoolExecutor(len(self.hosts)) as ex:
            sshs = dict(zip(self.hosts, ex.map(self._ssh_master, self.hosts)))
        for n in self.hosts:
            self.copy_in(n, payload, GUEST_IMAGE)
        self.state["timings"].update({
            "build_or_lookup_s": round(t_build, 1), "boot_all_s": round(t_boot, 1),
            "boot_to_ready_s": {n: r["ready_s"] for n, r in ready.items()},
            "guest_uptime_at_ready_s": {n: r["uptime"] for n, r in ready.items()},
            "ssh_first_connect_s": sshs, "up_total_s": round(time.monotonic() - t0, 1)})
        self.state["status"] = "up"
        self.state["outer_qemu"] = machine.outer_qemu_version()
        self.save()
        log(f"lab {self.run_id} up in {self.state['timings']['up_total_s']} s: "
            + ", ".join(f"{n} ready after {r['ready_s']} s" for n, r in ready.items()))
        return self.state["timings"]

    def _network(self) -> None:
        ns = self.netns
        if Path(f"/run/netns/{ns}").exists():
            raise LabError(f"netns {ns} exists already (another run with this id?)")
        run(["ip", "netns", "add", ns])
        self.state["netns_created"] = True
        self.save()
        ipn = ["ip", "-n", ns]
        run([*ipn, "link", "set", "lo", "up"])
        run([*ipn, "link", "add", "br0", "type", "bridge"])
        run([*ipn, "addr", "add", f"{DRIVER_IP}/24", "dev", "br0"])
        run([*ipn, "link", "set", "br0", "up"])
        for h in self.state["hosts"].values():
            run([*ipn, "tuntap", "add", "dev", h["tap"], "mode", "tap"])
            run([*ipn, "link", "set", h["tap"], "master", "br0", "up"])

    def _ssh_setup(self, bases: dict) -> None:
        d = self.dir / "ssh"
        d.mkdir(exist_ok=True)
        key = d / "id_ed25519"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"armfleet-{self.run_id}", "-f", str(key)])
        known, cfg = [], []
        for name, h in self.state["hosts"].items():
            typ, pub = bases[h["suite"]].manifest["hand_configured"]["ssh_host_key"]
            known.append(f"{name},{h['ip']} {typ} {pub}")
            cfg.append(f"Host {name}\n  HostName {h['ip']}\n")
        (d / "known_hosts").write_text("\n".join(known) + "\n")
        cfg.append(f"Host *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
                   f"  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
                   f"  ControlMaster auto\n  ControlPath {d}/ctl-%n.sock\n  ControlPersist 3600\n"
                   "  ConnectTimeout 60\n  ServerAliveInterval 15\n  ServerAliveCountMax 8\n  LogLevel ERROR\n")
        (d / "config").write_text("\n".join(cfg))

    def _boot(self, name: str, base: rootfs.Base) -> dict:
        h = self.host(name)
        hd = self.dir / "hosts" / name
        hd.mkdir(parents=True, exist_ok=True)
        overlay = hd / "root.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base.image), str(overlay)])
        key = (self.dir / "ssh/id_ed25519.pub").read_text().split()[1]
        hostlist = ",".join(f"{n}@{x['ip']}" for n, x in self.state["hosts"].items())
        append = (f"console=ttyAMA0 root=/dev/vda rw panic=-1 armfleet.mode=run armfleet.name={name} "
                  f"armfleet.ip={h['ip']}/24 armfleet.hosts={hostlist} armfleet.uuid={h['host_uuid']} "
                  f"armfleet.key={key} {os.environ.get('ARMFLEET_APPEND', '')}").strip()
        console = hd / "console.log"
        console.unlink(missing_ok=True)      # a reused run dir: never read an old boot's markers
        cmd = machine.qemu_cmd(kernel=base.kernel, initrd=base.initrd, console=console, cpu=h["cpu"],
                               drive=f"file={overlay},if=none,id=d0,format=qcow2,cache=unsafe",
                               append=append, qmp=hd / "qmp.sock",
                               net=["-netdev", f"tap,id=n0,ifname={h['tap']},script=no,downscript=no",
                                    "-device", f"virtio-net-pci,netdev=n0,mac={h['mac']}"])
        (hd / "qemu-cmdline.txt").write_text(shlex.join(cmd) + "\n")
        # the QEMU holds a shared lock on its base image for as long as it runs, so a newer
        # build's garbage collection never deletes a base that a running host still reads
        lockfd = os.open(base.lock, os.O_RDONLY)
        fcntl.flock(lockfd, fcntl.LOCK_SH)
        t0 = time.monotonic()
        with open(hd / "qemu-stderr.log", "ab") as err:
            p = subprocess.Popen([*self.nsenter, *cmd], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                 start_new_session=True, pass_fds=(lockfd,))
        os.close(lockfd)
        CHILDREN.add(p)
        self._record(f"qemu:{name}", p.pid, f"outer QEMU of host {name}")
        log(f"{name}: booting {h['suite']} (pid {p.pid}), console {console}")
        m, waited = machine.wait_console(console, r"AFH t=([\d.]+) AFH-READY", timeout=BOOT_TIMEOUT, pid=p.pid)
        CHILDREN.discard(p)        # from here on it belongs to the run (down stops it)
        h["ready_s"] = round(time.monotonic() - t0, 1)
        h["uptime_at_ready"] = float(m.group(1))
        self.save()
        log(f"{name}: ready after {h['ready_s']} s (guest uptime {m.group(1)} s)")
        return {"ready_s": h["ready_s"], "uptime": float(m.group(1))}

    def _ssh_master(self, name: str) -> float:
        t0 = time.monotonic()
        # the first command on the host also lifts printk's rate limit, once per boot: without
        # auditd, AppArmor's audit lines reach the kernel log through kauditd_printk_skb's
        # printk_ratelimit() (10 per 5 s by default), which the profile loads of a VM start
        # can use up before the denial a test looks for (:meth:`dmesg_since`)
        self.sh(name, "sysctl -q -w kernel.printk_ratelimit=0; true", timeout=120)
        took = round(time.monotonic() - t0, 2)
        out = run([*self.nsenter, "ssh", "-F", str(self.dir / "ssh/config"), "-O", "check", name],
                  check=False, quiet=True)
        m = re.search(r"pid=(\d+)", out.stderr + out.stdout)
        if m:
            self._record(f"ssh:{name}", int(m.group(1)), f"ssh ControlMaster to {name}")
        return took

    def down(self, keep_logs: bool = True) -> None:
        """Stop everything this run started; remove its namespace and overlays."""
        log(f"lab {self.run_id}: down")
        for p in self._helpers:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        procs = self.state.get("processes", {})
        for key in sorted(procs, key=lambda k: (not k.startswith("console"), k)):
            rec = procs[key]
            kill_recorded(rec["pid"], rec.get("starttime"), rec.get("what", key))
        ns = self.netns
        if self.state.get("netns_created") and Path(f"/run/netns/{ns}").exists():
            # only this run starts processes in its namespace: whatever is left is ours
            left = run(["ip", "netns", "pids", ns], check=False, quiet=True).stdout.split()
            for pid in map(int, left):
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                    cmdline = raw.replace(b"\0", b" ")[:80].decode(errors="replace")
                except OSError:
                    continue
                kill_recorded(pid, proc_starttime(pid), f"leftover in netns {ns}: {cmdline}")
            run(["ip", "netns", "delete", ns], check=False)
        for hd in (self.dir / "hosts").glob("*"):
            (hd / "root.qcow2").unlink(missing_ok=True)
        for f in (self.dir / "ssh").glob("ctl-*.sock"):
            f.unlink(missing_ok=True)
        self.state["status"] = "down"
        self.state["processes"] = {}
        self.save()
        set_logfile(None)

    def status(self) -> dict:
        out = {"run": self.run_id, "dir": str(self.dir), "status": self.state["status"], "netns": self.netns,
               "hosts": {}}
        for name, h in self.state["hosts"].items():
            rec = self.state["processes"].get(f"qemu:{name}")
            alive = bool(rec and same_process(rec["pid"], rec["starttime"]))
            out["hosts"][name] = {"suite": h["suite"], "ip": h["ip"], "cpu": h["cpu"], "running": alive,
                                  "pid": rec["pid"] if rec else None, "ready_s": h.get("ready_s")}
        return out

    # ------------------------------------------------------------------ hands on the hosts
    def ssh_cmd(self, name: str) -> list[str]:
        self.host(name)
        return [*self.nsenter, "ssh", "-F", str(self.dir / "ssh/config"), name]

    def sh(self, name: str, cmd: str, *, check: bool = True, timeout: float = 300,
           input: str | bytes | None = None, quiet: bool = False) -> subprocess.CompletedProcess:
        """Run the shell command *cmd* on host *name* (as root); output captured as text."""
        if not quiet:
            log(f"{name}# {cmd[:300]}")
        return run([*self.ssh_cmd(name), cmd], check=check, timeout=timeout, input=input, quiet=True)

    def copy_in(self, name: str, local: str | Path, remote: str, mode: str = "0644") -> None:
        """Copy a local file to *remote* on host *name* (a directory keeps the file name)."""
        data = Path(local).read_bytes()
        target = remote.rstrip("/") + "/" + Path(local).name if remote.endswith("/") else remote
        log(f"{name}: copy {local} -> {target} ({len(data)} bytes)")
        run([*self.ssh_cmd(name), f"cat > {shlex.quote(target)}.part && chmod {mode} {shlex.quote(target)}.part "
             f"&& mv {shlex.quote(target)}.part {shlex.quote(target)}"], input=data, quiet=True, timeout=600)

    def copy_out(self, name: str, remote: str, local: str | Path) -> Path:
        p = subprocess.run([*self.ssh_cmd(name), f"cat {shlex.quote(remote)}"], capture_output=True, timeout=600,
                           start_new_session=True)
        if p.returncode != 0:
            raise LabError(f"{name}: cannot read {remote}: {p.stderr.decode(errors='replace')}")
        Path(local).write_bytes(p.stdout)
        log(f"{name}: copy {remote} -> {local} ({len(p.stdout)} bytes)")
        return Path(local)

    def restart_libvirtd(self, name: str) -> float:
        """Stop host *name*'s libvirtd (by its pid file) and start it as armfleet-boot does:
        libvirt looks for hook scripts only when it starts (an operator's ``systemctl
        restart libvirtd`` after installing abiguard). Running QEMUs are reconnected."""
        t0 = time.monotonic()
        self.sh(name, "p=$(cat /run/libvirtd.pid) && kill $p && i=0 && "
                      "while kill -0 $p 2>/dev/null; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done; "
                      "setsid libvirtd -d --listen </dev/null >/dev/null 2>&1 && i=0 && "
                      "until timeout 30 virsh -q -c qemu:///system version >/dev/null 2>&1; do "
                      "i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.25; done", timeout=400)
        return round(time.monotonic() - t0, 1)

    def uri(self, name: str) -> str:
        return f"qemu+tcp://{self.host(name)['ip']}/system"

    def virsh(self, name: str, *args: str, check: bool = True, timeout: float = 600,
              quiet: bool = False) -> subprocess.CompletedProcess:
        """virsh on this machine, against host *name*'s libvirtd over the lab network."""
        if not quiet:
            log(f"virsh@{name} {' '.join(args)}")
        return run([*self.nsenter, "virsh", "-q", "-c", self.uri(name), *args], check=check, timeout=timeout,
                   quiet=True)

    def console(self, name: str, dom: str) -> Console:
        return Console(self, name, dom)

    def uptime(self, name: str) -> float:
        return float(self.sh(name, "cut -d' ' -f1 /proc/uptime", quiet=True).stdout)

    def kmsg_mark(self, name: str) -> str:
        """Write a unique line into host *name*'s kernel log and return it: :meth:`dmesg_since`
        reads what follows it. A marker, not an uptime: the log's timestamps (local_clock) are
        not /proc/uptime's clock (printk's rate limit is lifted once, when the host comes up)."""
        mark = f"abiguard-lab mark {uuid.uuid4().hex}"
        self.sh(name, f"echo '{mark}' > /dev/kmsg", quiet=True)
        return mark

    def dmesg_since(self, name: str, mark: str, pattern: str) -> list[str]:
        """kernel log lines of host *name* after *mark* (from :meth:`kmsg_mark`) matching
        *pattern*; a marker no longer in the ring buffer is an error, not an empty answer"""
        lines = self.sh(name, "dmesg", quiet=True).stdout.splitlines()
        at = next((i for i, line in enumerate(lines) if line.endswith(mark)), None)
        if at is None:
            raise RuntimeError(f"{name}: kernel log marker {mark!r} is gone from dmesg (ring buffer wrapped)")
        return [line for line in lines[at + 1:] if re.search(pattern, line)]

    def qemu_pid(self, name: str, dom: str) -> int | None:
        p = self.sh(name, f"cat /run/libvirt/qemu/{shlex.quote(dom)}.pid 2>/dev/null", check=False, quiet=True)
        return int(p.stdout.strip()) if p.stdout.strip().isdigit() else None

    def domstate(self, name: str, dom: str) -> str:
        p = self.virsh(name, "domstate", "--reason", dom, check=False, quiet=True)
        return p.stdout.strip() if p.returncode == 0 else "absent"

    def versions(self, name: str) -> dict[str, str]:
        """dpkg's view of the packages that matter, read on the running host"""
        out = self.sh(name, "dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n' "
                      "'libvirt-daemon' 'libvirt-daemon-system' 'libvirt-clients' 'qemu-system-arm' 'apparmor' "
                      "'python3-libvirt' 'linux-image-*' 'linux-binary-*' 'linux-modules-*' 2>/dev/null; "
                      "echo kernel-release$'\\t'$(uname -r)", check=False, quiet=True).stdout
        got = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and (len(parts) < 3 or parts[2].startswith("ii")):
                got[parts[0]] = parts[1]
        return got


class Console:
    """A guest's serial console, read through libvirt's console stream by console_helper.py
    (the distribution's python3 + python3-libvirt, inside the lab's namespace) into a file."""

    def __init__(self, lab: Lab, host: str, dom: str) -> None:
        self.lab, self.host, self.dom = lab, host, dom
        d = lab.dir / "consoles"
        d.mkdir(exist_ok=True)
        n = 1
        while (d / f"{dom}@{host}-{n}.log").exists():
            n += 1
        self.path = d / f"{dom}@{host}-{n}.log"
        self.path.touch()
        self.proc = subprocess.Popen([*lab.nsenter, SYSTEM_PYTHON, str(HERE / "console_helper.py"), lab.uri(host),
                                      dom, str(self.path)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=open(self.path.with_suffix(".err"), "ab"), start_new_session=True)
        lab._helpers.append(self.proc)
        lab._record(f"console:{dom}@{host}-{n}", self.proc.pid, f"console reader {dom}@{host}")
        atexit.register(self.close)

    def text(self) -> str:
        return self.path.read_bytes().decode("utf-8", "replace")

    def views(self) -> list[dict]:
        return guest.parse_views(self.text())

    def wait_view(self, pred=lambda v: True, timeout: float = 120) -> dict:
        """the first complete view line satisfying *pred*"""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for v in self.views():
                if pred(v):
                    return v
            if self.proc.poll() is not None:
                raise LabError(f"console helper for {self.dom}@{self.host} exited: "
                               f"{self.path.with_suffix('.err').read_text()[-800:]}")
            time.sleep(0.3)
        raise LabError(f"no matching guest line from {self.dom}@{self.host} within {timeout:.0f} s "
                       f"(console {self.path}):\n{self.text()[-1500:]}")

    def heartbeats(self) -> list[tuple[int, int]]:
        return guest.heartbeats(self.text())

    def fresh_view(self, timeout: float = 120) -> dict:
        """ask the guest for a view line now ('P') and return it (computed after the ask)"""
        seen = len(self.views())
        self.send("P")
        t0 = last = time.monotonic()
        while time.monotonic() - t0 < timeout:
            vs = self.views()
            if len(vs) > seen:
                return vs[seen]
            if time.monotonic() - last > 10:      # a byte lost in a reset/migration: ask again
                self.send("P")
                last = time.monotonic()
            time.sleep(0.3)
        raise LabError(f"{self.dom}@{self.host}: no view line within {timeout:.0f} s of asking (console {self.path})")

    def wait_heartbeat(self, after: int = -1, timeout: float = 60) -> tuple[int, int]:
        """the first heartbeat with n > *after*"""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for hb in self.heartbeats():
                if hb[0] > after:
                    return hb
            time.sleep(0.3)
        raise LabError(f"{self.dom}@{self.host}: no heartbeat after n={after} within {timeout:.0f} s "
                       f"(console {self.path})")

    def wait_attached(self, timeout: float = 60) -> None:
        """until the helper has the console stream open (before that, input is dropped)"""
        t0 = time.monotonic()
        while "[console attached]" not in self.text():
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise LabError(f"console of {self.dom}@{self.host} not attached within {timeout:.0f} s: "
                               f"{self.path.with_suffix('.err').read_text()[-800:]}")
            time.sleep(0.1)

    def send(self, text: str) -> None:
        self.wait_attached()
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"send {text}\n".encode())
        self.proc.stdin.flush()

    def reopen(self) -> None:
        """A fresh console stream, into a new file: a stream opened on a domain that has
        just arrived can stay open yet silent (as after a failed migration)."""
        self.close()
        fresh = Console(self.lab, self.host, self.dom)
        self.path, self.proc = fresh.path, fresh.proc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
