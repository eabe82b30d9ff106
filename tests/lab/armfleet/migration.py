"""What the lab does with guests: start, live-migrate, save/restore, managedsave; each step
returns a record with libvirt's own words, timings and the guest's view before and after.

Migration is client-driven (no --p2p): this machine's virsh talks to both libvirtds over the
lab network and runs Begin (source), Prepare (destination), Perform (source), Finish
(destination), Confirm (source) as separate calls, so libvirt's error comes back from the
daemon that failed, and the job can be watched from here on the source while it runs (the
same steps run under --p2p, only driven by the source daemon; p2p=True does that)."""
from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import guest
from .common import log
from .fleet import Console, Lab

#: apparmor_parser runs for a per-VM profile, as the kernel logs them (one per compile)
AA_COMPILE = r'apparmor="STATUS" operation="profile_(load|replace)"[^\n]* name="libvirt-[0-9a-f-]{36}" '
AA_DENIED = r'apparmor="DENIED"'
#: libvirt's migration phases, from its own debug log (log_filters 1:qemu.qemu_migration);
#: on failure the phase is the furthest of begin/prepare/perform reached (see migrate_running)
PHASES = (("begin", "src", r"qemuMigrationSrcBegin"), ("prepare", "dst", r"qemuMigrationDstPrepare"),
          ("perform", "src", r"qemuMigrationSrcPerform|qemuMigrationSrcRun\b"),
          ("finish", "dst", r"qemuMigrationDstFinish"), ("confirm", "src", r"qemuMigrationSrcConfirm"))
Step = Callable[[Lab], None]


def _now_utc() -> datetime:
    return datetime.now(UTC)


def libvirt_error(stderr: str) -> str | None:
    lines = [ln[len("error: "):] if ln.startswith("error: ") else ln for ln in stderr.strip().splitlines()
             if ln.strip() and not ln.startswith("Migration: [")]
    return "\n".join(lines) or None


def parse_jobinfo(text: str) -> dict[str, str]:
    """``virsh domjobinfo --rawstats``: 'key: value' (or 'key=value') per line"""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z_.]+)\s*[:=]\s*(.+)", line)
        if m:
            out[m.group(1).strip()] = m.group(2).strip()
    return out


def jobinfo(lab: Lab, host: str, dom: str, completed: bool = False) -> dict[str, str]:
    args = ["domjobinfo", dom, "--rawstats", "--anystats"] + (["--completed", "--keep-completed"] if completed else [])
    p = lab.virsh(host, *args, check=False, quiet=True, timeout=60)
    return parse_jobinfo(p.stdout) if p.returncode == 0 else {}


def cleanup_domain(lab: Lab, dom: str, hosts: list[str] | None = None) -> None:
    """no trace of *dom* on *hosts* (destroyed, undefined, managed save removed)"""
    for h in hosts or lab.hosts:
        lab.virsh(h, "destroy", dom, check=False, quiet=True)
        lab.virsh(h, "undefine", "--managed-save", "--nvram", dom, check=False, quiet=True)


def pin(lab: Lab, host: str, dom: str, baseline: str | Path, args: tuple[str, ...] = ()) -> dict:
    """``abiguard pin --baseline`` (and *args*, e.g. ``--cpu a57``) run inside *host* (as an
    operator does) on the defined *dom*; the baseline file is carried there first. Returns
    rc, pin's output, seconds."""
    remote = f"/root/{Path(baseline).name}"
    lab.copy_in(host, baseline, remote)
    t0 = time.monotonic()
    more = "".join(f" {shlex.quote(a)}" for a in args)
    p = lab.sh(host, f"abiguard pin --baseline {shlex.quote(remote)}{more} -c qemu:///system {shlex.quote(dom)}",
               check=False, timeout=600)
    return {"rc": p.returncode, "output": (p.stdout + p.stderr).strip().splitlines(),
            "pin_s": round(time.monotonic() - t0, 1)}


