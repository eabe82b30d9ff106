"""The few A64 instructions the probe's guest is made of, encoded by hand (the probe is
stdlib only and runs where no assembler is). Encodings from the Arm ARM (C6.2, "A64 base
instructions"); tests/test_guest_view.py holds each one against GNU as."""
from __future__ import annotations


def sysreg_fields(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """op0 (2 or 3: bit 19 holds op0 - 2, bit 20 is fixed), op1, CRn, CRm, op2 of MRS/MSR."""
    return (op0 - 2) << 19 | op1 << 16 | crn << 12 | crm << 8 | op2 << 5


def mrs(rt: int, enc: tuple[int, int, int, int, int]) -> int:
    """MRS Xt, S<op0>_<op1>_C<n>_C<m>_<op2>"""
    return 0xD5300000 | sysreg_fields(*enc) | rt


def msr(enc: tuple[int, int, int, int, int], rt: int) -> int:
    """MSR S<op0>_<op1>_C<n>_C<m>_<op2>, Xt"""
    return 0xD5100000 | sysreg_fields(*enc) | rt


def str_x(rt: int, rn: int, offset: int) -> int:
    """STR Xt, [Xn, #offset]: unsigned offset, no writeback, so the data abort carries a
    valid syndrome (ISV) and KVM can hand the store to userspace as an MMIO exit"""
    if offset % 8 or not 0 <= offset < 8 * 4096:
        raise ValueError(f"STR offset {offset} is not a multiple of 8 below 32768")
    return 0xF9000000 | (offset // 8) << 10 | rn << 5 | rt


def movz(rd: int, imm16: int, shift: int = 0) -> int:
    """MOVZ Xd, #imm16, LSL #shift"""
    return 0xD2800000 | (shift // 16) << 21 | (imm16 & 0xFFFF) << 5 | rd


def movk(rd: int, imm16: int, shift: int = 0) -> int:
    """MOVK Xd, #imm16, LSL #shift"""
    return 0xF2800000 | (shift // 16) << 21 | (imm16 & 0xFFFF) << 5 | rd


def mov_imm(rd: int, value: int) -> list[int]:
    """Xd = value (64 bits): MOVZ for the lowest 16 bits, MOVK for every non-zero chunk above"""
    out = [movz(rd, value & 0xFFFF)]
    out += [movk(rd, (value >> s) & 0xFFFF, s) for s in (16, 32, 48) if (value >> s) & 0xFFFF]
    return out


def add_imm(rd: int, rn: int, imm12: int) -> int:
    """ADD Xd, Xn, #imm12"""
    return 0x91000000 | (imm12 & 0xFFF) << 10 | rn << 5 | rd


def branch(offset: int) -> int:
    """B <label>: ``offset`` bytes from this instruction"""
    return 0x14000000 | (offset // 4) & 0x3FFFFFF


HVC0 = 0xD4000002          # HVC #0
ISB = 0xD5033FDF
ERET = 0xD69F03E0
