/* guest.S -- the armfleet lab's nested KVM guest: what an arm64 VM sees, printed on its
 * serial console again and again.
 *
 * Raw binary, position independent, MMU off, entered at EL1 by QEMU's boot stub
 * (libvirt <os><kernel>), IRQs masked (PSTATE.DAIF as at reset). A heartbeat every second and,
 * at boot, every VIEW_EVERY heartbeats and on request, one line of everything it sees:
 *
 *   AFG-HB n=0004 now=1b2c3d
 *   AFG n=0004 boot=1a2b3c now=1b2c3d psci=10001 pf.smccc=0 ... midr=f0510 ... eol=1
 *
 * n counts heartbeats (kept in a callee-saved register, so a migrated guest continues the
 * count and a rebooted one restarts from 0); boot is CNTVCT_EL0 when this boot began (the
 * same across a migration, new after a reboot); values are hex without leading zeros; eol=1
 * ends a complete line. Every other key is one thing the guest
 * sees: hvc answers (low 32 bits of x0; ffffffff = NOT_SUPPORTED) and ID registers (64-bit)
 * read with MRS by their S3_<op1>_C0_C<m>_<op2> names. All registers read here are in the
 * ID space (op0=3, op1=0, CRn=0, CRm=0..7: unallocated encodings there are RAZ, so no read
 * can trap as UNDEFINED) or are always implemented (CTR_EL0, DCZID_EL0, CLIDR_EL1, CCSIDR_EL1,
 * AIDR_EL1, CNTFRQ_EL0).
 *
 * Between lines the guest sleeps in WFI until its virtual timer interrupt (PPI 27, through the
 * GICv3 that KVM emulates: distributor, redistributor and CPU interface are set up for that one
 * interrupt), so an idle guest costs the TCG host nothing. (Without a deliverable interrupt a
 * WFI never returns here: KVM stops trapping WFI when the vCPU thread runs alone, and the
 * hardware then waits for an interrupt the guest does not accept.) Every 100 ms of sleep it
 * polls the PL011 receive FIFO: 'R' = PSCI SYSTEM_RESET (libvirt's
 * on_reboot=restart then restarts it), 'O' = PSCI SYSTEM_OFF, 'P' = print a line now.
 * Build: aarch64-linux-gnu-gcc -nostdlib -c guest.S; objcopy -O binary (see guest.py).
 */
#ifndef VIEW_EVERY
#define VIEW_EVERY 30                   /* a full view line every 30 heartbeats (~30 s) */
#endif
#define UART            0x09000000      /* PL011 of QEMU's virt machine */
#define GICD            0x08000000      /* GICv3 distributor */
#define GICR_SGI        0x080B0000      /* CPU 0's redistributor (0x080A0000) + its SGI/PPI frame */
#define VTIMER_BIT      (1 << 27)       /* INTID 27: the virtual timer PPI */
#define UART_FR_RXFE    (1 << 4)

    .text
    .global _start
