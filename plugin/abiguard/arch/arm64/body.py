"""The arm64 body of a contract: the vCPU configuration (KVM_ARM_VCPU_INIT features, SVE
lengths), the register stream QEMU carries for it (every KVM_GET_REG_LIST id except core
and SVE registers) and the values of the registers that define the guest ABI (firmware
pseudo-registers, the feature ID range, CCSIDR)."""
from __future__ import annotations

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
        return {"config": self.config, "sve_vls": None if self.sve_vls is None else f"{self.sve_vls:#x}",
                "stream": [f"{r:#x}" for r in self.stream],
                "values": {f"{k:#x}": f"{v:#x}" for k, v in sorted(self.values.items())}}

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
    bad = [s for s in stream_doc if not _is_reg(s)]
    r.need(len(stream_doc) <= MAX_REGISTERS and not bad,
           f"member 'stream' must list at most {MAX_REGISTERS} arm64 register ids (0x60...) of groups "
           "KVM defines: " + _shown(bad))
    stream = tuple(int(s, 16) for s in stream_doc)
    r.need(all(a < b for a, b in zip(stream, stream[1:])),
           "member 'stream' must list register ids in ascending order, each once")
    values_doc = doc.get("values")
    in_stream = set(stream_doc)
    r.need(isinstance(values_doc, dict) and len(values_doc) <= MAX_REGISTERS and all(
        _is_hex(v, 16) and k in in_stream for k, v in values_doc.items()),
        "member 'values' must map register ids of the stream to hex values")
    assert isinstance(values_doc, dict)
    values = {int(k, 16): int(v, 16) for k, v in values_doc.items()}
    state = [k for k in values if not regs.carries_abi_value(k)]
    r.need(not state, "member 'values' holds guest-state registers, which are not guest ABI: "
           + _shown([f"{k:#x}" for k in state]))
    return Arm64Body(config, None if vls is None else int(vls, 16), stream, values)


def _is_hex(v: object, digits: int) -> bool:
    from ...model.fields import is_hex

    return is_hex(v, digits)


def _is_reg(v: object) -> bool:
    return isinstance(v, str) and len(v) == 18 and _is_hex(v, 16) and regs.is_reg_id(int(v, 16))


def _shown(items: list[Any]) -> str:
    from ...errors import printable

    return printable(", ".join(str(x) for x in items), 120)
