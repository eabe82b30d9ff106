"""Fleet baselines: the richest guest ABI every listed host (including the hosts a VM may
be rolled back to) can provide, and for each host whether it boots VMs of that contract
and accepts them arriving. The arch plugin folds the values
(:meth:`abiguard.arch.base.Arch.baseline`); this module does what every arch shares, and
reads the files a contract comes in (a contract, a baseline, a host profile) as a contract.

A baseline never lies: its contract holds only when every host it was computed from,
rollback hosts included, boots it and accepts it (:func:`outcome`; hosts named
``accept_only`` need only accept it). Otherwise the document says per host what stands in
the way and the fewest hosts to leave out (:func:`fewest_to_leave_out`), and the commands
exit 1 without writing it. :func:`holds` is the one question every caller asks."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InputError, UsageError
from . import verdict

if TYPE_CHECKING:
    from ..model.contract import Contract
    from ..model.profile import Profile

FORMAT = "abiguard-baseline"


def unique(profiles: list[Profile]) -> list[Profile]:
    """One profile per digest: a fleet of thousands has a handful of distinct hosts."""
    seen: dict[str, Profile] = {}
    for p in profiles:
        seen.setdefault(p.digest, p)
    return list(seen.values())


def common_machine(profiles: list[Profile], family: str) -> str | None:
    """The newest machine type of a family every host's QEMU has."""
    from ..model.stack import newest_machine

    sets = [p.qemu.machine_names() if p.qemu is not None else set() for p in profiles]
    if not sets or not all(sets):
        return None
    return newest_machine(set.intersection(*sets), family)


def compute(profiles: list[Profile], rollback: list[Profile] | None = None,
            config: str | None = None, hypervisors: list[Any] | None = None,
            accept_only: frozenset[str] = frozenset(), leave_out: bool = True,
            qemu: tuple[int, ...] | None = None, cpu: str | None = None) -> dict[str, Any]:
    """The baseline document: its contract, the conflicts, a report per host, and the
    ``outcome``: whether every host it was computed from boots it and accepts it
    (:func:`outcome`), and where not, the fewest hosts to leave out (:func:`fewest_to_leave_out`).

    :param hypervisors: the fleet's libvirts (``--libvirt URI``): the arch asks them to
        compute (x86: baselineHypervisorCPU) and to confirm (compareHypervisorCPU)
    :param accept_only: digests of hosts the operator asked only to accept the contract
        (``--accept-only``): they need not boot it
    :param qemu: the destination QEMU version where a profile names none (``--qemu``);
        otherwise such arrivals are judged on the strict model, which fails wherever any
        released QEMU could
    :param cpu: arm64, several CPU models: the CPU the guest is shown (``--cpu``)
    """
    doc = document(profiles, rollback, config, hypervisors, qemu, accept_only, cpu)
    if qemu is not None:
        doc["qemu_where_unnamed"] = ".".join(map(str, qemu))
    everyone = unique(profiles + (rollback or []))
    unknown = accept_only - {p.digest for p in everyone}
    if unknown:
        raise UsageError(f"--accept-only names {len(unknown)} profile(s) the baseline is not computed from")
    doc["outcome"] = outcome(doc, accept_only)
    if not doc["outcome"]["holds"] and leave_out:
        doc["outcome"]["leave_out"] = fewest_to_leave_out(profiles, rollback or [], config, accept_only, qemu)
    return doc


def document(profiles: list[Profile], rollback: list[Profile] | None = None,
             config: str | None = None, hypervisors: list[Any] | None = None,
             qemu: tuple[int, ...] | None = None, accept_only: frozenset[str] = frozenset(),
             cpu: str | None = None) -> dict[str, Any]:
    """The contract the arch folds from the hosts, and what each host says of it.

    :param qemu: judge arrivals on this destination QEMU version where a profile names none
    :param accept_only: hosts no VM of the contract is started on: their boot streams are
        not among those every host must accept
    :param cpu: the CPU the guest is shown (``--cpu``): the contract re-sealed showing it
        before any host is asked"""
    everyone = unique(profiles + (rollback or []))
    arch, sealed, conflicts = fold(everyone, config, hypervisors)
    if cpu is not None:
        sealed = arch.show_cpu(sealed, cpu, everyone)
    booting = {p.digest: verdict.realise(sealed, p) for p in everyone}
    streams = born_streams(arch, sealed, [p for p in everyone
                                          if booting[p.digest].allow and p.digest not in accept_only], everyone)
    hosts = {p.label: host_report(sealed, p, booting[p.digest], streams, qemu) for p in everyone}
    doc = {"format": FORMAT, "contract": sealed.to_json(), "conflicts": conflicts, "hosts": hosts,
           "rollback_hosts": sorted({p.label for p in rollback or []})}
    # what a guest kernel without errata discovery misses under a contract of several CPUs
    older = arch.cpu_notes(sealed).get("older_guests")
    if older:
        doc["older_guests"] = older
    if hypervisors:
        verified = arch.verify_on(sealed, hypervisors)
        doc["libvirt"] = verified
        conflicts += [f"{label}: libvirt says the CPU is {v['compare']}: {v.get('reason', '')}".rstrip(": ")
                      for label, v in sorted(verified.items()) if not libvirt_runs(v)]
    return doc


