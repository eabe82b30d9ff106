"""The x86 body of a contract: the CPU model and features libvirt gives the VM, the KVM
paravirtual feature bits it sees (CPUID 0x40000001 EAX) and the IA32_ARCH_CAPABILITIES
value it reads (0 without the MSR: whether it has one is the ``arch-capabilities``
feature)."""
from __future__ import annotations

from . import features

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.fields import Reader

MAX_FEATURES = 1024


class X86Body:
    """:param features: libvirt feature name -> policy (require, disable, force, forbid, optional)
    :param pv_features: the KVM PV bits the guest sees
    :param arch_capabilities: the IA32_ARCH_CAPABILITIES the guest reads (0 without the MSR)
    """

    __slots__ = ("cpu_model", "pv_features", "features", "arch_capabilities")

    def __init__(self, cpu_model: str | None, pv_features: int | None, features: dict[str, str],
                 arch_capabilities: int = 0) -> None:
        self.cpu_model = cpu_model
        self.pv_features = pv_features
        self.features = features
        self.arch_capabilities = arch_capabilities

    def to_json(self) -> dict[str, Any]:
        return {"cpu_model": self.cpu_model,
                "pv_features": None if self.pv_features is None else f"{self.pv_features:#x}",
                "arch_capabilities": f"{self.arch_capabilities:#x}",
                "features": dict(self.features)}

    def replace(self, **changes: Any) -> X86Body:
        d = {k: getattr(self, k) for k in self.__slots__} | changes
        return X86Body(d["cpu_model"], d["pv_features"], dict(d["features"]), d["arch_capabilities"])


def from_json(r: Reader, doc: dict[str, Any], where: str) -> X86Body:
    from ...model.fields import is_hex, is_name

    model = doc.get("cpu_model")
    r.need(model is None or is_name(model), "member 'cpu_model' must be a CPU model name or null")
    pv = doc.get("pv_features")
    r.need(pv is None or is_hex(pv, 16), "member 'pv_features' must be a hex string or null")
    r.need("arch_capabilities" in doc, "member 'arch_capabilities' is missing: the contract was sealed by an "
           "abiguard that did not record IA32_ARCH_CAPABILITIES; pin the VM again")
    caps = doc.get("arch_capabilities")
    r.need(is_hex(caps, 16), "member 'arch_capabilities' must be a hex string")
    feats = doc.get("features")
    r.need(isinstance(feats, dict) and len(feats) <= MAX_FEATURES and all(
        is_name(k) and k.lower() == k and v in features.POLICIES for k, v in feats.items()),
        "member 'features' must map feature names to one of " + ", ".join(features.POLICIES))
    assert isinstance(feats, dict)
    caps_value = int(str(caps), 16)
    if feats.get(features.ARCH_CAPABILITIES_FEATURE) not in features.ON:
        r.need(caps_value == 0, "member 'arch_capabilities' must be 0x0 when the features leave "
               "arch-capabilities off (the guest has no such MSR)")
    # the value and the features that realise it must agree wherever a feature is explicit
    for feat, bit in features.ARCH_CAPABILITY_BY_FEATURE.items():
        policy = feats.get(feat)
        has = bool(caps_value >> bit & 1)
        r.need(policy is None or caps_value == 0 or (policy in features.ON) == has,
               f"member 'arch_capabilities' says {feat} is {'on' if has else 'off'}, member 'features' "
               f"says {policy}")
    r.need(not caps_value & ~features.ARCH_CAPABILITIES_NAMED,
           "member 'arch_capabilities' holds bits no CPU feature names (QEMU never gives them to a guest)")
    return X86Body(model, None if pv is None else int(pv, 16), dict(feats), caps_value)
