"""The x86 part of a fleet baseline."""
from __future__ import annotations

from . import features
from .judge import contract_body

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ...model.profile import Profile
    from .body import X86Body


def baseline(profiles: list[Profile]) -> tuple[X86Body, list[str]]:
    """A named CPU model every host's QEMU (and libvirt) can run, the features it cannot
    give somewhere disabled, plus the host-model features every host gives migratably.

    The model: the first hosts' host-model model every QEMU knows (the oldest host usually
    names the smallest), else qemu64. A feature is required only when every host's
    host-model requires it, every QEMU's migratable host expansion offers it, and no
    host's libvirt drops it on an incoming migration (features.LIBVIRT_DROPS_ON_INCOMING).
    """
    from .body import X86Body

    bodies = [contract_body(p) for p in profiles]
    defs = [(p.qemu.cpu_definitions if p.qemu is not None else None) or {} for p in profiles]
    props = [(p.qemu.host_cpu_props if p.qemu is not None else None) or {} for p in profiles]
    customs = []
    for p in profiles:
        dc = p.libvirt.domcaps if p.libvirt is not None else None
        customs.append((dc.custom_models if dc is not None else None) or {})
    candidates = [b.cpu_model for b in bodies if b.cpu_model] + ["qemu64"]
    model = next((m for m in candidates if all(m in d for d in defs)), None)
    conflicts: list[str] = []
    if model is None:
        conflicts.append("no CPU model every host's QEMU knows: the baseline names features only")
    # QEMU speaks of features by its own names; the contract uses libvirt's
    libvirt_name = {features.qemu_feature_name(f): f for b in bodies for f in b.features}
    disable: set[str] = set()
    if model:
        for d, custom in zip(defs, customs):
            disable |= {libvirt_name.get(f, f) for f in d[model]}
            blockers = custom.get(model)
            disable |= set(blockers.blockers if blockers else ())
    dropped: set[str] = set()
    for p in profiles:
        dropped |= set(features.dropped_on_incoming(p.libvirt_version()))
    common = set.intersection(*({f for f, pol in b.features.items() if pol in ("require", "force")}
                                for b in bodies))
    require = {f for f in common
               if all(pr.get(features.qemu_feature_name(f)) is True for pr in props)} - disable - dropped
    chosen = {f: "disable" for f in disable} | {f: "require" for f in require}
    pvs = [b.pv_features for b in bodies if b.pv_features is not None]
    pv = None
    if len(pvs) == len(bodies) and pvs:
        pv = pvs[0]
        for x in pvs[1:]:
            pv &= x
    return X86Body(model, pv, dict(sorted(chosen.items()))), conflicts
