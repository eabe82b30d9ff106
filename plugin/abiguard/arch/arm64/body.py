"""The arm64 body of a contract: the vCPU configuration (KVM_ARM_VCPU_INIT features, SVE
lengths), the register stream QEMU carries for it (every KVM_GET_REG_LIST id except core
and SVE registers) and the values of the registers that define the guest ABI (firmware
pseudo-registers, the feature ID range, CCSIDR)."""
from __future__ import annotations

from ...model.fields import hex_values, is_hex
from . import regs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ...model.fields import Reader

MAX_REGISTERS = 4096


class Arm64Body:
    """:param stream: register ids, ascending; :param values: id -> value, ids of the stream"""

    __slots__ = ("config", "sve_vls", "stream", "values")

    def __init__(self, config: str, sve_vls: int | None, stream: tuple[int, ...], values: dict[int, int]) -> None:
        self.config = config
        self.sve_vls = sve_vls
        self.stream = stream
        self.values = values

    def features(self) -> list[str]:
        return regs.config_features(self.config)

    def to_json(self) -> dict[str, Any]:
        keys = sorted(self.values)
        return {"config": self.config, "sve_vls": None if self.sve_vls is None else hex(self.sve_vls),
                "stream": list(map(hex, self.stream)),
                "values": dict(zip(map(hex, keys), map(hex, map(self.values.__getitem__, keys))))}

    def replace(self, **changes: Any) -> Arm64Body:
        d = {k: getattr(self, k) for k in self.__slots__} | changes
        return Arm64Body(d["config"], d["sve_vls"], tuple(d["stream"]), dict(d["values"]))


def from_json(r: Reader, doc: dict[str, Any], where: str) -> Arm64Body:
    try:
        regs.config_features(doc.get("config", ""))
    except ValueError as e:
        raise r.fail(str(e)) from None
    config = doc["config"]
    vls = doc.get("sve_vls")
    r.need(vls is None or _is_hex(vls, 128), "member 'sve_vls' must be a hex string or null")
    stream_doc = doc.get("stream")
    r.need(isinstance(stream_doc, list), "member 'stream' must be a list")
    assert isinstance(stream_doc, list)
    ids, bad = regs.parse_ids(stream_doc)
    r.need(len(stream_doc) <= MAX_REGISTERS and not bad,
           f"member 'stream' must list at most {MAX_REGISTERS} arm64 register ids (0x60...) of groups "
           "KVM defines: " + _shown(bad))
    stream = tuple(ids)
    r.need(ids == sorted(set(ids)), "member 'stream' must list register ids in ascending order, each once")
    values_doc = doc.get("values")
    r.need(type(values_doc) is dict and len(values_doc) <= MAX_REGISTERS,
           "member 'values' must map register ids of the stream to hex values")
    assert isinstance(values_doc, dict)
    value_ints = hex_values(list(values_doc.values()), 16)
    r.need(value_ints is not None and set(stream_doc).issuperset(values_doc),
           "member 'values' must map register ids of the stream to hex values")
    assert value_ints is not None
    # the keys are stream words, so canonical ids already
    values = dict(zip([int(k, 16) for k in values_doc], value_ints))
    state = [k for k in values if not regs.carries_abi_value(k)]
    r.need(not state, "member 'values' holds guest-state registers, which are not guest ABI: "
           + _shown([f"{k:#x}" for k in state]))
    return Arm64Body(config, None if vls is None else int(vls, 16), stream, values)


_is_hex = is_hex


def _shown(items: list[Any]) -> str:
    from ...errors import printable

    return printable(", ".join(str(x) for x in items), 120)
