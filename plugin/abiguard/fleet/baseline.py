"""``fleet baseline``: the richest contract every host of the fleet can provide, including
the profile each host ran before its last publish, which is the rollback the fleet must
stay able to make.

The engine (:func:`abiguard.engine.baseline.compute`) sees each distinct profile once, so
10,000 hosts of 20 kinds cost what 20 profile files cost; the document it writes is the
one ``abiguard baseline`` writes (``abiguard pin --baseline`` takes it), with a ``fleet``
member saying which hosts each profile stands for.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..model.profile import Profile
    from .record import HostRecord
    from .store import Store


def label(p: Profile) -> str:
    """How a distinct profile is named in reports: its kernel (QEMU, libvirt where the
    profile names them) and its digest's head."""
    from .names import stack

    return f"{stack(p)} ({p.digest[7:19]})"


def pick_arch(profiles: list[Profile], arch: str | None) -> str:
    counts: dict[str, int] = {}
    for p in profiles:
        counts[p.machine] = counts.get(p.machine, 0) + 1
    if arch is not None:
        if arch not in counts:
            raise UsageError(f"no host of the fleet is {arch} (it has {', '.join(sorted(counts)) or 'none'})")
        return arch
    if len(counts) != 1:
        raise UsageError("the fleet has profiles of several architectures ("
                         + ", ".join(f"{a}: {n}" for a, n in sorted(counts.items()))
                         + "): one baseline per architecture; pick one with --arch")
    return next(iter(counts))


def compute(store: Store, records: list[HostRecord], arch: str | None = None, rollback: bool = True,
            config: str | None = None, hypervisors: list[Any] | None = None,
            extra_rollback: list[Profile] | None = None, accept_only: frozenset[str] = frozenset()
            ) -> dict[str, Any]:
    """The fleet's baseline document (:func:`abiguard.engine.baseline.compute`: its outcome
    says whether every profile, rollbacks included, boots and accepts it).

    :param accept_only: digests of profiles that need only accept the contract
    """
    from ..engine import baseline

    if not records:
        raise UsageError(f"no host has published to {store.root} yet: run abiguard fleet publish on the "
                         "hosts (or abiguard fleet pull HOST...)")
    current = store.profiles_of(records)
    previous: dict[str, Profile] = {}
    if rollback:
        for rec in records:
            if rec.previous is not None and rec.previous not in current and rec.previous not in previous:
                previous[rec.previous] = store.profile(rec.previous, store.record_path(rec.name))
    for p in extra_rollback or ():
        previous.setdefault(p.digest, p)
    name = pick_arch(list(current.values()) + list(previous.values()), arch)
    hosts: dict[str, list[str]] = {}
    rolled: dict[str, list[str]] = {}
    for rec in records:
        if current[rec.profile].machine == name:
            hosts.setdefault(label(current[rec.profile]), []).append(rec.name)
        if rollback and rec.previous in previous and previous[rec.previous].machine == name:
            rolled.setdefault(label(previous[rec.previous]), []).append(rec.name)
    now = [p.with_label(label(p)) for p in current.values() if p.machine == name]
    back = [p.with_label(label(p)) for p in previous.values() if p.machine == name]
    doc = baseline.compute(now, back, config, hypervisors, accept_only)
    doc["fleet"] = {"directory": store.root, "arch": name, "hosts": hosts, "rollback_of": rolled}
    # x86: what each profile's own libvirt said of the contract (compareHypervisorCPU), where
    # one of its hosts' libvirts was asked; a libvirt that cannot start it already refuses it
    for rec in records:
        asked = doc.get("libvirt", {}).get(rec.uri) if rec.uri else None
        rep = doc["hosts"].get(label(current[rec.profile])) if current[rec.profile].machine == name else None
        if asked is not None and rep is not None:
            rep["libvirt_compare"] = asked["compare"]
            rep["libvirt_starts"] = baseline.libvirt_runs(asked)
    return doc