def start_domain(lab: Lab, host: str, xml: str, *, console: bool = True, baseline: str | Path | None = None,
                 view: bool = True, pin_args: tuple[str, ...] = ()) -> dict:
    """Define and start *xml* on *host* (paused first, so the console is attached before the
    guest prints), pinned first to *baseline* when given; returns timings, AppArmor
    compiles, the QEMU pid, the console and the payload's first view (``view=False``: a
    guest that prints no views, e.g. :mod:`.linux`'s) -- or the error and the pin's output."""
    dom = guest.name_of(xml)
    path = lab.dir / "domains" / f"{dom}.xml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(xml)
    cleanup_domain(lab, dom, [host])
    lab.virsh(host, "define", str(path))
    pinned = pin(lab, host, dom, baseline, pin_args) if baseline is not None else None
    if pinned is not None and pinned["rc"] != 0:
        return {"host": host, "domain": dom, "pin": pinned,
                "error": "abiguard pin failed: " + " | ".join(pinned["output"][-5:])}
    since = lab.kmsg_mark(host)
    t0 = time.monotonic()
    p = lab.virsh(host, "start", "--paused", dom, check=False, timeout=900)
    start_s = round(time.monotonic() - t0, 1)
    rec: dict = {"host": host, "domain": dom, "start_s": start_s,
                 "apparmor_compiles": len(lab.dmesg_since(host, since, AA_COMPILE)),
                 "apparmor_denied": lab.dmesg_since(host, since, AA_DENIED)}
    if pinned is not None:
        rec["pin"] = pinned
    if p.returncode != 0:
        rec["error"] = libvirt_error(p.stderr)
        rec["qemu_log_tail"] = lab.sh(host, f"tail -n 20 /var/log/libvirt/qemu/{dom}.log", check=False,
                                      quiet=True).stdout.splitlines()
        return rec
    rec["qemu_pid"] = lab.qemu_pid(host, dom)
    rec["label"] = lab.sh(host, f"cat /proc/{rec['qemu_pid']}/attr/current", check=False, quiet=True).stdout.strip()
    con = lab.console(host, dom) if console else None
    if con:
        con.wait_attached()          # the guest is paused until its console is read
    lab.virsh(host, "resume", dom)
    rec["console"] = con
    if con and view:
        t1 = time.monotonic()
        rec["view"] = con.wait_view(timeout=180)
        rec["first_view_s"] = round(time.monotonic() - t1, 1)
    log(f"{dom} started on {host} in {start_s} s ({rec['apparmor_compiles']} per-VM profile compiles)")
    return rec


def _phases(lab: Lab, src: str, dst: str, since: datetime) -> dict[str, dict]:
    """first time each migration phase shows in the two libvirtd debug logs after *since*"""
    found: dict[str, dict] = {}
    # the hosts' clocks come from this machine's at boot (PL031) and run on the emulated
    # counter, which follows the host clock: measured within 0.2 s; look 2 s further back
    stamp = (since - timedelta(seconds=2)).strftime("%Y-%m-%d %H:%M:%S")
    for role, host in (("src", src), ("dst", dst)):
        # only lines after the start; the log is large, so filter on the host
        out = lab.sh(host, f"awk -v s={shlex.quote(stamp)} 'substr($0,1,19) >= s' /var/log/libvirt/libvirtd.log "
                     "| grep -a -E 'qemuMigration(Src|Dst)' | cut -c1-200", check=False, quiet=True).stdout
        for line in out.splitlines():
            for name, who, rx in PHASES:
                if who == role and name not in found and re.search(rx, line):
                    t = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
                    found[name] = {"host": host, "t_s": round((t - since).total_seconds(), 2)}
    return dict(sorted(found.items(), key=lambda kv: kv[1]["t_s"]))


def _who_logged(lab: Lab, hosts: tuple[str, ...], since: datetime, error: str) -> list[str]:
    """the hosts whose libvirtd logged *error* (its first line) as an error after *since*:
    a Prepare that fails before qemu_migration.c logs anything (e.g. an unknown machine type,
    refused while the incoming XML is parsed) still names the destination this way"""
    first = error.splitlines()[0] if error else ""
    if not first:
        return []
    needle = first.split("Z ", 1)[-1][:60]
    stamp = (since - timedelta(seconds=2)).strftime("%Y-%m-%d %H:%M:%S")
    found = []
    for h in hosts:
        p = lab.sh(h, f"awk -v s={shlex.quote(stamp)} 'substr($0,1,19) >= s' /var/log/libvirt/libvirtd.log "
                   f"| grep -a ': error : ' | grep -a -F -c -- {shlex.quote(needle)}", check=False, quiet=True)
        if p.stdout.strip().isdigit() and int(p.stdout.strip()) > 0:
            found.append(h)
    return found


def _last_n(console: Console) -> int | None:
    """the guest's line counter as last seen -- of the last heartbeat or view line, whichever
    came later: not the largest, since a guest reboot seen on the same console starts it
    again at 0 (and prints its boot view before the next heartbeat)"""
    found = re.findall(r"(?:AFG(?:-HB)?|AGI-HB) n=([0-9a-f]+) ", console.text())
    return int(found[-1], 16) if found else None


