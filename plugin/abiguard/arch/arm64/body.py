"""The arm64 body of a contract: the vCPU configuration (KVM_ARM_VCPU_INIT features, SVE
lengths), the register stream QEMU carries for it (every KVM_GET_REG_LIST id except core
and SVE registers) and the values of the registers that define the guest ABI (firmware
pseudo-registers, the feature ID range, CCSIDR) -- and, for a fleet of several CPU models,
every CPU implementation (MIDR, REVIDR, AIDR) the guest may run on, which abiguard_pin.so
answers to the guest's errata discovery (``impl_cpus``; absent for one CPU model) -- and
where the guest reads another value than the one its stream carries (CTR_EL0 on a kernel
before 6.3, which does not trap the guest's read), the value the guest reads (``guest``;
absent when there is none): hosts that trap the read are pinned to show it, while QEMU's
stream keeps the value the older kernel's KVM insists on."""
from __future__ import annotations

from ...model.fields import hex_values, is_hex
from . import regs

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.fields import Reader

MAX_REGISTERS = 4096


class Arm64Body:
    """:param stream: register ids, ascending; :param values: id -> value, ids of the stream
    :param impl_cpus: (MIDR, REVIDR, AIDR) of every CPU the guest may run on, in the order
        the guest is told them; empty for a fleet of one CPU model"""

    __slots__ = ("config", "sve_vls", "stream", "values", "impl_cpus", "guest")

    def __init__(self, config: str, sve_vls: int | None, stream: tuple[int, ...], values: dict[int, int],
                 impl_cpus: tuple[tuple[int, int, int], ...] = (), guest: dict[int, int] | None = None) -> None:
        self.config = config
        self.sve_vls = sve_vls
        self.stream = stream
        self.values = values
        self.impl_cpus = impl_cpus
        #: register id -> the value the guest reads, where it is not ``values``' (the stream's)
        self.guest = guest or {}

    def features(self) -> list[str]:
        return regs.config_features(self.config)

    def to_json(self) -> dict[str, Any]:
        keys = sorted(self.values)
        out: dict[str, Any] = {"config": self.config, "sve_vls": None if self.sve_vls is None else hex(self.sve_vls),
                               "stream": list(map(hex, self.stream)),
                               "values": dict(zip(map(hex, keys), map(hex, map(self.values.__getitem__, keys))))}
        if self.impl_cpus:   # absent for one CPU model: those contracts keep their digests
            out["impl_cpus"] = [{"midr": hex(m), "revidr": hex(r), "aidr": hex(a)} for m, r, a in self.impl_cpus]
        if self.guest:       # likewise absent where the guest reads what the stream carries
            out["guest"] = {hex(k): hex(self.guest[k]) for k in sorted(self.guest)}
        return out

    def own_cpu(self) -> tuple[int | None, ...]:
        """The (MIDR, REVIDR, AIDR) the contract gives the guest (None: not in its values)."""
        return regs.cpu_of(self.values)

    def replace(self, **changes: Any) -> Arm64Body:
        d = {k: getattr(self, k) for k in self.__slots__} | changes
        return Arm64Body(d["config"], d["sve_vls"], tuple(d["stream"]), dict(d["values"]), tuple(d["impl_cpus"]),
                         dict(d["guest"]))


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
    cpus = _impl_cpus(r, doc.get("impl_cpus"), values)
    guest = _guest(r, doc.get("guest"), values)
    return Arm64Body(config, None if vls is None else int(vls, 16), stream, values, cpus, guest)


#: the registers whose guest-read value a contract may give apart from its stream's
GUEST_READ_REGISTERS = frozenset({regs.CTR_EL0_ID})


def _guest(r: Reader, doc: Any, values: dict[int, int]) -> dict[int, int]:
    """``guest``: register id -> the value the guest reads, for registers of ``values`` in
    :data:`GUEST_READ_REGISTERS` only, each differing from its stream value (absent or
    empty: none)."""
    if doc is None:
        return {}
    r.need(type(doc) is dict and len(doc) <= len(GUEST_READ_REGISTERS),
           "member 'guest' must map register ids to the hex value the guest reads")
    assert isinstance(doc, dict)
    ints = hex_values(list(doc.values()), 16)
    keys = [k for k in doc if isinstance(k, str) and is_hex(k, 16)]
    r.need(ints is not None and len(keys) == len(doc), "member 'guest' must map register ids to hex values")
    assert ints is not None
    out = dict(zip((int(k, 16) for k in keys), ints))
    r.need(all(k in GUEST_READ_REGISTERS and k in values and values[k] != v for k, v in out.items()),
           "member 'guest' may only give CTR_EL0 (0x603000000013d801), a register of 'values', a value its "
           "stream value is not")
    return out


def _impl_cpus(r: Reader, doc: Any, values: dict[int, int]) -> tuple[tuple[int, int, int], ...]:
    """``impl_cpus``: at most MAX_IMPL_CPUS objects {midr, revidr, aidr}, each once, the
    contract's own CPU among them; present exactly when VENDOR_HYP_BMAP_2 offers both
    discovery calls (the guest asks exactly when abiguard_pin.so answers)."""
    discover = values.get(regs.VENDOR_HYP_BMAP_2_ID, 0) & regs.DISCOVER_IMPL_BITS
    if doc is None:
        r.need(not discover, "VENDOR_HYP_BMAP_2 offers errata discovery (DISCOVER_IMPL_*) but member "
               "'impl_cpus' is missing: give the CPUs the guest may run on, or clear bits 0x3")
        return ()
    r.need(isinstance(doc, list) and 1 <= len(doc) <= regs.MAX_IMPL_CPUS,
           f"member 'impl_cpus' must list 1..{regs.MAX_IMPL_CPUS} CPUs")
    assert isinstance(doc, list)
    out: list[tuple[int, int, int]] = []
    for i, item in enumerate(doc):
        where = f"impl_cpus[{i}]"
        r.need(type(item) is dict and set(item) == {"midr", "revidr", "aidr"},
               f"{where} must be an object with exactly 'midr', 'revidr' and 'aidr'")
        cpu = (r.hexint(item["midr"], f"{where}.midr"), r.hexint(item["revidr"], f"{where}.revidr"),
               r.hexint(item["aidr"], f"{where}.aidr"))
        r.need(cpu[0] <= regs.IMPLEMENTATION_MASKS[regs.MIDR_EL1_ID], f"{where}.midr must fit in 32 bits")
        r.need(cpu not in out, f"{where} repeats an earlier CPU")
        out.append(cpu)
    r.need(discover == regs.DISCOVER_IMPL_BITS, "member 'impl_cpus' needs VENDOR_HYP_BMAP_2 "
           f"({regs.VENDOR_HYP_BMAP_2_ID:#x}) in 'values' with bits 0x3 (DISCOVER_IMPL_VER, _CPUS) set")
    own = regs.cpu_of(values)
    r.need(None in own or own in out, "member 'impl_cpus' must include the contract's own CPU (its MIDR_EL1, "
           "REVIDR_EL1, AIDR_EL1 values)")
    return tuple(out)


_is_hex = is_hex


def _shown(items: list[Any]) -> str:
    from ...errors import printable

    return printable(", ".join(str(x) for x in items), 120)
