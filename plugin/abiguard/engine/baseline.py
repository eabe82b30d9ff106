"""Fleet baselines: the richest guest ABI every listed host (including the hosts a VM may
be rolled back to) can provide, and for each host whether it takes VMs of that contract
and what its stack cannot pin. The arch plugin folds the values
(:meth:`abiguard.arch.base.Arch.baseline`); this module does what every arch shares, and
reads the files a contract comes in (a contract, a baseline, a host profile) as a contract."""
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
            config: str | None = None, hypervisors: list[Any] | None = None) -> dict[str, Any]:
    """The baseline document: its contract, the conflicts, and a report per host.

    :param hypervisors: the fleet's libvirts (``--libvirt URI``): the arch asks them to
        compute (x86: baselineHypervisorCPU) and to confirm (compareHypervisorCPU)
    """
    from ..arch import get
    from ..model.contract import Origin, OriginHost, seal

    everyone = unique(profiles + (rollback or []))
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
    sealed = seal(name, common_machine(everyone, arch.machine_family), origin, body)
    hosts = {p.label: host_report(sealed, p) for p in everyone}
    doc = {"format": FORMAT, "contract": sealed.to_json(), "conflicts": conflicts, "hosts": hosts,
           "rollback_hosts": sorted({p.label for p in rollback or []})}
    if hypervisors:
        verified = arch.verify_on(sealed, hypervisors)
        doc["libvirt"] = verified
        conflicts += [f"{label}: libvirt says the CPU is {v['compare']}: {v.get('reason', '')}".rstrip(": ")
                      for label, v in sorted(verified.items()) if v["compare"] not in ("identical", "superset")]
    return doc


def host_report(sealed: Contract, profile: Profile) -> dict[str, Any]:
    """Whether the host accepts a VM with this contract, and what it cannot pin at boot."""
    from ..arch import get

    incoming = verdict.check(sealed, profile)
    report: dict[str, Any] = {"profile": profile.digest, "accepts_incoming": incoming.allow,
                              "incoming_problems": [p.line() for p in incoming.problems]}
    report.update(get(sealed.arch).host_report(sealed, profile))
    return report


def load_contract_or_profile(path: str, config: str | None = None) -> Contract:
    """A contract file, a baseline file (its contract) or a host profile (the contract a
    VM booted there with defaults has)."""
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
        return contract.Contract.from_json(doc.get("contract"), path)
    if kind == profile.FORMAT:
        return contract.from_profile(profile.Profile.from_json(doc, path), config)
    raise InputError(path, "not an abiguard host profile, contract or baseline (member 'format')")
