"""CPU models by MIDR_EL1, for the texts that tell hosts apart (``fleet matrix``): one row
per (implementer, part number) as Linux's ``arch/arm64/include/asm/cputype.h`` and QEMU's
``target/arm/cpu64.c`` define them."""
from __future__ import annotations

#: (implementer, part number) -> model name
MODELS = {
    (0x41, 0xD03): "cortex-a53",
    (0x41, 0xD07): "cortex-a57",
    (0x41, 0xD08): "cortex-a72",
    (0x41, 0xD0B): "cortex-a76",
    (0x41, 0xD0C): "neoverse-n1",
    (0x41, 0xD40): "neoverse-v1",
    (0x41, 0xD49): "neoverse-n2",
    (0x41, 0xD4F): "neoverse-v2",
    (0x00, 0x051): "qemu max",      # QEMU's -cpu max/host under TCG (aarch64_max_initfn)
}


def name(midr: int) -> str:
    """``cortex-a72 (MIDR 0x410fd083)``, or the MIDR alone for a model not in the table."""
    model = MODELS.get(((midr >> 24) & 0xFF, (midr >> 4) & 0xFFF))
    return f"{model} (MIDR {midr:#x})" if model else f"MIDR {midr:#x}"
