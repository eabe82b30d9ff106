"""``fleet whatif --host H --as PROFILE``: if host H ran the kernel and QEMU of PROFILE
(an upgrade, or the rollback to the profile it ran before), what would change:

- VMs elsewhere that may come to H now and could not then;
- VMs on H that could not run there then (a restart or a move back would be refused);
- VMs on H that may leave now and could go nowhere then: on arm64 a VM carries the
  register stream of the host it runs on, so the stream H's new kernel gives it is what
  every next destination judges (:meth:`abiguard.arch.base.Arch.stamp_stream`); and VMs
  that keep somewhere to go but lose destinations;
- the fleet's contracts H realises now and would not then (and those it would start to).

Every answer comes from :class:`abiguard.fleet.judge.Judge`: each (contract, stream,
profile) once, with destinations grouped by profile.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..model.profile import Profile
    from .contracts import FleetContract
    from .judge import Judge
    from .record import HostRecord
    from .vms import FleetVm

def whatif(host: HostRecord, new: Profile, records: list[HostRecord], profiles: dict[str, Profile],
           vms: list[FleetVm], contracts: dict[str, FleetContract], judge: Judge) -> dict[str, Any]:
    from ..arch import get

    current = profiles[host.profile]
    groups: dict[str, list[str]] = {}
    for rec in records:
        if rec.name != host.name:
            groups.setdefault(rec.profile, []).append(rec.name)
    come, stay, leave, lose = [], [], [], []
    for vm in vms:
        if vm.contract is None or vm.problem is not None:
            continue
        if vm.host != host.name:
            now = judge.judge(vm.contract, current, vm.stream)
            then = judge.judge(vm.contract, new, vm.stream)
            if now.allow and not then.allow:
                come.append({"vm": vm.name, "host": vm.host, "contract": vm.contract.digest, "reason": then.reason})
            continue
        here = judge.judge(vm.contract, new)
        if not here.allow:
            stay.append({"vm": vm.name, "contract": vm.contract.digest, "reason": here.reason})
        stream_then = (get(vm.contract.arch).stamp_stream(vm.contract, new)
                       if get(vm.contract.arch).carries_register_stream else None)
        reach_now = reach_then = 0
        first_lost: dict[str, Any] | None = None
        for digest, names in groups.items():
            dest = profiles[digest]
            ok_now = judge.judge(vm.contract, dest, vm.stream).allow
            then_j = judge.judge(vm.contract, dest, stream_then)
            reach_now += len(names) * ok_now
            reach_then += len(names) * then_j.allow
            if ok_now and not then_j.allow and first_lost is None:
                first_lost = {"host": names[0], "reason": then_j.reason}
        if reach_now and not reach_then:
            leave.append({"vm": vm.name, "contract": vm.contract.digest, "destinations_now": reach_now,
                          **(first_lost or {})})
        elif reach_then < reach_now:
            lose.append({"vm": vm.name, "contract": vm.contract.digest, "destinations_now": reach_now,
                         "destinations_then": reach_then, **(first_lost or {})})
    stops, starts = [], []
    for digest, fc in sorted(contracts.items()):
        now_j, then_j = judge.judge(fc.contract, current), judge.judge(fc.contract, new)
        if now_j.allow and not then_j.allow:
            stops.append({"contract": digest, "sources": fc.sources, "reason": then_j.reason})
        elif then_j.allow and not now_j.allow:
            starts.append({"contract": digest, "sources": fc.sources})
    from .names import stack

    return {"fleet_contract": fleet_contract(host, new, records, profiles), "host": host.name,
            "now": {"profile": current.digest, "kernel": current.kernel_release, "stack": stack(current)},
            "as": {"profile": new.digest, "kernel": new.kernel_release, "stack": stack(new)},
            "could_no_longer_come": come, "could_not_stay": stay, "could_no_longer_leave": leave,
            "loses_destinations": lose, "stops_realising": stops, "starts_realising": starts}


def fleet_contract(host: HostRecord, new: Profile, records: list[HostRecord],
                   profiles: dict[str, Profile]) -> dict[str, Any]:
    """Whether the fleet has a contract every host boots and accepts now, and would have
    one then, with H's current profile as the rollback it must stay able to make: the
    question ``fleet baseline`` asks (:func:`abiguard.engine.baseline.judged`)."""
    from ..engine import baseline
    from .baseline import label

    def answer(now: list[Profile], back: list[Profile]) -> dict[str, Any]:
        doc = baseline.judged([p.with_label(label(p)) for p in now], [p.with_label(label(p)) for p in back])
        ok = doc is not None and doc["outcome"]["holds"]
        return {"holds": ok, "contract": doc["contract"]["digest"] if ok and doc else None,
                "reason": None if ok else baseline.first_reason(doc)}

    current = profiles[host.profile]
    others = {profiles[r.profile].digest: profiles[r.profile] for r in records if r.name != host.name}
    return {"now": answer(list({**others, current.digest: current}.values()), []),
            "then": answer(list({**others, new.digest: new}.values()),
                           [current] if current.digest != new.digest else [])}


def harmful(doc: dict[str, Any]) -> bool:
    """Whether the change would keep any VM from where it may go now, or leave the fleet
    without a contract every host boots and accepts where it has one now."""
    lost = doc["fleet_contract"]["now"]["holds"] and not doc["fleet_contract"]["then"]["holds"]
    return lost or any(doc[k] for k in ("could_no_longer_come", "could_not_stay", "could_no_longer_leave",
                                        "stops_realising"))


def lines(doc: dict[str, Any]) -> list[str]:
    out = [f"if {doc['host']} ran {doc['as']['stack']} ({doc['as']['profile'][:19]}) instead of "
           f"{doc['now']['stack']} ({doc['now']['profile'][:19]}):"]
    Section = tuple[str, str, "Callable[[dict[str, Any]], str]"]
    sections: tuple[Section, ...] = (("could_no_longer_come", "VMs that could no longer come to it",
                 lambda e: f"{e['vm']} (on {e['host']}): {e['reason']}"),
                ("could_not_stay", "VMs on it that could not run there",
                 lambda e: f"{e['vm']}: {e['reason']}"),
                ("could_no_longer_leave", "VMs on it that could no longer leave",
                 lambda e: f"{e['vm']} (may go to {e['destinations_now']} host(s) now"
                           + (f"; to {e['host']}: {e['reason']}" if "host" in e else "") + ")"),
                ("loses_destinations", "VMs on it that would lose destinations",
                 lambda e: f"{e['vm']}: {e['destinations_now']} -> {e['destinations_then']} host(s)"
                           + (f"; to {e['host']}: {e['reason']}" if "host" in e else "")),
                ("stops_realising", "contracts it would stop realising",
                 lambda e: f"{e['contract'][:19]} ({', '.join(e['sources'][:3])}): {e['reason']}"),
                ("starts_realising", "contracts it would start realising",
                 lambda e: f"{e['contract'][:19]} ({', '.join(e['sources'][:3])})"))
    fc = doc["fleet_contract"]
    for when in ("now", "then"):
        a = fc[when]
        out.append(f"  the fleet's contract {when}: " + (f"{a['contract'][:19]}, every host boots and accepts it"
                                                        if a["holds"] else f"none ({a['reason']})"))
    for key, title, fmt in sections:
        entries = doc[key]
        out.append(f"  {title}: {len(entries) or 'none'}")
        out += [f"    {fmt(e)}" for e in entries]
    return out
