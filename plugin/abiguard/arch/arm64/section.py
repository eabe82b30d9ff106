"""The arm64 part of a host profile (``kvm.aarch64``), read into a typed model.

Written by :mod:`.probe`; layout::

    vm_caps              KVM_CHECK_EXTENSION on a VM fd
    preferred_target     KVM_ARM_PREFERRED_TARGET
    writable_masks       KVM_ARM_GET_REG_WRITABLE_MASKS by register name (null before 6.7)
    configs              per vCPU configuration (psci+pmu+...): features, sve_vls,
                         reg_list (every KVM_GET_REG_LIST id), registers (the ids QEMU
                         migrates -> value, null where the value moves with time) and
                         guest_view (what a guest of it reads: :mod:`.guest`; null when
                         the run failed, absent from profiles of abiguard before it)
    register_names       id -> name
    firmware_acceptance  per firmware register, what its write trials found (its rule kind
                         reads it: :mod:`.rules`)
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from ...model.profile import KvmSection
from . import regs

TYPE_CHECKING = False  # not typing's: the hook does not import typing (README, Speed)
if TYPE_CHECKING:
    from typing import Any

    from ...model.fields import Reader

MAX_REGISTERS = 4096
MAX_GUEST_ITEMS = 512


class GuestView:
    """What a guest of one configuration read on the host (:mod:`.guest`): register id ->
    value (CCSIDRs under their DEMUX_CCSIDR ids), firmware call key -> x0, and the reads
    that trapped (register id or call key -> ESR_EL1). ``partial``: not a guest run's but
    the lab's record of some registers (:func:`.guestreads.guest_view`), and where from."""

    __slots__ = ("registers", "firmware", "faults", "exits", "partial")

    def __init__(self, registers: dict[int, int], firmware: dict[str, int], faults: dict[int | str, int],
                 exits: int, partial: str | None = None) -> None:
        self.registers, self.firmware, self.faults, self.exits = registers, firmware, faults, exits
        self.partial = partial

    def seen(self, key: int | str) -> tuple[str, int] | None:
        """What the guest got for one item: ("value", v), ("fault", ESR) or None (not read)."""
        if key in self.faults:
            return ("fault", self.faults[key])
        v = self.registers.get(key) if isinstance(key, int) else self.firmware.get(key)
        return None if v is None else ("value", v)

    def to_view(self) -> tuple[Any, ...]:
        return (self.registers, self.firmware, self.faults, self.exits)


class ArmConfig:
    """One vCPU configuration as probed: its registers and their default values, and what
    its guest read (``guest``: None when the run failed or the profile predates it)."""

    __slots__ = ("name", "features", "sve_vls", "reg_list", "registers", "guest")

    def __init__(self, name: str, features: tuple[str, ...], sve_vls: int | None, reg_list: tuple[int, ...],
                 registers: dict[int, int | None] | None, guest: GuestView | None = None) -> None:
        self.name = name
        self.features = features
        self.sve_vls = sve_vls
        self.reg_list = reg_list
        #: None when KVM_GET_REG_LIST failed for it (the config is then unusable)
        self.registers = registers
        self.guest = guest


class LazyConfigs(Mapping[str, ArmConfig]):
    """The configurations of a profile read from its hook view: each one's registers are
    decoded when first asked for. A hook run judges one configuration of eight, and
    decoding all of them would be most of its work."""

    __slots__ = ("_raw", "_done")

    def __init__(self, raw: dict[str, bytes]) -> None:
        self._raw = raw
        self._done: dict[str, ArmConfig] = {}

    def __getitem__(self, name: str) -> ArmConfig:
        done = self._done.get(name)
        if done is None:
            import marshal

            features, vls, reg_list, registers, guest = marshal.loads(self._raw[name])
            if not (type(features) is tuple and type(reg_list) is tuple and len(reg_list) <= MAX_REGISTERS * 4
                    and set(map(type, features)) <= {str} and set(map(type, reg_list)) <= {int}
                    and (vls is None or type(vls) is int)
                    and (registers is None or (type(registers) is dict and len(registers) <= MAX_REGISTERS
                                               and set(map(type, registers)) <= {int}
                                               and set(map(type, registers.values())) <= {int, type(None)}))):
                raise ValueError("not an arm64 profile view")
            done = self._done[name] = ArmConfig(name, features, vls, reg_list, registers, _guest_from_view(guest))
        return done

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, name: object) -> bool:     # without decoding it
        return name in self._raw