class PayloadReader:
    """How the payload guest (guest.S) is read: a view line on 'P', a reboot on 'R'."""

    @staticmethod
    def fresh(con: Console) -> dict:
        return con.fresh_view(timeout=180)

    @staticmethod
    def rebooted(con: Console, after: dict) -> dict:
        con.send("R")
        return con.wait_view(lambda v: v["boot"] != after["boot"], timeout=180)


def _bytes(stats: dict[str, str], key: str) -> int | None:
    v = stats.get(key)
    return int(v) if v and v.isdigit() else None


def migrate_running(lab: Lab, src: str, dst: str, dom: str, *, console: Console | None = None,
                    view_before: dict | None = None, p2p: bool = False, flags: tuple[str, ...] = (
                        "--live", "--persistent", "--undefinesource"), timeout: float = 1800,
                    reboot_check: bool = True, reader: type | None = None) -> dict:
    """Live-migrate the running *dom* from *src* to *dst* and say what happened. On success
    the guest's view is read on the destination, then again after a guest-initiated reboot
    there; on failure, whether the guest still runs on the source in the same QEMU.
    *reader*: how the guest's view is read (``fresh(console)``, ``rebooted(console,
    view)``); the payload's by default, :class:`.linux.Reader` for the Linux guest."""
    reader = reader or PayloadReader
    rec: dict = {"from": src, "to": dst, "domain": dom, "flags": list(flags), "p2p": p2p,
                 "mode": "peer-to-peer (source libvirtd drives)" if p2p else "client-driven (virsh drives)"}
    pid_before = lab.qemu_pid(src, dom)
    hb_before = _last_n(console) if console else None
    since_src, since_dst = lab.kmsg_mark(src), lab.kmsg_mark(dst)
    samples: list[dict] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def poll() -> None:           # the job as the source sees it while it runs
        while not stop.wait(1.0):
            s = jobinfo(lab, src, dom)
            if s:
                samples.append({"t_s": round(time.monotonic() - t0, 1), **s})

    poller = threading.Thread(target=poll, daemon=True)
    started_utc = _now_utc()
    rec["started_utc"] = started_utc.isoformat()
    poller.start()
    dest_uri = lab.uri(dst)
    args = ["migrate", *flags, "--verbose", *(["--p2p"] if p2p else []), dom, dest_uri,
            "--migrateuri", f"tcp://{lab.host(dst)['ip']}"]
    p = lab.virsh(src, *args, check=False, timeout=timeout)
    elapsed = round(time.monotonic() - t0, 1)
    stop.set()
    poller.join()
    rec["command"] = "virsh -c " + lab.uri(src) + " " + " ".join(args)
    rec["rc"] = p.returncode
    rec["error"] = libvirt_error(p.stderr) if p.returncode != 0 else None
    rec["migrate_s"] = elapsed
    rec["phases"] = _phases(lab, src, dst, started_utc)
    rec["apparmor_compiles_destination"] = len(lab.dmesg_since(dst, since_dst, AA_COMPILE))
    rec["apparmor_denied"] = {h: lab.dmesg_since(h, s, AA_DENIED) for h, s in ((src, since_src), (dst, since_dst))}
    ok = p.returncode == 0
    completed = jobinfo(lab, dst if ok else src, dom, completed=True)
    last = samples[-1] if samples else {}
    rec["job_completed"] = completed
    rec["job_progress"] = [{"t_s": x["t_s"], **{k: _bytes(x, k) for k in (
        "memory_processed", "memory_remaining", "data_processed") if k in x}} for x in samples]
    mem = _bytes(completed, "memory_processed") or _bytes(last, "memory_processed")
    rec["ram"] = {"memory_processed_bytes": mem,
                  "data_processed_bytes": _bytes(completed, "data_processed") or _bytes(last, "data_processed"),
                  "memory_total_bytes": _bytes(completed, "memory_total") or _bytes(last, "memory_total"),
                  "from": "domjobinfo --completed" if completed.get("memory_processed") else
                  ("domjobinfo while running" if last else "none (the job never started on the source)")}
    rec["source_state_after"] = lab.domstate(src, dom)
    rec["destination_state_after"] = lab.domstate(dst, dom)
    rec["source_qemu_pid_before"] = pid_before
    if ok:
        rec["phase"] = None
        rec["time_lost_s"] = 0.0
        rec["source_qemu_pid_after"] = lab.qemu_pid(src, dom)
        rec["destination_qemu_pid"] = lab.qemu_pid(dst, dom)
        if console is not None:
            console.close()
        con = lab.console(dst, dom)
        rec["console_destination"] = str(con.path)
        t1 = time.monotonic()
        after = reader.fresh(con)
        rec["view_after_s"] = round(time.monotonic() - t1, 1)
        rec["view_after"] = after
        rec["heartbeat_continues"] = (hb_before is not None and int(after["n"], 16) >= hb_before)
        if view_before is not None:
            rec["view_before"] = view_before
            rec["diff_after"] = guest.diff(view_before, after)
        if reboot_check:
            t2 = time.monotonic()
            rebooted = reader.rebooted(con, after)
            rec["reboot_s"] = round(time.monotonic() - t2, 1)
            rec["view_after_reboot"] = rebooted
            rec["destination_qemu_pid_after_reboot"] = lab.qemu_pid(dst, dom)
            if view_before is not None:
                rec["diff_after_reboot"] = guest.diff(view_before, rebooted)
        changed = bool(rec.get("diff_after") or rec.get("diff_after_reboot"))
        rec["outcome"] = "migrated-changed-view" if changed else "migrated-same-view"
        rec["console"] = con
    else:
        # the step that failed: Finish and Confirm also run after a failed Perform (to clean
        # up), so the first of begin/prepare/perform that did not complete is the answer
        reached = rec["phases"]
        raised_by = _who_logged(lab, (src, dst), started_utc, rec["error"] or "")
        rec["error_logged_by"] = raised_by
        rec["phase"] = ("perform" if "perform" in reached else
                        "prepare" if "prepare" in reached or dst in raised_by else "begin")
        rec["time_lost_s"] = elapsed
        rec["outcome"] = "refused" if "Hook script execution failed" in (rec["error"] or "") else "failed"
        rec["source_qemu_pid_after"] = lab.qemu_pid(src, dom)
        rec["source_same_qemu"] = pid_before is not None and rec["source_qemu_pid_after"] == pid_before
        rec["source_running"] = rec["source_state_after"].startswith("running")
        rec["source_paused"] = rec["source_state_after"].startswith("paused")
        rec["destination_qemu_log_tail"] = lab.sh(
            dst, f"tail -n 15 /var/log/libvirt/qemu/{dom}.log 2>/dev/null", check=False, quiet=True).stdout.splitlines()
        rec["error_from"] = "virsh"
        if not rec["error"]:
            # virsh exited non-zero and said nothing (seen once with this machine's virsh 9.0
            # driving a sid -> bookworm move whose destination QEMU failed the load): the
            # destination QEMU's own last error, said to come from there
            said = [ln for ln in rec["destination_qemu_log_tail"] if re.search(r"qemu-system-\w+: ", ln)]
            if said:
                rec["error"], rec["error_from"] = said[-1], "the destination's QEMU log (virsh printed no error)"
        if console is not None and rec["source_running"]:
            # a fresh console: after a failed migration the old stream may stay open yet go
            # silent (seen with libvirt 12.8 after a failed Prepare)
            seen = _last_n(console)
            seen = -1 if seen is None else seen
            console.close()
            console = lab.console(src, dom)
            hb = console.wait_heartbeat(after=seen, timeout=90)
            rec["guest_alive_on_source"] = {"heartbeat_before": hb_before, "heartbeat_after": hb[0]}
            rec["console"] = console
    log(f"{dom} {src} -> {dst}: {rec['outcome']} in {elapsed} s"
        + (f" at {rec['phase']}: {(rec['error'] or '')[:200]}" if not ok else ""))
    return rec


