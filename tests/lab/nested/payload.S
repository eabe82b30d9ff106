/* payload.S: tiny AArch64 guest for the nested lab (raw binary, position independent, MMU off,
 * entered at EL1 by QEMU's boot stub with -kernel). Forever: print one line on the PL011 at
 * 0x09000000:  NNNN r1 r2 ... r9 CR LF  where NNNN is the line counter (4 hex digits, kept in
 * x21, so a restored guest continues the count) and r1..r9 are the low 32 bits of x0 (8 hex
 * digits) after `hvc #0` with the SMCCC function ids of the table below; then busy-wait.
 * KVM answers all of them in the kernel (no exit to QEMU); -1 (ffffffff) = NOT_SUPPORTED. */
    .text
    .global _start
    .macro putc reg
    str \reg, [x20]
    .endm
_start:
    movz x20, #0x0900, lsl #16
    mov x21, #0
line:
    mov x24, x21
    mov x25, #4                 /* counter: 4 hex digits */
    lsl x24, x24, #48
    bl hexout
    adr x22, table
    mov w23, #((table_end - table) / 8)
call:
    mov w0, #' '
    putc w0
    ldr w0, [x22], #4
    ldr w1, [x22], #4
    mov x2, #0
    mov x3, #0
    hvc #0
    lsl x24, x0, #32
    mov x25, #8
    bl hexout
    subs w23, w23, #1
    b.ne call
    mov w0, #13
    putc w0
    mov w0, #10
    putc w0
    add x21, x21, #1
    movz x2, #DELAY_HI, lsl #16
spin:
    subs x2, x2, #1
    b.ne spin
    b line
/* print the top x25 nibbles of x24 */
hexout:
    lsr x0, x24, #60
    cmp w0, #10
    add w1, w0, #'0'
    add w2, w0, #('a' - 10)
    csel w0, w1, w2, lo
    putc w0
    lsl x24, x24, #4
    subs x25, x25, #1
    b.ne hexout
    ret
    .balign 8
table:  /* function id, x1 */
    .word 0x84000000, 0             /* PSCI_VERSION */
    .word 0x80000000, 0             /* SMCCC_VERSION */
    .word 0x80000001, 0x80008000    /* SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_1) */
    .word 0x80000001, 0xC5000020    /* SMCCC_ARCH_FEATURES(HV_PV_TIME_FEATURES): STD_HYP_BMAP */
    .word 0x84000050, 0             /* TRNG_VERSION: STD_BMAP */
    .word 0x8400000A, 0xC4000015    /* PSCI_FEATURES(SYSTEM_OFF2_64): PSCI >= 1.3 */
    .word 0x86000000, 0             /* KVM vendor hyp: features bitmap (VENDOR_HYP_BMAP) */
    .word 0xC6000040, 0             /* KVM DISCOVER_IMPL_VER (VENDOR_HYP_BMAP_2 bit 0) */
    .word 0x86000001, 0             /* KVM PTP (VENDOR_HYP_BMAP bit 1), x1=0: virtual counter */
table_end:
