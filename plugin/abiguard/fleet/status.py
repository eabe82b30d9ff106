"""``fleet status``: every VM x every host, may it move there now, and if not the first
reason.

The answer is factored the way it is computed. Hosts with the same profile give every VM
the same answer, and VMs with the same contract and register stream get the same answer
from every host, so the document holds one verdict per (VM class, profile) and maps each
host to its profile and each VM to its class. "May VM v move to host h" is
``verdicts[v.verdicts][hosts[h].profile]`` for every h other than v's own host: 10,000
VMs x 1,000 hosts is 10 million questions, and this is how they fit in a few hundred
kilobytes.

JSON layout::

    schema    "abiguard-fleet-status/1" (added by ``--json``: abiguard(8), JSON OUTPUT)
    hosts     name -> {profile, uri, seen[, error: why its VMs could not be read]}
    profiles  digest -> {kernel, stack: kernel, QEMU, libvirt, hosts: how many hosts have it}
    verdicts  class -> profile digest -> {allow, reason, problems}
    vms       [{name, host, state, contract, verdicts: its class (null: unpinned or
              refused everywhere), problem, may_move_to, refused_by: host counts}]
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model.profile import Profile
    from .judge import Judge, Judgement
    from .record import HostRecord
    from .vms import FleetVm

def compute(records: list[HostRecord], profiles: dict[str, Profile], vms: list[FleetVm],
            host_errors: dict[str, str], judge: Judge) -> dict[str, Any]:
    from .names import stack

    groups: dict[str, list[str]] = {}
    for rec in records:
        groups.setdefault(rec.profile, []).append(rec.name)
    host_profile = {rec.name: rec.profile for rec in records}
    classes: dict[str, dict[str, Judgement]] = {}
    reach: dict[str, int] = {}                  # class -> how many hosts allow it
    rows = []
    for vm in vms:
        row: dict[str, Any] = {"name": vm.name, "host": vm.host, "state": vm.state,
                               "contract": vm.contract.digest if vm.contract is not None else None,
                               "verdicts": None, "problem": vm.problem, "seen": vm.seen, "may_move_to": 0,
                               "refused_by": len(records) - (vm.host in host_profile)}
        rows.append(row)
        if vm.contract is None:
            if vm.problem is None:
                row["refused_by"] = 0           # unpinned: the hook's [policy] unpinned decides
            continue
        key = judge.stream_key(vm.stream)
        cid = vm.contract.digest + (f"+stream{key}" if key else "")
        answers = classes.get(cid)
        if answers is None:
            answers = classes[cid] = {d: judge.judge(vm.contract, p, vm.stream, key) for d, p in profiles.items()}
            reach[cid] = sum(len(groups.get(d, ())) for d, j in answers.items() if j.allow)
        row["verdicts"] = cid
        own = host_profile.get(vm.host)
        allowed = reach[cid]
        if own is not None and answers[own].allow:
            allowed -= 1                        # its own host is not a destination
        row["may_move_to"] = allowed
        row["refused_by"] = len(records) - (vm.host in host_profile) - allowed
    hosts = {}
    for rec in records:
        hosts[rec.name] = {"profile": rec.profile, "uri": rec.uri, "seen": rec.seen}
        if rec.name in host_errors:
            hosts[rec.name]["error"] = host_errors[rec.name]
    return {"hosts": hosts,
            "profiles": {d: {"kernel": p.kernel_release, "stack": stack(p), "hosts": len(groups.get(d, ()))}
                         for d, p in profiles.items()},
            "verdicts": {cid: {d: j.to_json() for d, j in answers.items()} for cid, answers in classes.items()},
            "vms": rows}


def lines(doc: dict[str, Any], names_shown: int = 3) -> list[str]:
    """The status as text. VMs that share a contract and stream share their answers, so
    the hosts that refuse them (a line per profile: the first few host names and the first
    reason) are said once per class, then one line per VM with how many hosts it may
    move to."""
    from ..engine.report import VERDICT

    hosts_of: dict[str, list[str]] = {}
    for name, h in doc["hosts"].items():
        hosts_of.setdefault(h["profile"], []).append(name)
    out = []
    for name, h in doc["hosts"].items():
        if "error" in h:
            out.append(f"host {name}: VMs not read: {h['error']}")
    by_class: dict[str, list[dict[str, Any]]] = {}
    for vm in doc["vms"]:
        head = f"{vm['name']} on {vm['host']} ({vm['state']})"
        if vm["problem"] is not None:
            out.append(f"{head}: the hook would refuse it on every host: {vm['problem']}")
        elif vm["contract"] is None and vm.get("seen"):
            out.append(f"{head}: no contract, {vm['seen']} (each host's [policy] unpinned decides)")
        elif vm["contract"] is None:
            out.append(f"{head}: no contract, not judged (each host's [policy] unpinned decides)")
        else:
            by_class.setdefault(vm["verdicts"], []).append(vm)
    for cid, vms in by_class.items():
        stream = cid.partition("+")[2]
        out.append(f"contract {cid[:19]}{' (' + stream + ' from its hop stamp)' if stream else ''}: "
                   f"{len(vms)} VM(s)")
        for digest, j in doc["verdicts"][cid].items():
            group = hosts_of.get(digest, [])
            if j["allow"] or not group:
                continue
            names = ", ".join(group[:names_shown]) + (f" and {len(group) - names_shown} more"
                                                      if len(group) > names_shown else "")
            out.append(f"  {VERDICT[False]} on {names} ({doc['profiles'][digest]['stack']}, {digest[:19]}): "
                       f"{j['reason']}")
        for vm in vms:
            others = vm["may_move_to"] + vm["refused_by"]
            out.append(f"  {vm['name']} on {vm['host']} ({vm['state']}): may move to {vm['may_move_to']} of {others} "
                       "other host(s)")
    return out
