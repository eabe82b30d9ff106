"""The arm64 body of a contract: the vCPU configuration (KVM_ARM_VCPU_INIT features, SVE
lengths), the register stream QEMU carries for it (every KVM_GET_REG_LIST id except core
and SVE registers) and the values of the registers that define the guest ABI (firmware
pseudo-registers, the feature ID range, CCSIDR) -- and, for a fleet of several CPU models,
every CPU implementation (MIDR, REVIDR, AIDR) the guest may run on, which abiguard_pin.so
answers to the guest's errata discovery (``impl_cpus``; absent for one CPU model) -- and
what the guest saw where its ONE_REG values do not say it (``guest``: :func:`guest_items`;
absent in contracts made before abiguard ran a guest, and where there is nothing to say).
One member serves both uses: the guest's view of the host(s) the contract comes from
(DCZID_EL0, reads that trap, firmware answers), and, for CTR_EL0 on a kernel before 6.3,
which does not trap the guest's read, the value that guest reads apart from the stream's:
hosts that trap the read pin it (abiguard_pin.so shows the guest that value while QEMU's
stream keeps the one the older kernel's KVM insists on, :mod:`.guestreads`)."""
from __future__ import annotations

from ...model.fields import hex_values, is_hex
from . import regs

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    #: what the guest saw of one item: ("value", v) or ("fault", ESR_EL1)
    Seen: TypeAlias = tuple[str, int]

    from ...model.fields import Reader

MAX_REGISTERS = 4096
MAX_GUEST_ITEMS = 512
#: how a read that trapped is written in ``guest``: "esr:" and ESR_EL1 in hex
FAULT_PREFIX = "esr:"


class Arm64Body:
    """:param stream: register ids, ascending; :param values: id -> value, ids of the stream
    :param impl_cpus: (MIDR, REVIDR, AIDR) of every CPU the guest may run on, in the order
        the guest is told them; empty for a fleet of one CPU model"""

    __slots__ = ("config", "sve_vls", "stream", "values", "impl_cpus", "guest")

    def __init__(self, config: str, sve_vls: int | None, stream: tuple[int, ...], values: dict[int, int],
                 impl_cpus: tuple[tuple[int, int, int], ...] = (), guest: dict[int | str, Seen] | None = None) -> None:
        self.config = config
        self.sve_vls = sve_vls
        self.stream = stream
        self.values = values
        self.impl_cpus = impl_cpus
        #: register id or firmware call key -> what the guest saw where its contract value
        #: does not say it (:func:`guest_items`); empty: the contract predates guest views
        #: (or its guest saw nothing ONE_REG does not say)
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
        if self.guest:       # absent before guest views: those contracts keep their digests
            out["guest"] = {guest_key_text(k): seen_text(v) for k, v in sorted(
                self.guest.items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))}
        return out

    def own_cpu(self) -> tuple[int | None, ...]:
        """The (MIDR, REVIDR, AIDR) the contract gives the guest (None: not in its values)."""
        return regs.cpu_of(self.values)

    def replace(self, **changes: Any) -> Arm64Body:
        d = {k: getattr(self, k) for k in self.__slots__} | changes
        return Arm64Body(d["config"], d["sve_vls"], tuple(d["stream"]), dict(d["values"]), tuple(d["impl_cpus"]),
                         dict(d["guest"]))


def guest_key_text(key: int | str) -> str:
    return hex(key) if isinstance(key, int) else key


def seen_text(seen: Seen) -> str:
    kind, v = seen
    return hex(v) if kind == "value" else FAULT_PREFIX + hex(v)


def seen_shown(seen: Seen | None) -> str:
    """What a report says the guest saw."""
    if seen is None:
        return "nothing (not read)"
    kind, v = seen
    if kind == "value":
        return hex(v)
    from .guest import esr_class

    return f"a trap: {esr_class(v)}, ESR {v:#x}"


def guest_items(view: Any, values: dict[int, int]) -> dict[int | str, Seen]:
    """What a contract records of a guest view (:class:`.section.GuestView`): every item
    whose value the contract's ONE_REG values do not already say -- a register the guest
    read differently from its value (CTR_EL0 on Linux < 6.7), one not in ONE_REG at all
    (DCZID_EL0), every read that trapped, and every firmware answer (KVM answers them from
    the firmware registers and VM capabilities, so they are held as the guest saw them)."""
    out: dict[int | str, Seen] = {}
    for rid, v in view.registers.items():
        if values.get(rid) != v:
            out[rid] = ("value", v)
    for key, v in view.firmware.items():
        out[key] = ("value", v)
    for key, esr in view.faults.items():
        out[key] = ("fault", esr)
    return out


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
    return Arm64Body(config, None if vls is None else int(vls, 16), stream, values, cpus,
                     _guest(r, doc.get("guest")))


def _guest(r: Reader, doc: Any) -> dict[int | str, Seen]:
    """``guest``: at most MAX_GUEST_ITEMS of register id (the guest reads it) or firmware
    call key -> hex value or "esr:" hex ESR. Absent or empty: no guest view."""
    from . import guest

    if doc is None:
        return {}
    r.need(type(doc) is dict and len(doc) <= MAX_GUEST_ITEMS,
           f"member 'guest' must map at most {MAX_GUEST_ITEMS} registers or firmware calls to what the guest saw")
    out: dict[int | str, Seen] = {}
    for k, v in doc.items():
        key: int | str
        if k in guest.CALL_KEYS:
            key = k
        else:
            ids, bad = regs.parse_ids([k])
            if bad or not (ids[0] in guest.READ_IDS or regs.kind_of(ids[0]) in ("idreg", "ccsidr")):
                # the message is built only on failure: a contract carries dozens of these (67: 7.2)
                raise r.fail("member 'guest' has a key that is neither a register the guest reads nor a "
                             "firmware call: " + _shown([k]))
            key = ids[0]
        fault = isinstance(v, str) and v.startswith(FAULT_PREFIX)
        text = v[len(FAULT_PREFIX):] if fault else v
        if not (isinstance(text, str) and _is_hex(text, 16)):
            raise r.fail(f"member 'guest.{_shown([k])}' must be a hex value or '{FAULT_PREFIX}' and a hex ESR")
        out[key] = ("fault" if fault else "value", int(text, 16))
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
