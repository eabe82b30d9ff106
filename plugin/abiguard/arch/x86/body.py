"""The x86 body of a contract: the CPU model and features libvirt gives the VM, and the
KVM paravirtual feature bits (CPUID 0x40000001 EAX) it sees."""
from __future__ import annotations

from . import features

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ...model.fields import Reader

MAX_FEATURES = 1024


class X86Body:
    """:param features: libvirt feature name -> policy (require, disable, force, forbid, optional)"""

    __slots__ = ("cpu_model", "pv_features", "features")

    def __init__(self, cpu_model: str | None, pv_features: int | None, features: dict[str, str]) -> None:
        self.cpu_model = cpu_model
        self.pv_features = pv_features
        self.features = features

    def to_json(self) -> dict[str, Any]:
        return {"cpu_model": self.cpu_model,
                "pv_features": None if self.pv_features is None else f"{self.pv_features:#x}",
                "features": dict(self.features)}

    def replace(self, **changes: Any) -> X86Body:
        d = {k: getattr(self, k) for k in self.__slots__} | changes
        return X86Body(d["cpu_model"], d["pv_features"], dict(d["features"]))


def from_json(r: Reader, doc: dict[str, Any], where: str) -> X86Body:
    from ...model.fields import is_hex, is_name

    model = doc.get("cpu_model")
    r.need(model is None or is_name(model), "member 'cpu_model' must be a CPU model name or null")
    pv = doc.get("pv_features")
    r.need(pv is None or is_hex(pv, 16), "member 'pv_features' must be a hex string or null")
    feats = doc.get("features")
    r.need(isinstance(feats, dict) and len(feats) <= MAX_FEATURES and all(
        is_name(k) and k.lower() == k and v in features.POLICIES for k, v in feats.items()),
        "member 'features' must map feature names to one of " + ", ".join(features.POLICIES))
    assert isinstance(feats, dict)
    return X86Body(model, None if pv is None else int(pv, 16), dict(feats))