def _resumed(lab: Lab, host: str, dom: str, rec: dict, view_before: dict | None, reader: type | None) -> dict:
    """A domain restored paused on *host*: its console attached, resumed, its view read (by
    *reader*, the payload's by default) and held to *view_before*; *rec* completed with
    outcome, view and console."""
    con = lab.console(host, dom)
    con.wait_attached()
    lab.virsh(host, "resume", dom)
    t0 = time.monotonic()
    after = (reader or PayloadReader).fresh(con)
    rec["view_after_s"] = round(time.monotonic() - t0, 1)
    rec.update(view_after=after, outcome="restored-same-view", console=con)
    if view_before is not None:
        rec["view_before"] = view_before
        rec["diff_after"] = guest.diff(view_before, after)
        if rec["diff_after"]:
            rec["outcome"] = "restored-changed-view"
    return rec


def save_restore(lab: Lab, src: str, dst: str, dom: str, *, console: Console | None = None,
                 view_before: dict | None = None, reader: type | None = None) -> dict:
    """``virsh save`` on *src*, the file carried to *dst* by the driver, ``virsh restore``
    there (src == dst: restore in place)."""
    remote = f"/var/lib/libvirt/qemu/save/{dom}.save"
    rec: dict = {"from": src, "to": dst, "domain": dom, "op": "save-restore"}
    t0 = time.monotonic()
    p = lab.virsh(src, "save", dom, remote, check=False, timeout=900)
    rec["save_s"] = round(time.monotonic() - t0, 1)
    if p.returncode != 0:
        rec.update(outcome="failed", phase="save", error=libvirt_error(p.stderr))
        return rec
    if console is not None:
        console.close()
    local = lab.dir / "save" / f"{dom}-{src}.save"
    local.parent.mkdir(exist_ok=True)
    t1 = time.monotonic()
    lab.copy_out(src, remote, local)
    if dst != src:
        lab.sh(src, f"rm -f {remote}", quiet=True)
        lab.copy_in(dst, local, remote)
    rec["carry_s"] = round(time.monotonic() - t1, 1)
    rec["save_file_bytes"] = local.stat().st_size
    lab.virsh(src, "undefine", dom, check=False, quiet=True)
    since = lab.kmsg_mark(dst)
    t2 = time.monotonic()
    p = lab.virsh(dst, "restore", remote, "--paused", check=False, timeout=900)
    rec["restore_s"] = round(time.monotonic() - t2, 1)
    rec["apparmor_compiles_destination"] = len(lab.dmesg_since(dst, since, AA_COMPILE))
    if p.returncode != 0:
        rec.update(outcome="failed", phase="restore", error=libvirt_error(p.stderr),
                   destination_qemu_log_tail=lab.sh(dst, f"tail -n 15 /var/log/libvirt/qemu/{dom}.log",
                                                    check=False, quiet=True).stdout.splitlines())
        return rec
    return _resumed(lab, dst, dom, rec, view_before, reader)