def fold(everyone: list[Profile], config: str | None = None, hypervisors: list[Any] | None = None
         ) -> tuple[Any, Contract, list[str]]:
    """The arch, the sealed contract its plugin folds from these distinct hosts, and the
    conflicts it met."""
    from ..arch import get
    from ..model.contract import Origin, OriginHost, seal

    if not everyone:
        raise UsageError("baseline needs at least one profile")
    arches = {p.machine for p in everyone}
    if len(arches) != 1:
        raise UsageError(f"profiles of several architectures ({', '.join(sorted(arches))}): "
                         "one baseline per architecture")
    name = arches.pop()
    arch = get(name)
    body, conflicts = arch.baseline(everyone, config, hypervisors)
    origin = Origin("baseline", tuple(OriginHost(p.kernel_release, p.digest)
                                      for p in sorted(everyone, key=lambda p: p.digest)))
    return arch, seal(name, common_machine(everyone, arch.machine_family), origin, body), conflicts


def libvirt_runs(answer: dict[str, Any]) -> bool:
    """Whether compareHypervisorCPU's answer lets that libvirt start the contract's CPU."""
    return answer["compare"] in ("identical", "superset")


def born_streams(arch: Any, sealed: Contract, born_on: list[Profile],
                 everyone: list[Profile] | None = None) -> dict[tuple[int, ...] | None, str]:
    """The register streams a VM of this contract may carry when it arrives somewhere,
    each with the first host it comes from: the contract's own; (arm64) the boot stream of
    each host it is started on (:meth:`~abiguard.arch.base.Arch.boot_stream`); and the
    stream each host of the fleet gives a VM that arrived there and moves on
    (:meth:`~abiguard.arch.base.Arch.stamp_stream`). Every destination is judged on each."""
    out: dict[tuple[int, ...] | None, str] = {None: "the contract"}
    if not arch.carries_register_stream:
        return out
    own = tuple(getattr(sealed.body, "stream", ()))
    for how, hosts, stream_of in (("started on", born_on, arch.boot_stream),
                                  ("moved on from", everyone or [], arch.stamp_stream)):
        for p in hosts:
            got = stream_of(sealed, p)
            if got is not None and tuple(got) != own:
                out.setdefault(tuple(got), f"a VM {how} {p.kernel_release} ({p.digest[7:19]})")
    return out


def arrivals(sealed: Contract, profile: Profile, streams: dict[tuple[int, ...] | None, str],
             qemu: tuple[int, ...] | None = None) -> list[Any]:
    """The problems of a VM of this contract arriving on this host, born on any host that
    boots it (each distinct stream once), as the hook's ``migrate begin`` judges them
    (:mod:`abiguard.hook.incoming`): a register the host adds that its pins keep off there
    is no refusal; pins it cannot plan are."""
    from ..arch import get
    from ..errors import EnforceError
    from ..model.problem import Policy, Problem

    arch = get(sealed.arch)
    problems: list[Any] = []
    seen: set[str] = set()
    for stream, born in streams.items():
        v = verdict.check(sealed, profile, Policy(qemu=qemu), stream)
        found = [p for p in v.problems if not (p.kind == "widen" and p.pin is not None and arch.uses_preload)]
        if not found and arch.uses_preload:
            try:
                arch.plan_pins(sealed, profile, v)
            except EnforceError as e:
                found = [Problem("pins", None, None, "its contract's pins", "cannot take them", e.problems[0],
                                 "pin fewer registers")]
        for p in found:
            if p.line() not in seen:
                seen.add(p.line())
                if stream is not None:
                    p.why += f" ({born})"
                problems.append(p)
    return problems