class Arm64Kvm(KvmSection):
    __slots__ = ("configs", "names", "acceptance", "masks", "vm_caps", "preferred_target")

    def __init__(self, configs: Mapping[str, ArmConfig], names: dict[int, str], acceptance: dict[str, Any],
                 masks: dict[str, int] | None, vm_caps: dict[str, int], preferred_target: int | None) -> None:
        self.configs = configs
        self.names = names
        #: firmware register name -> its rule's trial (None: the trials failed)
        self.acceptance = acceptance
        #: register name -> writable mask; None where ID registers are not writable (< 6.7)
        self.masks = masks
        self.vm_caps = vm_caps
        self.preferred_target = preferred_target

    def usable(self, config: str) -> ArmConfig | None:
        """The configuration if it was probed with its register list."""
        c = self.configs.get(config)
        return c if c is not None and c.registers is not None else None

    def name_of(self, reg_id: int) -> str:
        """The profile's own name for a register (what the probing abiguard called it: no
        table to load on the hook's path) -- unless that was its encoding (``S3_3_C14_C2_1``),
        which the kernel's table may name (``CNTP_CTL_EL0``, :func:`regs.reg_name`)."""
        stored = self.names.get(reg_id)
        if stored is None or (stored[:1] == "S" and stored[1:2].isdigit()):
            return regs.reg_name(reg_id)
        return stored

    def default_config(self) -> str:
        """What ``-cpu host`` gives on that host: every vCPU feature its KVM offers."""
        return max(self.configs, key=lambda name: (len(self.configs[name].features), name))


def _guest_from_view(v: object) -> GuestView | None:
    """A configuration's guest view from the hook view, typed exactly; ValueError else."""
    if v is None:
        return None
    if not (type(v) is tuple and len(v) == 4):
        raise ValueError("not an arm64 profile view")
    registers, firmware, faults, exits = v

    def typed(d: object, kts: set[type]) -> bool:
        return (type(d) is dict and len(d) <= MAX_GUEST_ITEMS and set(map(type, d)) <= kts
                and set(map(type, d.values())) <= {int})

    if not (typed(registers, {int}) and typed(firmware, {str}) and typed(faults, {int, str})
            and type(exits) is int):
        raise ValueError("not an arm64 profile view")
    return GuestView(registers, firmware, faults, exits)


def guest_from_json(r: Reader, doc: object, where: str) -> GuestView | None:
    """A ``guest_view`` member: registers by arm64 ids (sysreg or DEMUX_CCSIDR), firmware by
    the call keys this abiguard asks, faults by either, every value canonical hex."""
    from . import guest

    if doc is None:
        return None
    d = r.obj(doc, where, 8)
    r.need(set(d) == {"registers", "firmware", "faults", "exits"},
           f"member '{where}' must have exactly 'registers', 'firmware', 'faults' and 'exits'")
    registers = {}
    for k, v in r.obj(d["registers"], f"{where}.registers", MAX_GUEST_ITEMS).items():
        rid = _reg(r, k, f"{where}.registers")
        r.need(regs.kind_of(rid) in ("idreg", "ccsidr") or rid in guest.READ_IDS,
               f"member '{where}.registers' names {rid:#x}, which the guest does not read")
        registers[rid] = r.hexint(v, f"{where}.registers.{k}")
    firmware = {}
    for k, v in r.obj(d["firmware"], f"{where}.firmware", MAX_GUEST_ITEMS).items():
        r.need(k in guest.CALL_KEYS, f"member '{where}.firmware' names a call this abiguard does not make "
               "(probe the host again with this version)")
        firmware[k] = r.hexint(v, f"{where}.firmware.{k}")
    faults: dict[int | str, int] = {}
    for k, v in r.obj(d["faults"], f"{where}.faults", MAX_GUEST_ITEMS).items():
        key: int | str = k if k in guest.CALL_KEYS else _reg(r, k, f"{where}.faults")
        faults[key] = r.hexint(v, f"{where}.faults.{k}")
    exits = r.integer(d["exits"], f"{where}.exits", 0, guest.MAX_EXITS)
    return GuestView(registers, firmware, faults, exits)


def _reg(r: Reader, v: object, where: str) -> int:
    rid = r.hexint(v, where)
    r.need(regs.is_reg_id(rid), f"member '{where}' must be an arm64 register id (0x60...), not {v}")
    return rid


def _regs(r: Reader, vs: list[Any], where: str) -> list[int]:
    """Many register ids at once: checked in C over the whole list (a profile has ~4,000),
    item by item only to name the one that is wrong."""
    from ...model.fields import hex_values

    ints = hex_values(vs, 16)
    if ints is not None and {i >> 16 for i in ints} <= regs.ID_PREFIXES and (not ints or min(ints) >= 0):
        return ints
    return [_reg(r, x, where) for x in vs]


def _values(r: Reader, d: dict[str, Any], where: str) -> dict[int, int | None]:
    """A ``registers`` member (id -> hex value or null), checked as :func:`_regs` does."""
    from ...model.fields import hex_values

    keys = _regs(r, list(d), where)
    values = list(d.values())
    known = [v for v in values if v is not None]
    ints = hex_values(known, 16)
    if ints is None:
        return {_reg(r, k, where): r.opt_hexint(v, f"{where}.{k}", 16) for k, v in d.items()}
    it = iter(ints)
    return dict(zip(keys, [None if v is None else next(it) for v in values]))