def managedsave_start(lab: Lab, host: str, dom: str, *, console: Console | None = None,
                      view_before: dict | None = None, reader: type | None = None) -> dict:
    rec: dict = {"host": host, "domain": dom, "op": "managedsave-start"}
    t0 = time.monotonic()
    p = lab.virsh(host, "managedsave", dom, check=False, timeout=900)
    rec["managedsave_s"] = round(time.monotonic() - t0, 1)
    if p.returncode != 0:
        rec.update(outcome="failed", phase="managedsave", error=libvirt_error(p.stderr))
        return rec
    if console is not None:
        console.close()
    since = lab.kmsg_mark(host)
    t1 = time.monotonic()
    p = lab.virsh(host, "start", "--paused", dom, check=False, timeout=900)
    rec["start_s"] = round(time.monotonic() - t1, 1)
    rec["apparmor_compiles"] = len(lab.dmesg_since(host, since, AA_COMPILE))
    if p.returncode != 0:
        rec.update(outcome="failed", phase="start", error=libvirt_error(p.stderr))
        return rec
    return _resumed(lab, host, dom, rec, view_before, reader)


def managedsave_move(lab: Lab, src: str, dst: str, dom: str, *, console: Console | None = None,
                     view_before: dict | None = None, reader: type | None = None) -> dict:
    """``virsh managedsave`` on *src*; the definition and the managed save file carried to
    *dst* (where libvirt keeps them: the file under /var/lib/libvirt/qemu/save/, the
    definition through ``virsh define``), ``virsh start`` there, which restores from it."""
    remote = f"/var/lib/libvirt/qemu/save/{dom}.save"
    rec: dict = {"from": src, "to": dst, "domain": dom, "op": "managedsave-move"}
    if re.search(r"Persistent:\s+no", lab.virsh(src, "dominfo", dom, check=False, quiet=True).stdout):
        # a domain restored from a save file is transient, and libvirt keeps a managed save
        # for persistent domains only: define it from what it runs with (as a migration
        # with --persistent does)
        live = lab.dir / "domains" / f"{dom}-live-{src}.xml"
        live.write_text(lab.virsh(src, "dumpxml", "--migratable", "--security-info", dom, quiet=True).stdout)
        lab.virsh(src, "define", str(live))
        rec["made_persistent"] = True
    xml = lab.virsh(src, "dumpxml", "--inactive", "--security-info", dom, quiet=True).stdout
    t0 = time.monotonic()
    p = lab.virsh(src, "managedsave", dom, check=False, timeout=900)
    rec["managedsave_s"] = round(time.monotonic() - t0, 1)
    if p.returncode != 0:
        rec.update(outcome="failed", phase="managedsave", error=libvirt_error(p.stderr))
        return rec
    if console is not None:
        console.close()
    local = lab.dir / "save" / f"{dom}-{src}.managedsave"
    local.parent.mkdir(exist_ok=True)
    path = lab.dir / "domains" / f"{dom}-from-{src}.xml"
    path.write_text(xml)
    t1 = time.monotonic()
    lab.copy_out(src, remote, local)
    lab.virsh(src, "undefine", "--managed-save", dom, check=False, quiet=True)
    lab.virsh(dst, "define", str(path))
    lab.copy_in(dst, local, remote)
    rec["carry_s"] = round(time.monotonic() - t1, 1)
    rec["save_file_bytes"] = local.stat().st_size
    # libvirt's own flag (dominfo "Managed save:"), set by its managedsave or at daemon
    # start, not by a file placed while it runs; the start restores from the file anyway
    info = lab.virsh(dst, "dominfo", dom, check=False, quiet=True).stdout
    rec["destination_says_managed_save"] = bool(re.search(r"Managed save:\s+yes", info))
    since = lab.kmsg_mark(dst)
    t2 = time.monotonic()
    p = lab.virsh(dst, "start", "--paused", dom, check=False, timeout=900)
    rec["start_s"] = round(time.monotonic() - t2, 1)
    rec["apparmor_compiles_destination"] = len(lab.dmesg_since(dst, since, AA_COMPILE))
    if p.returncode != 0:
        rec.update(outcome="failed", phase="start", error=libvirt_error(p.stderr),
                   destination_qemu_log_tail=lab.sh(dst, f"tail -n 15 /var/log/libvirt/qemu/{dom}.log",
                                                    check=False, quiet=True).stdout.splitlines())
        return rec
    # a start from a managed save leaves no file behind; a fresh boot would leave it there
    rec["managed_save_consumed"] = lab.sh(dst, f"test -e {remote}", check=False, quiet=True).returncode != 0
    return _resumed(lab, dst, dom, rec, view_before, reader)