def host_report(sealed: Contract, profile: Profile, booting: Any = None,
                streams: dict[tuple[int, ...] | None, str] | None = None,
                qemu: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Whether the host boots a VM with this contract (:func:`.verdict.realise`: a plain
    start, what the hook's ``prepare`` judges) and accepts one arriving from wherever it
    was started (:func:`arrivals`: the hook's incoming verdict), each with its reasons, one
    line per reason (:func:`.report.group`); and what the arch adds (arm64: the pins)."""
    from ..arch import get
    from . import report

    incoming = arrivals(sealed, profile, streams or {None: "the contract"}, qemu)
    booting = booting if booting is not None else verdict.realise(sealed, profile)
    out: dict[str, Any] = {"profile": profile.digest, "accepts_incoming": not incoming,
                           "incoming_problems": [p.line() for p in incoming]}
    out.update(get(sealed.arch).host_report(sealed, profile))
    out["boots_with_contract"] = booting.allow
    out["cannot_pin"] = [p.line() for p in booting.problems]
    out["why_not_accepted"] = [g.line() for g in report.group(incoming)]
    out["why_not_booted"] = [g.line() for g in report.group(booting.problems)]
    return out


def outcome(doc: dict[str, Any], accept_only: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The invariant: the contract holds when every host it was computed from (rollback
    hosts included) accepts it, every host not named ``accept_only`` boots it, and every
    libvirt asked starts its CPU. What stands in the way, per host."""
    blocked: dict[str, dict[str, Any]] = {}
    only = []
    for label, rep in sorted(doc["hosts"].items()):
        must_boot = rep["profile"] not in accept_only
        if not must_boot:
            only.append(label)
        rep["must_boot"] = must_boot
        arriving = rep["why_not_accepted"]
        booting = rep["why_not_booted"] if must_boot else []
        # a reason that stops both the arrival and the start is said once
        why = [("refuses it arriving and cannot boot it" if line in arriving and line in booting else
                "refuses it arriving" if line in arriving else "cannot boot it") + f": {line}"
               for line in dict.fromkeys(arriving + booting)]
        if why:
            blocked[label] = {"boots": rep["boots_with_contract"], "accepts": rep["accepts_incoming"], "why": why}
    libvirt = [f"libvirt {v['libvirt']} at {uri} says the contract's CPU is {v['compare']}"
               + (f": {v['reason']}" if v.get("reason") else "")
               for uri, v in sorted(doc.get("libvirt", {}).items()) if not libvirt_runs(v)]
    holds = not blocked and not libvirt
    return {"holds": holds, "verdict": "written" if holds else "refused", "accept_only": only,
            "blocked": blocked, "libvirt": libvirt, "leave_out": []}


def judged(profiles: list[Profile], rollback: list[Profile] | None = None, config: str | None = None,
           accept_only: frozenset[str] = frozenset(), qemu: tuple[int, ...] | None = None
           ) -> dict[str, Any] | None:
    """The baseline document over these hosts with its ``outcome`` (no leave-out search),
    judged from the profiles (no libvirt); None where no contract can even be folded (no
    vCPU configuration every host offers, or the like)."""
    try:
        doc = document(profiles, rollback, config, qemu=qemu, accept_only=accept_only)
    except UsageError:
        return None
    doc["outcome"] = outcome(doc, accept_only)
    return doc


#: :func:`holds`' answers by the digests asked about: profiles are content-addressed, so an
#: answer stays true; bounded, since a long-lived caller (a fleet service) asks many
_HOLDS: dict[tuple[Any, ...], dict[str, Any] | None] = {}


def holds(profiles: list[Profile], rollback: list[Profile] | None = None, config: str | None = None,
          accept_only: frozenset[str] = frozenset(), qemu: tuple[int, ...] | None = None) -> dict[str, Any] | None:
    """Whether the contract folded over these hosts holds (every host boots and accepts it;
    ``accept_only`` ones need only accept it): its summary (``contract``, ``machine_type``,
    ``config``), else None. The one question ``baseline``'s leave-out search, ``fleet
    whatif`` and the matrix's "pin first" ask; :func:`outcome` gives the same answer with
    the reasons. Judged from the profiles (no libvirt); stops at the first host in the way."""
    everyone = unique(profiles + (rollback or []))
    key = (tuple(sorted(p.digest for p in everyone)), config, accept_only, qemu)
    if key in _HOLDS:
        return _HOLDS[key]
    answer = _holds(everyone, config, accept_only, qemu)
    if len(_HOLDS) >= 4096:
        _HOLDS.clear()
    _HOLDS[key] = answer
    return answer


def _holds(everyone: list[Profile], config: str | None, accept_only: frozenset[str],
           qemu: tuple[int, ...] | None) -> dict[str, Any] | None:
    try:
        arch, sealed, _conflicts = fold(everyone, config)
    except UsageError:
        return None          # no vCPU configuration every host offers, or the like
    born = []
    for p in everyone:
        if p.digest in accept_only:
            continue              # no VM of it starts there: it need only accept them
        if not verdict.realise(sealed, p).allow:
            return None
        born.append(p)
    streams = born_streams(arch, sealed, born, everyone)
    if any(arrivals(sealed, p, streams, qemu) for p in everyone):
        return None
    body = sealed.to_json()[sealed.arch]
    return {"contract": sealed.digest, "machine_type": sealed.machine_type,
            "config": body.get("config", body.get("cpu_model"))}


def first_reason(doc: dict[str, Any] | None) -> str:
    """The first thing that stands in the way of a :func:`judged` document."""
    if doc is None:
        return "no contract can be folded over these hosts (no vCPU configuration every one offers)"
    o = doc["outcome"]
    for label, b in o["blocked"].items():
        return f"{label}: {b['why'][0]}"
    return o["libvirt"][0] if o["libvirt"] else ""


#: how many ways of leaving hosts out a refusal lists at most
MAX_SUGGESTIONS = 4


def fewest_to_leave_out(profiles: list[Profile], rollback: list[Profile], config: str | None,
                        accept_only: frozenset[str] = frozenset(), qemu: tuple[int, ...] | None = None
                        ) -> list[dict[str, Any]]:
    """The fewest distinct hosts to leave out for the rest to have a contract that holds,
    smallest removal first (distinct profiles are few, so every subset may be tried), each
    with that contract's summary. Judged from the profiles: a libvirt is asked again when
    ``baseline`` runs over the rest."""
    from itertools import combinations

    now, back = unique(profiles), unique(rollback)
    everyone = unique(now + back)
    for k in range(1, len(everyone)):
        found = []
        for out in combinations(everyone, k):
            drop = {p.digest for p in out}
            keep_now = [p for p in now if p.digest not in drop]
            if not keep_now:
                continue
            keep_back = [p for p in back if p.digest not in drop]
            summary = holds(keep_now, keep_back, config, accept_only - drop, qemu)
            if summary is None:
                continue
            found.append({"leave_out": [p.label for p in out], **summary,
                          "hosts": sorted(p.label for p in unique(keep_now + keep_back))})
            if len(found) == MAX_SUGGESTIONS:
                return found
        if found:
            return found
    return []


def refusal_lines(doc: dict[str, Any]) -> list[str]:
    """A refused baseline as ``baseline`` and ``fleet baseline`` print it: per host what
    stands in the way, then what to leave out (or the explicit option)."""
    o = doc["outcome"]
    out = [f"abiguard: no contract written: not every host it was computed from boots and accepts it "
           f"({len(o['blocked'])} of {len(doc['hosts'])} distinct host(s) stand in the way)"]
    for label, b in o["blocked"].items():
        state = ", ".join(["accepts it" if b["accepts"] else "REFUSES it arriving",
                           "boots it" if b["boots"] else "CANNOT BOOT it"])
        out.append(f"  {label}: {state}")
        out += [f"      - {line}" for line in b["why"]]
    out += [f"  {line}" for line in o["libvirt"]]
    for s in o["leave_out"]:
        out.append(f"  leave out {', '.join(s['leave_out'])}: the rest have contract {s['contract'][:19]} "
                   f"(machine {s['machine_type']}, {s['config']}), which {', '.join(s['hosts'])} "
                   "boot and accept")
    if not o["leave_out"]:
        out.append("  no subset of these hosts but single ones has a contract every host boots and accepts")
    only = [label for label, b in o["blocked"].items() if b["accepts"] and not b["boots"]]
    if only and not o["libvirt"] and len(only) == len(o["blocked"]):
        out.append(f"  or, knowingly, a contract {', '.join(only)} only accept(s): --accept-only for each "
                   "(they cannot start VMs of it)")
    return out


def load_contract_or_profile(path: str, config: str | None = None, written_only: bool = False) -> Contract:
    """A contract file, a baseline file (its contract) or a host profile (the contract a
    VM booted there with defaults has).

    :param written_only: refuse a baseline whose outcome says it was refused (what
        ``baseline --json`` prints for a fleet with no contract): ``pin`` never pins to one"""
    from ..model import contract, profile

    try:
        with open(path, "rb") as f:
            text = f.read(profile.MAX_BYTES + 1)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror}") from e
    doc = profile.parse_json(text, path, InputError)
    kind = doc.get("format") if isinstance(doc, dict) else None
    if kind == contract.FORMAT:
        return contract.Contract.from_json(doc, path)
    if kind == FORMAT:
        outcome = doc.get("outcome")
        if written_only and outcome is not None:
            if not isinstance(outcome, dict) or not isinstance(outcome.get("holds"), bool):
                raise InputError(path, "member 'outcome.holds' must be true or false")
            if not outcome["holds"]:
                from ..errors import Refusal

                raise Refusal(f"abiguard: {path!r} is a refused baseline: not every host it was computed from "
                              "boots and accepts its contract (abiguard baseline says which, and what to leave "
                              "out): pin to a baseline that was written")
        return contract.Contract.from_json(doc.get("contract"), path)
    if kind == profile.FORMAT:
        return contract.from_profile(profile.Profile.from_json(doc, path), config)
    raise InputError(path, "not an abiguard host profile, contract or baseline (member 'format')")