def from_json(r: Reader, doc: dict[str, Any], where: str) -> Arm64Kvm:
    from .rules import RULES

    configs: dict[str, ArmConfig] = {}
    for name, c in r.obj(doc.get("configs", {}), f"{where}.configs", 64).items():
        w = f"{where}.configs.{name}"
        try:
            regs.config_features(name)
        except ValueError as e:
            raise r.fail(f"member '{where}.configs': {e}") from None
        c = r.obj(c, w)
        features = r.lst(c.get("features", []), f"{w}.features", 16)
        r.need(all(isinstance(f, str) and f in _VCPU_FEATURES for f in features),
               f"member '{w}.features' must list KVM_ARM_VCPU_INIT features")
        reg_list = tuple(_regs(r, r.lst(c.get("reg_list", []), f"{w}.reg_list", MAX_REGISTERS * 4),
                               f"{w}.reg_list"))
        registers: dict[int, int | None] | None = None
        if "registers" in c:
            registers = _values(r, r.obj(c["registers"], f"{w}.registers", MAX_REGISTERS), f"{w}.registers")
        configs[name] = ArmConfig(name, tuple(features), r.opt_hexint(c.get("sve_vls"), f"{w}.sve_vls", 128),
                                  reg_list, registers, guest_from_json(r, c.get("guest_view"), f"{w}.guest_view"))
    names = {}
    for k, v in r.obj(doc.get("register_names", {}), f"{where}.register_names", MAX_REGISTERS * 4).items():
        names[_reg(r, k, f"{where}.register_names")] = r.label(v, f"{where}.register_names.{k}", "a register name")
    acceptance: dict[str, Any] = {}
    trials = r.opt_obj(doc.get("firmware_acceptance"), f"{where}.firmware_acceptance", 64)
    for name, trial in (trials or {}).items():
        fw = regs.FW_BY_NAME.get(name)
        if fw is None:
            continue          # a register this abiguard has no row for: its values are refused anyway
        acceptance[name] = RULES[fw.kind].parse_trial(r, trial, f"{where}.firmware_acceptance.{name}")
    masks_doc = r.opt_obj(doc.get("writable_masks"), f"{where}.writable_masks", 256)
    masks = None if masks_doc is None else {
        r.name(k, f"{where}.writable_masks", "register names"): r.hexint(v, f"{where}.writable_masks.{k}")
        for k, v in masks_doc.items()}
    vm_caps_doc = r.obj(doc.get("vm_caps", {}), f"{where}.vm_caps", 4096)
    vm_caps = {r.name(k, f"{where}.vm_caps", "capability names"): r.integer(v, f"{where}.vm_caps.{k}")
               for k, v in vm_caps_doc.items()}
    target = doc.get("preferred_target")
    return Arm64Kvm(configs, names, acceptance, masks, vm_caps,
                    None if target is None else r.integer(target, f"{where}.preferred_target", 0, 1 << 32))


_VCPU_FEATURES = frozenset({"EL1_32BIT", "PSCI_0_2", "PMU_V3", "SVE", "PTRAUTH_ADDRESS", "PTRAUTH_GENERIC",
                            "HAS_EL2"})


def to_view(s: Arm64Kvm) -> Any:
    import marshal

    return ({n: marshal.dumps((c.features, c.sve_vls, c.reg_list, c.registers,
                               None if c.guest is None else c.guest.to_view())) for n, c in s.configs.items()},
            s.names, s.acceptance, s.masks, s.vm_caps, s.preferred_target)


def from_view(v: Any) -> Arm64Kvm:
    """The section from its hook view, every member typed (exact types) as strictly as
    :func:`from_json` reads it; ValueError on anything else. A configuration's registers
    are typed when it is decoded (:class:`LazyConfigs`)."""
    if type(v) is not tuple or len(v) != 6:
        raise ValueError("not an arm64 profile view")
    configs, names, acceptance, masks, vm_caps, target = v

    def typed(d: object, kt: type, vts: set[type], cap: int) -> bool:
        return (type(d) is dict and len(d) <= cap and set(map(type, d)) <= {kt}
                and set(map(type, d.values())) <= vts)

    if not (typed(configs, str, {bytes}, 64) and typed(names, int, {str}, MAX_REGISTERS * 4)
            and typed(acceptance, str, {dict, int, type(None)}, 64)
            and (masks is None or typed(masks, str, {int}, 256)) and typed(vm_caps, str, {int}, 4096)
            and (target is None or type(target) is int)):
        raise ValueError("not an arm64 profile view")
    from .rules import RULES

    for name, trial in acceptance.items():
        fw = regs.FW_BY_NAME.get(name)
        if fw is None:
            raise ValueError("not an arm64 profile view")
        kind = RULES[fw.kind].kind
        ok = trial is None or (type(trial) is int if kind == "bitmap" else typed(trial, str, {str}, 16))
        if not ok:
            raise ValueError("not an arm64 profile view")
    return Arm64Kvm(LazyConfigs(configs), names, acceptance, masks, vm_caps, target)