_start:
    adr x0, stack_top
    mov sp, x0
    movz x20, #(UART >> 16), lsl #16    /* x20: UART base */
    mov w0, #0x301                      /* UARTCR: UARTEN | TXE | RXE. QEMU >= 9.2 drops what */
    str w0, [x20, #0x30]                /* a disabled PL011 is given (its reset CR is 0x300) */
    mov x21, #0                         /* x21: line counter */
    mrs x22, cntvct_el0                 /* x22: counter value at this boot */
    msr cntv_ctl_el0, xzr
    adr x0, vectors
    msr vbar_el1, x0
    /* GICv3: the virtual timer PPI as a group-1 interrupt, enabled, priority 0 (reset) */
    movz x1, #(GICD >> 16), lsl #16
    mov w0, #0x13                       /* GICD_CTLR: ARE | EnableGrp1 | EnableGrp0 */
    str w0, [x1]
    movz x1, #(GICR_SGI >> 16), lsl #16
    mov w0, #VTIMER_BIT
    str w0, [x1, #0x80]                 /* GICR_IGROUPR0 */
    str w0, [x1, #0x100]                /* GICR_ISENABLER0 */
    sub x1, x1, #0x10000
    str wzr, [x1, #0x14]                /* GICR_WAKER: ProcessorSleep = 0 */
    mov x0, #0xff
    msr S3_0_C4_C6_0, x0                /* ICC_PMR_EL1: every priority */
    mov x0, #1
    msr S3_0_C12_C12_7, x0              /* ICC_IGRPEN1_EL1 */
    isb
    adr x0, s_banner
    bl puts
    mov x0, x22
    bl hex64
    bl crlf

view:                                   /* one full line of what the guest sees */
    mov x28, #0
    adr x0, s_head
    bl puts
    mov x0, x21
    mov x1, #16                         /* 4 hex digits */
    bl hexn
    adr x0, k_boot
    mov x1, x22
    bl kv64
    mrs x1, cntvct_el0
    adr x0, k_now
    bl kv64

    /* hypercalls: a table of (key, function id, x1) */
    adr x23, calls
call_next:
    ldr w0, [x23]                       /* offset of the key string from the table start */
    cbz w0, calls_done
    adr x24, calls
    add x0, x24, x0
    bl puts_key
    ldr w0, [x23, #4]
    ldr w1, [x23, #8]
    mov x2, #0
    mov x3, #0
    hvc #0
    mov x1, x0
    bl hex32v
    add x23, x23, #12
    b call_next
calls_done:
    /* KVM vendor hypervisor features: x0..x3 (bitmap words) */
    movz w0, #0x8600, lsl #16
    mov x1, #0
    mov x2, #0
    mov x3, #0
    hvc #0
    mov x25, x1
    mov x26, x2
    mov x27, x3
    mov x1, x0
    adr x0, k_kvmf0
    bl kv32
    adr x0, k_kvmf1
    mov x1, x25
    bl kv32
    adr x0, k_kvmf2
    mov x1, x26
    bl kv32
    adr x0, k_kvmf3
    mov x1, x27
    bl kv32
    /* KVM PTP (virtual counter): the answer is a time stamp, so print only whether it worked */
    movz w0, #0x8600, lsl #16
    movk w0, #0x0001
    mov x1, #0
    hvc #0
    mov w1, #0xffffffff
    cmp w0, w1
    cset x1, ne
    adr x0, k_ptp
    bl kv32
    /* errata discovery (DISCOVER_IMPL_VER / _CPUS, which the VMM answers: abiguard_pin.so):
     * how many implementation CPUs the guest is told (all ones: the call failed) and the
     * MIDR of the first three (a failed call prints its x0: ...fd INVALID_PARAMETER past the
     * last CPU, ...ff NOT_SUPPORTED where nobody answers) */
    movz w0, #0xC600, lsl #16
    movk w0, #0x0040
    mov x1, #0
    mov x2, #0
    mov x3, #0
    hvc #0
    cmp x0, #0
    csinv x1, x2, xzr, eq
    adr x0, k_impl_n
    bl kv64
    .macro implcpu key, idx
    movz w0, #0xC600, lsl #16
    movk w0, #0x0041
    mov x1, #\idx
    mov x2, #0
    mov x3, #0
    hvc #0
    cmp x0, #0
    csel x1, x1, x0, eq
    adr x0, \key
    bl kv64
    .endm
    implcpu k_impl0, 0
    implcpu k_impl1, 1
    implcpu k_impl2, 2

    /* ID registers and friends */
    .macro idreg key, reg
    adr x0, \key
    mrs x1, \reg
    bl kv64
    .endm
    idreg k_midr,   S3_0_C0_C0_0
    idreg k_revidr, S3_0_C0_C0_6
    idreg k_aidr,   S3_1_C0_C0_7
    idreg k_pfr0,   S3_0_C0_C4_0
    idreg k_pfr1,   S3_0_C0_C4_1
    idreg k_pfr2,   S3_0_C0_C4_2
    idreg k_zfr0,   S3_0_C0_C4_4
    idreg k_smfr0,  S3_0_C0_C4_5
    idreg k_dfr0,   S3_0_C0_C5_0
    idreg k_dfr1,   S3_0_C0_C5_1
    idreg k_afr0,   S3_0_C0_C5_4
    idreg k_isar0,  S3_0_C0_C6_0
    idreg k_isar1,  S3_0_C0_C6_1
    idreg k_isar2,  S3_0_C0_C6_2
    idreg k_isar3,  S3_0_C0_C6_3
    idreg k_mmfr0,  S3_0_C0_C7_0
    idreg k_mmfr1,  S3_0_C0_C7_1
    idreg k_mmfr2,  S3_0_C0_C7_2
    idreg k_mmfr3,  S3_0_C0_C7_3
    idreg k_mmfr4,  S3_0_C0_C7_4
    idreg k_ctr,    S3_3_C0_C0_1
    idreg k_dczid,  S3_3_C0_C0_7
    idreg k_clidr,  S3_1_C0_C0_1
    idreg k_cntfrq, cntfrq_el0
    /* cache geometry: CSSELR_EL1 = level/type, then CCSIDR_EL1 */
    .macro ccsidr key, sel
    mov x0, #\sel
    msr S3_2_C0_C0_0, x0
    isb
    adr x0, \key
    mrs x1, S3_1_C0_C0_0
    bl kv64
    .endm
    ccsidr k_ccs_l1d, 0
    ccsidr k_ccs_l1i, 1
    ccsidr k_ccs_l2, 2
    adr x0, s_eol                       /* " eol=1": the line was printed completely */
    bl puts
    bl crlf

loop:                                   /* sleep 1 s (polling the UART), heartbeat, repeat */
    mov x24, #10
nap:
    ldr w0, [x20, #0x18]                /* UARTFR */
    tst w0, #UART_FR_RXFE
    b.ne nap_sleep
    ldr w0, [x20]                       /* UARTDR */
    and w0, w0, #0xff
    cmp w0, #'R'
    b.eq do_reset
    cmp w0, #'O'
    b.eq do_off
    cmp w0, #'P'
    b.eq view
nap_sleep:                              /* (any other byte: dropped, then sleep as usual) */
    mrs x0, cntfrq_el0
    mov x1, #10
    udiv x0, x0, x1                     /* ticks per 100 ms */
    mrs x1, cntvct_el0
    add x1, x1, x0
    msr cntv_cval_el0, x1
1:  mov x0, #1                          /* ENABLE=1, IMASK=0 (the IRQ handler clears it) */
    msr cntv_ctl_el0, x0
    isb
    msr daifclr, #2                     /* IRQs on only around the WFI */
    wfi
    msr daifset, #2
    mrs x0, cntvct_el0
    cmp x0, x1
    b.lo 1b
    msr cntv_ctl_el0, xzr
    isb
    subs x24, x24, #1
    b.ne nap
    /* heartbeat: "AFG-HB n=XXXX now=...": cheap (one full line costs ~1000 MMIO exits) */
    add x21, x21, #1
    add x28, x28, #1
    adr x0, s_hb
    bl puts
    mov x0, x21
    mov x1, #16
    bl hexn
    mrs x1, cntvct_el0
    adr x0, k_now
    bl kv64
    bl crlf
    cmp x28, #VIEW_EVERY
    b.hs view
    b loop

do_reset:
    adr x0, s_reset
    bl puts
    movz w0, #0x8400, lsl #16
    movk w0, #0x0009                    /* PSCI SYSTEM_RESET */
    hvc #0
    b .
do_off:
    adr x0, s_off
    bl puts
    movz w0, #0x8400, lsl #16
    movk w0, #0x0008                    /* PSCI SYSTEM_OFF */
    hvc #0
    b .

/* ---- exceptions: the timer IRQ; anything else is reported once, then the vCPU idles */
    .balign 2048
vectors:
    .rept 5
    b bad_exception
    .balign 128
    .endr
    b irq                               /* +0x280: IRQ, current EL with SP_ELx */
    .balign 128
    .rept 10
    b bad_exception
    .balign 128
    .endr
irq:
    stp x0, x1, [sp, #-16]!
    mrs x0, S3_0_C12_C12_0              /* ICC_IAR1_EL1: acknowledge */
    msr cntv_ctl_el0, xzr               /* timer off: its level drops */
    isb
    msr S3_0_C12_C12_1, x0              /* ICC_EOIR1_EL1: priority drop + deactivate */
    isb
    ldp x0, x1, [sp], #16
    eret
bad_exception:
    adr x0, s_exc
    bl puts
    mrs x0, esr_el1
    bl hex64
    adr x0, s_elr
    bl puts
    mrs x0, elr_el1
    bl hex64
    bl crlf
1:  wfi
    b 1b

/* ---- output helpers (clobber x0-x7, keep x19-x28) ---- */
putc:                                   /* w0 */
    str w0, [x20]                       /* plain store, no writeback: KVM gets a valid ISV */
    ret
puts:                                   /* x0: NUL-terminated string */
    mov x6, x0
    mov x7, x30
2:  ldrb w0, [x6], #1
    cbz w0, 3f
    bl putc
    b 2b
3:  mov x30, x7
    ret
puts_key:                               /* " key=" */
    mov x5, x30
    mov x4, x0
    mov w0, #' '
    bl putc
    mov x0, x4
    bl puts
    mov w0, #'='
    bl putc
    mov x30, x5
    ret
hexv:                                   /* x0 value: hex digits without leading zeros */
    mov x6, x0
    mov x5, #64
    mov x7, x30
5:  sub x5, x5, #4
    lsr x0, x6, x5
    cbnz x0, 6f
    cbnz x5, 5b
6:  add x5, x5, #4
    b hexn_loop
hexn:                                   /* x0 value, x1 = number of bits (multiple of 4) */
    mov x6, x0
    mov x5, x1
    mov x7, x30
hexn_loop:
4:  sub x5, x5, #4
    lsr x0, x6, x5
    and w0, w0, #0xf
    cmp w0, #10
    add w1, w0, #'0'
    add w2, w0, #('a' - 10)
    csel w0, w1, w2, lo
    bl putc
    cbnz x5, 4b
    mov x30, x7
    ret
hex64:
    mov x1, #64
    b hexn
hex32v:                                 /* x1: value, 32 bits, no leading zeros */
    mov w0, w1
    b hexv
kv64:                                   /* x0 key, x1 value */
    stp x30, x1, [sp, #-16]!
    bl puts_key
    ldr x0, [sp, #8]
    bl hexv
    ldp x30, x1, [sp], #16
    ret
kv32:
    stp x30, x1, [sp, #-16]!
    bl puts_key
    ldr x1, [sp, #8]
    bl hex32v
    ldp x30, x1, [sp], #16
    ret
crlf:
    mov x7, x30
    mov w0, #13
    bl putc
    mov w0, #10
    bl putc
    mov x30, x7
    ret

/* ---- data ---- */
    .balign 4
calls:  /* key offset, function id, x1 */
    .macro hcall key, fn, arg
    .word \key - calls, \fn, \arg
    .endm
    hcall k_psci,      0x84000000, 0            /* PSCI_VERSION */
    hcall k_pf_smccc,  0x8400000A, 0x80000000   /* PSCI_FEATURES(SMCCC_VERSION) */
    hcall k_pf_susp,   0x8400000A, 0xC4000001   /* PSCI_FEATURES(CPU_SUSPEND64) */
    hcall k_pf_off,    0x8400000A, 0x84000002   /* CPU_OFF */
    hcall k_pf_on,     0x8400000A, 0xC4000003   /* CPU_ON64 */
    hcall k_pf_aff,    0x8400000A, 0xC4000004   /* AFFINITY_INFO64 */
    hcall k_pf_mit,    0x8400000A, 0x84000006   /* MIGRATE_INFO_TYPE */
    hcall k_pf_soff,   0x8400000A, 0x84000008   /* SYSTEM_OFF */
    hcall k_pf_srst,   0x8400000A, 0x84000009   /* SYSTEM_RESET */
    hcall k_pf_feat,   0x8400000A, 0x8400000A   /* PSCI_FEATURES */
    hcall k_pf_ssusp,  0x8400000A, 0xC400000E   /* SYSTEM_SUSPEND64 (PSCI 1.0, KVM_CAP_ARM_SYSTEM_SUSPEND) */
    hcall k_pf_srst2,  0x8400000A, 0xC4000012   /* SYSTEM_RESET2_64 (PSCI 1.1) */
    hcall k_pf_soff2,  0x8400000A, 0xC4000015   /* SYSTEM_OFF2_64 (PSCI 1.3) */
    hcall k_smccc,     0x80000000, 0            /* SMCCC_VERSION */
    hcall k_wa1,       0x80000001, 0x80008000   /* SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_1) */
    hcall k_wa2,       0x80000001, 0x80007FFF   /* ARCH_WORKAROUND_2 */
    hcall k_wa3,       0x80000001, 0x80003FFF   /* ARCH_WORKAROUND_3 */
    hcall k_socid,     0x80000001, 0x80000002   /* SMCCC_ARCH_SOC_ID */
    hcall k_af_pvt,    0x80000001, 0xC5000020   /* ARCH_FEATURES(HV_PV_TIME_FEATURES): STD_HYP_BMAP */
    hcall k_pvt_st,    0xC5000020, 0xC5000021   /* HV_PV_TIME_FEATURES(HV_PV_TIME_ST) */
    hcall k_trng,      0x84000050, 0            /* TRNG_VERSION: STD_BMAP */
    hcall k_trng_rnd,  0x84000051, 0xC4000053   /* TRNG_FEATURES(TRNG_RND64) */
    hcall k_kvm_uid0,  0x8600FF01, 0            /* VENDOR_HYP_CALL_UID (w0 of the UID) */
    hcall k_impl_ver,  0xC6000040, 0            /* KVM DISCOVER_IMPL_VER (VENDOR_HYP_BMAP_2 bit 0) */
    .word 0, 0, 0

s_banner:   .asciz "\r\nAFG-BOOT boot="
s_head:     .asciz "AFG n="
s_hb:       .asciz "AFG-HB n="
s_eol:      .asciz " eol=1"
s_reset:    .asciz "\r\nAFG-RESET\r\n"
s_off:      .asciz "\r\nAFG-OFF\r\n"
s_exc:      .asciz "\r\nAFG-EXCEPTION esr="
s_elr:      .asciz " elr="
k_boot:     .asciz "boot"
k_now:      .asciz "now"
k_psci:     .asciz "psci"
k_pf_smccc: .asciz "pf.smccc"
k_pf_susp:  .asciz "pf.cpu_suspend"
k_pf_off:   .asciz "pf.cpu_off"
k_pf_on:    .asciz "pf.cpu_on"
k_pf_aff:   .asciz "pf.affinity_info"
k_pf_mit:   .asciz "pf.migrate_info_type"
k_pf_soff:  .asciz "pf.system_off"
k_pf_srst:  .asciz "pf.system_reset"
k_pf_feat:  .asciz "pf.psci_features"
k_pf_ssusp: .asciz "pf.system_suspend"
k_pf_srst2: .asciz "pf.system_reset2"
k_pf_soff2: .asciz "pf.system_off2"
k_smccc:    .asciz "smccc"
k_wa1:      .asciz "wa1"
k_wa2:      .asciz "wa2"
k_wa3:      .asciz "wa3"
k_socid:    .asciz "af.soc_id"
k_af_pvt:   .asciz "af.pv_time"
k_pvt_st:   .asciz "pvtime.st"
k_trng:     .asciz "trng"
k_trng_rnd: .asciz "trng.rnd64"
k_kvm_uid0: .asciz "kvm.uid0"
k_impl_ver: .asciz "kvm.impl_ver"
k_impl_n:   .asciz "kvm.impl_n"
k_impl0:    .asciz "kvm.impl0.midr"
k_impl1:    .asciz "kvm.impl1.midr"
k_impl2:    .asciz "kvm.impl2.midr"
k_kvmf0:    .asciz "kvm.feat0"
k_kvmf1:    .asciz "kvm.feat1"
k_kvmf2:    .asciz "kvm.feat2"
k_kvmf3:    .asciz "kvm.feat3"
k_ptp:      .asciz "kvm.ptp"
k_midr:     .asciz "midr"
k_revidr:   .asciz "revidr"
k_aidr:     .asciz "aidr"
k_pfr0:     .asciz "pfr0"
k_pfr1:     .asciz "pfr1"
k_pfr2:     .asciz "pfr2"
k_zfr0:     .asciz "zfr0"
k_smfr0:    .asciz "smfr0"
k_dfr0:     .asciz "dfr0"
k_dfr1:     .asciz "dfr1"
k_afr0:     .asciz "afr0"
k_isar0:    .asciz "isar0"
k_isar1:    .asciz "isar1"
k_isar2:    .asciz "isar2"
k_isar3:    .asciz "isar3"
k_mmfr0:    .asciz "mmfr0"
k_mmfr1:    .asciz "mmfr1"
k_mmfr2:    .asciz "mmfr2"
k_mmfr3:    .asciz "mmfr3"
k_mmfr4:    .asciz "mmfr4"
k_ctr:      .asciz "ctr"
k_dczid:    .asciz "dczid"
k_clidr:    .asciz "clidr"
k_cntfrq:   .asciz "cntfrq"
k_ccs_l1d:  .asciz "ccsidr.l1d"
k_ccs_l1i:  .asciz "ccsidr.l1i"
k_ccs_l2:   .asciz "ccsidr.l2"
    .balign 16
    .skip 1024                          /* stack (grows down from stack_top) */
stack_top:
