"""Fleet baselines: the richest guest ABI every listed host (including the hosts a VM may
be rolled back to) can provide, and for each host what its stack cannot pin.

arm64, per register of the common stream: PSCI -> the highest version every host accepts;
SMCCC workarounds -> the highest level every host accepts; hypercall bitmaps -> the AND of
the defaults; ID registers -> per field the kernel's safe value over all hosts
(``arm64_idregs.safe_value``), bits outside known fields must agree; CCSIDR -> must agree.
Registers listed by some hosts only are left out of the stream, and the hosts that list
them are told so: released QEMU carries every register its kernel lists.
x86: the CPU features every host's QEMU can provide with KVM, the newest machine type all
QEMUs have, the PV feature bits every KVM offers.
"""
from __future__ import annotations

from functools import reduce
from typing import Any

from . import contract as contract_mod
from . import verdict
from .arch import arm64, arm64_idregs
from .errors import UsageError


def _host_label(profile: dict[str, Any]) -> str:
    return profile.get("_label") or profile["host"]["kernel_release"]


def _unique(profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One profile per digest: a fleet of thousands has a handful of distinct hosts."""
    seen: dict[str, dict[str, Any]] = {}
    for p in profiles:
        seen.setdefault(p["digest"], p)
    return list(seen.values())


def _fold_idreg(name: str, values: list[int]) -> tuple[int, list[str]]:
    fields = arm64_idregs.FIELDS_BY_REG.get(name, ())
    first = values[0]
    out = 0
    covered = 0
    conflicts = []
    for f in fields:
        fmask = ((1 << f.width) - 1) << f.shift
        covered |= fmask
        raw = [(v >> f.shift) & ((1 << f.width) - 1) for v in values]
        out |= reduce(lambda a, b: arm64_idregs.safe_value(f, a, b), raw) << f.shift
    rest = {v & ~covered for v in values}
    if len(rest) > 1:
        conflicts.append(f"{name}: bits outside known fields differ between hosts")
    return out | (first & ~covered), conflicts


def _best_common(acceptance: list[dict[str, str]], order: list[str]) -> str | None:
    ok = [v for v in order if all(a.get(v) == "accepted" for a in acceptance)]
    return ok[-1] if ok else None


def arm64_baseline(profiles: list[dict[str, Any]], config: str | None = None) -> dict[str, Any]:
    sections = [p["kvm"]["aarch64"] for p in profiles]
    common = set.intersection(*(set(s.get("configs", {})) for s in sections))
    if config is None:
        if not common:
            raise UsageError("no vCPU configuration was probed on every host")
        config = max(common, key=lambda c: (len(arm64.config_features(c)), c))
    elif config not in common:
        raise UsageError(f"vCPU configuration {config!r} is not available on every host "
                         f"(common: {', '.join(sorted(common)) or 'none'})")
    regsets = [s["configs"][config]["registers"] for s in sections]
    stream = sorted(set.intersection(*(set(r) for r in regsets)), key=lambda r: int(r, 16))
    values: dict[str, str] = {}
    conflicts: list[str] = []
    for reg_id in stream:
        rid = int(reg_id, 16)
        rule = arm64.value_rule(rid)
        if rule == "state":
            continue
        raw = [r[reg_id] for r in regsets]
        if any(v is None for v in raw):
            continue
        ints = [int(v, 16) for v in raw]
        name = arm64.reg_name(rid)
        if rule == "psci":
            best = _best_common([s["firmware_acceptance"][name] for s in sections],
                                list(arm64.PSCI_VERSIONS))
            if best is None:
                conflicts.append(f"{name}: no PSCI version every host accepts")
                continue
            values[reg_id] = f"{arm64.PSCI_VERSIONS[best][0]:#x}"
        elif rule == "workaround":
            best = _best_common([s["firmware_acceptance"][name] for s in sections],
                                [str(v) for v in range(5)])
            if best is None:
                conflicts.append(f"{name}: no level every host accepts")
                continue
            values[reg_id] = f"{int(best):#x}"
        elif rule == "bitmap":
            values[reg_id] = f"{reduce(lambda a, b: a & b, ints):#x}"
        elif rule == "idreg":
            value, bad = _fold_idreg(name, ints)
            conflicts += bad
            values[reg_id] = f"{value:#x}"
        else:
            if len(set(ints)) > 1:
                conflicts.append(f"{name}: differs between hosts and cannot be changed")
            values[reg_id] = f"{ints[0]:#x}"
    vls = {s["configs"][config].get("sve_vls") for s in sections}
    body = {"config": config, "sve_vls": min(vls, key=lambda v: int(v, 16)) if None not in vls else None,
            "stream": stream, "values": values}
    return {"body": body, "conflicts": conflicts}


def _machine_types(profiles: list[dict[str, Any]], family: str) -> str | None:
    sets = []
    for p in profiles:
        qemu = (p.get("stack") or {}).get("qemu") or {}
        sets.append({m["name"] for m in qemu.get("machines", [])})
    if not sets or not all(sets):
        return None
    return contract_mod.newest_machine(set.intersection(*sets), family)


def x86_baseline(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """A named CPU model every host's QEMU (and libvirt) can run, the features it cannot
    give somewhere disabled, plus the host-model features every host gives migratably.

    The model: the first hosts' host-model model every QEMU knows (the oldest host usually
    names the smallest), else qemu64. A feature is required only when every host's
    host-model requires it, every QEMU's migratable host expansion offers it, and no
    host's libvirt drops it on an incoming migration (x86.LIBVIRT_DROPS_ON_INCOMING).
    """
    from .arch import x86

    bodies = [x86.contract_body(p) for p in profiles]
    qemus = [((p.get("stack") or {}).get("qemu") or {}) for p in profiles]
    customs = [(((p.get("stack") or {}).get("libvirt") or {}).get("domcapabilities") or {}).get("custom_models")
               or {} for p in profiles]
    candidates = [b["cpu_model"] for b in bodies if b.get("cpu_model")] + ["qemu64"]
    model = next((m for m in candidates if all(m in (q.get("cpu_definitions") or {}) for q in qemus)), None)
    conflicts: list[str] = []
    if model is None:
        conflicts.append("no CPU model every host's QEMU knows: the baseline names features only")
    # QEMU speaks of features by its own names; the contract uses libvirt's
    libvirt_name = {x86.qemu_feature_name(f): f for b in bodies for f in b["features"]}
    disable: set[str] = set()
    if model:
        for q, custom in zip(qemus, customs):
            disable |= {libvirt_name.get(f, f) for f in q["cpu_definitions"][model]}
            disable |= set((custom.get(model) or {}).get("blockers", []))
    dropped: set[str] = set()
    for p in profiles:
        version = ((p.get("stack") or {}).get("libvirt") or {}).get("version")
        dropped |= set(x86.dropped_on_incoming(verdict.parse_version(version)))
    common = set.intersection(*({f for f, pol in b["features"].items() if pol in ("require", "force")}
                                for b in bodies))
    require = {f for f in common
               if all(((q.get("host_cpu_expansion") or {}).get("props") or {}).get(x86.qemu_feature_name(f)) is True
                      for q in qemus)} - disable - dropped
    features = {f: "disable" for f in disable} | {f: "require" for f in require}
    pvs = [int(b["pv_features"], 16) for b in bodies if b.get("pv_features")]
    pv = f"{reduce(lambda a, b: a & b, pvs):#x}" if len(pvs) == len(bodies) and pvs else None
    return {"body": {"cpu_model": model, "pv_features": pv, "features": dict(sorted(features.items()))},
            "conflicts": conflicts}


def compute(profiles: list[dict[str, Any]], rollback: list[dict[str, Any]] | None = None,
            config: str | None = None) -> dict[str, Any]:
    everyone = _unique(profiles + (rollback or []))
    if not everyone:
        raise UsageError("baseline needs at least one profile")
    arches = {p["host"]["machine"] for p in everyone}
    if len(arches) != 1:
        raise UsageError(f"profiles of several architectures ({', '.join(sorted(arches))}): one baseline per architecture")
    arch = arches.pop()
    if arch == "aarch64":
        result = arm64_baseline(everyone, config)
        family = "virt"
    elif arch == "x86_64":
        result = x86_baseline(everyone)
        family = "pc-q35"
    else:
        raise UsageError(f"architecture {arch}: abiguard knows aarch64 and x86_64")
    sealed = contract_mod.seal({
        "arch": arch, "machine_type": _machine_types(everyone, family),
        "origin": {"kind": "baseline", "hosts": [
            {"kernel": p["host"]["kernel_release"], "profile": p["digest"]}
            for p in sorted(everyone, key=lambda p: p["digest"])]},
        arch: result["body"]})
    hosts = {}
    for p in everyone:
        hosts[_host_label(p)] = host_report(sealed, p)
    return {"format": "abiguard-baseline", "contract": sealed, "conflicts": result["conflicts"],
            "hosts": hosts, "rollback_hosts": sorted({_host_label(p) for p in rollback or []})}


def host_report(sealed: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """Whether the host accepts a VM with this contract, and what it cannot pin at boot."""
    incoming = verdict.check(sealed, profile)
    report: dict[str, Any] = {
        "profile": profile["digest"],
        "accepts_incoming": incoming.allow,
        "incoming_problems": [p.line() for p in incoming.problems],
    }
    if sealed["arch"] == "aarch64":
        body = sealed["aarch64"]
        own = profile["kvm"]["aarch64"]["configs"][body["config"]]["registers"]
        extra = [arm64.reg_name(int(r, 16)) for r in own if r not in set(body["stream"])]
        differs = [arm64.reg_name(int(r, 16)) for r, v in body["values"].items()
                   if own.get(r) is not None and int(own[r], 16) != int(v, 16)]
        report["boots_with_contract"] = not extra and not differs
        report["cannot_pin"] = (
            [f"{n}: a VM booted here starts with this host's value; released QEMU has no property "
             "for it (needs abiguard's register enforcement)" for n in differs]
            + [f"{n}: listed by this kernel, not by every host; QEMU carries it in the stream of a "
               "VM booted here, so such a VM cannot move to hosts that lack it" for n in extra])
    return report
