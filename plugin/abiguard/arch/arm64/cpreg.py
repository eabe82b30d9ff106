"""How a destination QEMU loads the cpreg list of an incoming arm64 migration stream,
by released version, as data.

Both lists are sorted by id (``kvm_arm_init_cpreg_list`` sorts with ``compare_u64``) and
merged in target/arm/machine.c ``cpu_post_load``; every value is then written with
KVM_SET_ONE_REG and one failed write fails the load (``write_list_to_kvmstate``).
"""
from __future__ import annotations

from ...uapi import arm64 as kvm  # the uapi id layout, without the ioctls


class QemuCpregRule:
    """One QEMU behaviour.

    :param since: first QEMU version with it, e.g. ``(7, 2)``
    :param length_check: ``VMSTATE_INT32_POSITIVE_LE(cpreg_vmstate_array_len)`` refuses a
        stream longer than the destination's own list first ("Invalid value N expecting
        positive value <= M")
    :param drops_tail: the merge loop stops at the end of the destination's list, so
        stream-only ids above its largest id are dropped instead of failing
    :param tolerated: stream-only registers the destination accepts: id -> (mask, value)
        the incoming value must match, or None for any value (ToleranceNotOnBothEnds)
    """

    __slots__ = ("name", "since", "length_check", "drops_tail", "tolerated")

    def __init__(self, name: str, since: tuple[int, ...], length_check: bool, drops_tail: bool,
                 tolerated: dict[int, tuple[int, int] | None]) -> None:
        self.name = name
        self.since = since
        self.length_check = length_check
        self.drops_tail = drops_tail
        self.tolerated = tolerated


#: oldest first. "strict model" is what the lab replays (any stream-only register fails);
#: it is used when the destination's QEMU version is unknown. The released versions were
#: read in Debian's sources (7.2.22, 10.0.13, 10.2.2) and, for 11.1.3, in the sid binary.
QEMU_CPREG_RULES: tuple[QemuCpregRule, ...] = (
    QemuCpregRule("QEMU of unknown version (strict model)", (0,), False, False, {}),
    QemuCpregRule("QEMU 7.2-11.0", (7, 2), True, True, {}),
    # upstream bb36be6f "Introduce the infrastructure for cpreg migration tolerances" and
    # follow-ups (target-arm pull of 2026-04-27); registered in aarch64_host_initfn, so for
    # -cpu host / max under KVM, independent of the machine type
    QemuCpregRule("QEMU >= 11.1", (11, 1), False, False, {
        kvm.arm64_sysreg_id(3, 0, 2, 0, 3): None,     # TCR2_EL1
        kvm.arm64_sysreg_id(3, 0, 10, 2, 2): None,    # PIRE0_EL1
        kvm.arm64_sysreg_id(3, 0, 10, 2, 3): None,    # PIR_EL1
        0x6030000000160003: (0xFFFFFFFFFFFFFFFF, 0),  # VENDOR_HYP_BMAP_2, only while 0
    }),
)
#: the rules of released QEMU versions (what `matrix` tabulates when profiles name none)
RELEASED: tuple[QemuCpregRule, ...] = QEMU_CPREG_RULES[1:]


def rule_for(version: tuple[int, ...] | None) -> QemuCpregRule:
    """The rule of a QEMU version; the strict model when the version is unknown."""
    if version is None:
        return QEMU_CPREG_RULES[0]
    released = [r for r in RELEASED if r.since <= version]
    return released[-1] if released else RELEASED[0]


class StreamOutcome:
    """What a destination QEMU does with the stream-only registers of an incoming stream.

    :param failing: stream-only ids that fail the load
    :param dropped: stream-only ids QEMU drops (their value is lost)
    :param length_fails: the stream is longer than the destination's list
    """

    __slots__ = ("failing", "dropped", "length_fails")

    def __init__(self, failing: list[int], dropped: list[int], length_fails: bool) -> None:
        self.failing = failing
        self.dropped = dropped
        self.length_fails = length_fails


def stream_outcome(rule: QemuCpregRule, stream: list[int] | tuple[int, ...], dest_ids: set[int] | frozenset[int],
                   values: dict[int, int]) -> StreamOutcome:
    only = [r for r in stream if r not in dest_ids]
    top = max(dest_ids, default=0)
    failing, dropped = [], []
    for reg in only:
        listed = reg in rule.tolerated
        tol = rule.tolerated.get(reg)
        if listed and (tol is None or (reg in values and values[reg] & tol[0] == tol[1])):
            dropped.append(reg)
        elif rule.drops_tail and reg > top:
            dropped.append(reg)
        else:
            failing.append(reg)
    length_fails = rule.length_check and len(stream) > len(dest_ids)
    return StreamOutcome(failing, dropped, length_fails)
