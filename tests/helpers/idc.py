"""6.1's contract as it is on a CPU whose own CTR_EL0 has IDC set (Neoverse N1 and most
server cores): Linux 6.1 does not trap CTR_EL0, so its guest reads the CPU's register --
there the value ONE_REG reports, so the guest's view records nothing else for CTR_EL0. The
bundled 6.1 profile comes from QEMU's "max" CPU (IDC=0), whose guest reads 0x8444c004 and
cannot move to 7.2 (which gives its guests 0x9444c004); the hook's pin mechanics are tested
on a 6.1 contract that can."""
from __future__ import annotations

from abiguard.model import contract

CTR_EL0_ID = 0x603000000013D801


def on_idc_cpu(c: contract.Contract) -> contract.Contract:
    body = c.body
    guest = {k: v for k, v in body.guest.items() if k != CTR_EL0_ID}   # type: ignore[union-attr]
    return contract.seal(c.arch, c.machine_type, c.origin, body.replace(guest=guest))  # type: ignore[union-attr]