def run_migration(lab: Lab, src: str, dst: str, xml: str, *, p2p: bool = False, keep: bool = False,
                  before: list[Step] = (), after: list[Step] = (), reboot_check: bool = True,
                  baseline: str | Path | None = None) -> dict:
    """The CLI's ``migrate``: define + start on *src*, read the view, migrate, read the view
    on *dst*, reboot the guest there and read it again; one record. *before*/*after* are
    steps run with the lab before the start and after the record (e.g. installing a package:
    ``lambda lab: lab.sh("sid", "apt-get install -y ./abiguard.deb")``)."""
    for step in before:
        step(lab)
    dom = guest.name_of(xml)
    cleanup_domain(lab, dom, [src, dst])
    t0 = time.monotonic()
    started = start_domain(lab, src, xml, baseline=baseline)
    rec: dict = {"start": {k: v for k, v in started.items() if k not in ("console", "view")}}
    if "error" in started:
        rec.update(outcome="failed", phase="start", error=started["error"], **{"from": src, "to": dst})
    else:
        mig = migrate_running(lab, src, dst, dom, console=started["console"], view_before=started["view"],
                              p2p=p2p, reboot_check=reboot_check)
        rec.update(mig)
    rec["hooks"] = {h: lab.sh(h, "ls /etc/libvirt/hooks/qemu /etc/libvirt/hooks/qemu.d/ 2>/dev/null",
                              check=False, quiet=True).stdout.split() for h in (src, dst)}
    rec["total_s"] = round(time.monotonic() - t0, 1)
    for k in ("console",):
        c = rec.pop(k, None)
        if c is not None:
            c.close()
    if not keep:
        cleanup_domain(lab, dom, [src, dst])
    for step in after:
        step(lab)
    return rec


def jsonable(rec: dict) -> dict:
    """the record without live objects (consoles), for json.dumps"""
    return {k: (jsonable(v) if isinstance(v, dict) else v) for k, v in rec.items()
            if not isinstance(v, Console) and not isinstance(v, Path)}
