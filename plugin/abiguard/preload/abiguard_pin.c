/*
 * abiguard_pin.c -- pin arm64 KVM firmware pseudo-registers and ID registers inside QEMU.
 *
 * Loaded into qemu-system-aarch64 with LD_PRELOAD (libvirt: <qemu:env name='LD_PRELOAD'>).
 * Configuration: ABIGUARD_PINS="ID=VALUE,ID=VALUE,..." (ids and values in hex, 0x-prefixed).
 *
 *   - ABIGUARD_PINS unset: the library does nothing at all (every ioctl is passed through).
 *   - At load, the list is parsed strictly. Only ids on the allow-list below are accepted:
 *       firmware pseudo-registers  0x603000000014000X  (KVM_REG_ARM_FW: PSCI_VERSION, ...)
 *       hypercall bitmaps          0x603000000016000X  (KVM_REG_ARM_FW_FEAT_BMAP)
 *       feature ID registers       op0=3, op1=0, CRn=0, CRm=1..7 (KVM_REG_ARM64_SYSREG)
 *       implementation registers   MIDR_EL1, REVIDR_EL1, AIDR_EL1
 *       the cache description      CLIDR_EL1, CTR_EL0, CCSIDR (0x60200000001100XX, XX < 14)
 *     and, after the registers, up to 16 items "cpu=0xMIDR/0xREVIDR/0xAIDR": the CPUs the
 *     guest may run on, answered to its errata discovery (see below), and up to 64 items
 *     "hide=0xID": registers left out of the guest vCPUs' KVM_GET_REG_LIST (see below).
 *   - The cache description (Linux >= 6.3; CTR_EL0 >= 6.11): KVM takes CLIDR and CCSIDR per
 *     vCPU and CTR_EL0 per VM before the first run. The pins are written in id order, so the
 *     CCSIDRs (demux ids, 0x6020...) and CLIDR_EL1 come before CTR_EL0; set_clidr checks the
 *     IDC a CLIDR implies against the host's sanitised CTR_EL0, not the VM's.
 *   - A value the guest reads apart from its stream: "0xID=0xG/0xS" (CTR_EL0 only). KVM holds G,
 *     what the guest reads (the CPU's own CTR_EL0 on the contract's hosts before Linux 6.3,
 *     whose KVM does not trap the read), while QEMU reads S with KVM_GET_ONE_REG and the
 *     library turns its KVM_SET_ONE_REG of S into G: QEMU's stream carries S, the value an
 *     older kernel's KVM insists on at restore, and every host shows the guest G.
 *   - The register stream: QEMU builds the list of registers it migrates from
 *     KVM_GET_REG_LIST, right after KVM_ARM_VCPU_INIT (so after the pins, which already make
 *     KVM drop registers whose feature a pinned ID field hides). On a guest vCPU the library
 *     removes the hide= ids from the answer, so a VM started on a newer kernel carries the
 *     register list of its contract's (older) hosts; KVM keeps those registers at their
 *     defaults, which abiguard only allows where the guest cannot see them.
 *     Anything malformed, duplicated or not allowed: one line "abiguard-pin: ..." on stderr
 *     and _exit(1), so QEMU never starts half-pinned.
 *   - Implementation registers: KVM takes another MIDR/REVIDR/AIDR only on a VM with
 *     KVM_CAP_ARM_WRITABLE_IMP_ID_REGS enabled (Linux 6.15), which must happen before the
 *     VM's first vCPU exists; QEMU never enables it. When one is pinned, the library enables
 *     the capability on the VM fd just before each KVM_CREATE_VCPU of vCPU id 0 (QEMU's
 *     scratch VMs get it too, harmlessly). A host without it: one line naming the
 *     capability, _exit(1).
 *   - Errata discovery (Linux 6.16 guests, Documentation/virt/kvm/arm/hypercalls.rst): with
 *     cpu= items the library requires VENDOR_HYP_BMAP_2 pinned with DISCOVER_IMPL_VER and
 *     _CPUS (bits 0, 1), forwards the two calls (0xC6000040, 0xC6000041) to userspace with
 *     the VM's SMCCC filter (KVM_ARM_VM_SMCCC_FILTER, set with the capability), maps each
 *     guest vCPU's kvm_run page, and answers a KVM_EXIT_HYPERCALL for them inside the
 *     wrapped KVM_RUN (x0..x3 by KVM_SET_ONE_REG, PC is already past the HVC) before running
 *     the vCPU again: QEMU never sees the exit. Every host answers from the same list, so
 *     the guest applies the workarounds of every CPU it may run on.
 *   - ioctl() is wrapped (dlsym(RTLD_NEXT)). After a successful KVM_ARM_VCPU_INIT whose
 *     feature word requests KVM_ARM_VCPU_PSCI_0_2 (QEMU's real vCPUs do, its scratch vCPUs
 *     that probe the host CPU do not), every configured register is written with
 *     KVM_SET_ONE_REG on that vCPU fd, before the vCPU ever runs. QEMU reads the registers
 *     back into its cpreg list right after, so it migrates them; it calls VCPU_INIT again
 *     on every reset, and the pins are written again. A refused write prints the register,
 *     value and errno and calls _exit(1) (the message lands in the libvirt domain log), except
 *     EBUSY: KVM refuses to change an ID or bitmap register once the guest has run (at a reset
 *     after an incoming migration, the value came with the stream and the hook checked it),
 *     so the guest keeps the value it had; that is logged, and the VM keeps running.
 *
 * The record: so that abiguard can tell pins that took effect from a library that never
 * loaded (AppArmor denied it, the file is missing or unreadable), the library writes what
 * it did to $HOME/abiguard-pin.record -- libvirt starts QEMU with HOME set to the domain's
 * private directory (/var/lib/libvirt/qemu/domain-ID-NAME), the one place its AppArmor
 * profile lets QEMU create a file -- one line at load ("abiguard-pin 1 pid P loaded N: LIST")
 * and one per vCPU init ("vcpu fd F pinned K kept E of N"). The qemu hook's "started"
 * operation, which libvirt runs once QEMU is up (for an incoming migration before any RAM
 * arrives) and whose failure stops the start, refuses a pinned VM whose record is missing
 * or does not say every pin was written. No record can be written: one line on stderr, and
 * the hook refuses.
 *
 * Nothing else is touched: no other ioctl, no heap allocation, no threads (the vCPU table
 * is claimed with an atomic counter: QEMU initialises vCPUs on their own threads); one file
 * and, with cpu= items, one mapped kvm_run page per guest vCPU.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define KVM_ARM_VCPU_INIT     0x4020AEAEUL   /* _IOW(KVMIO, 0xae, struct kvm_vcpu_init) */
#define KVM_SET_ONE_REG       0x4010AEACUL   /* _IOW(KVMIO, 0xac, struct kvm_one_reg) */
#define KVM_GET_ONE_REG       0x4010AEABUL   /* _IOW(KVMIO, 0xab, struct kvm_one_reg) */
#define KVM_CREATE_VCPU       0x0000AE41UL   /* _IO(KVMIO, 0x41), arg: the vCPU id */
#define KVM_RUN               0x0000AE80UL   /* _IO(KVMIO, 0x80) */
#define KVM_CHECK_EXTENSION   0x0000AE03UL   /* _IO(KVMIO, 0x03) */
#define KVM_ENABLE_CAP        0x4068AEA3UL   /* _IOW(KVMIO, 0xa3, struct kvm_enable_cap) */
#define KVM_SET_DEVICE_ATTR   0x4018AEE1UL   /* _IOW(KVMIO, 0xe1, struct kvm_device_attr) */
#define KVM_GET_REG_LIST      0xC008AEB0UL   /* _IOWR(KVMIO, 0xb0, struct kvm_reg_list) */
#define KVM_ARM_VCPU_PSCI_0_2 2
#define KVM_CAP_ARM_WRITABLE_IMP_ID_REGS 239
#define KVM_EXIT_HYPERCALL    3
#define KVM_SMCCC_FILTER_FWD_TO_USER 2
#define DISCOVER_IMPL_VER     0xC6000040U    /* ARM_SMCCC_VENDOR_HYP_KVM_DISCOVER_IMPL_VER_FUNC_ID */
#define DISCOVER_IMPL_CPUS    0xC6000041U    /* ..._DISCOVER_IMPL_CPUS_FUNC_ID */
#define VENDOR_HYP_BMAP_2     0x6030000000160003ULL
#define DISCOVER_BITS         0x3ULL         /* KVM_REG_ARM_VENDOR_HYP_BIT_DISCOVER_IMPL_VER | _CPUS */
#define CORE_X0               0x6030000000100000ULL   /* KVM_REG_ARM_CORE_REG(regs.regs[0]); x<n> = +2n */
#define MIDR_EL1_ID           0x603000000013c000ULL   /* op0=3 op1=0 CRn=0 CRm=0 op2=0 */
#define REVIDR_EL1_ID         0x603000000013c006ULL   /* op2=6 */
#define AIDR_EL1_ID           0x603000000013c807ULL   /* op1=1 op2=7 */
#define CLIDR_EL1_ID          0x603000000013c801ULL   /* op0=3 op1=1 CRn=0 CRm=0 op2=1 */
#define CTR_EL0_ID            0x603000000013d801ULL   /* op0=3 op1=3 CRn=0 CRm=0 op2=1 */
#define CCSIDR_DEMUX_ID       0x6020000000110000ULL   /* KVM_REG_ARM_DEMUX_ID_CCSIDR | U32, + CSSELR */
#define CSSELR_MAX            14
#define MAX_HIDES             64
#define MAX_REG_LIST          2048   /* KVM lists ~360 registers on Linux 7.x */
#define SMCCC_SUCCESS         0ULL
#define SMCCC_INVALID_PARAMETER ((uint64_t)-3)
#define MAX_PINS              64
#define MAX_CPUS              16
#define MAX_VCPUS             512
#define ENV_NAME              "ABIGUARD_PINS"

struct kvm_vcpu_init_abi { uint32_t target; uint32_t features[7]; };
struct kvm_one_reg_abi { uint64_t id; uint64_t addr; };
struct kvm_enable_cap_abi { uint32_t cap; uint32_t flags; uint64_t args[4]; uint8_t pad[64]; };
struct kvm_device_attr_abi { uint32_t flags; uint32_t group; uint64_t attr; uint64_t addr; };
struct kvm_smccc_filter_abi { uint32_t base; uint32_t nr_functions; uint8_t action; uint8_t pad[15]; };
/* the start of struct kvm_run (include/uapi/linux/kvm.h): exit_reason at 8, the exit union
 * at 32, whose hypercall member starts with nr (the SMCCC function id on arm64) */
struct kvm_run_head_abi { uint8_t request_interrupt_window, immediate_exit, padding1[6];
                          uint32_t exit_reason; uint8_t ready, if_flag; uint16_t flags;
                          uint64_t cr8, apic_base; uint64_t hypercall_nr; };

/* stream: what QEMU reads and writes for this register instead of value (has_stream) */
static struct { uint64_t id, value, stream; int has_stream; } pins[MAX_PINS];
static int npins;
static struct { uint64_t midr, revidr, aidr; } cpus[MAX_CPUS];
static int ncpus;
static int want_imp_writable;   /* an implementation register is pinned */
static uint64_t hides[MAX_HIDES];
static int nhides;
/* guest vCPU fds (a bit per fd below 65536): the ones whose register list is shaped */
static unsigned char guest_fd[65536 / 8];
/* guest vCPUs whose hypercall exits the library answers (only with cpu= items) */
static struct { int fd; int answered; struct kvm_run_head_abi *run; } vcpus[MAX_VCPUS];
static int nvcpus;
static int (*real_ioctl)(int, unsigned long, ...);
static int record_fd = -1;

#define RECORD_NAME "abiguard-pin.record"

/* one whole line, appended (O_APPEND): the hook reads complete lines only */
static void record(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void record(const char *fmt, ...)
{
    char buf[4600];
    va_list ap;
    int n;
    if (record_fd < 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    (void)!write(record_fd, buf, n);
}

static void open_record(const char *list)
{
    char path[4096], line[300];
    const char *home = getenv("HOME");
    int n;
    if (!home || home[0] != '/' || strlen(home) > sizeof path - sizeof RECORD_NAME - 2)
        return;
    snprintf(path, sizeof path, "%s/%s", home, RECORD_NAME);
    record_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (record_fd < 0) {
        n = snprintf(line, sizeof line, "abiguard-pin: cannot write %s: errno %d (%s); abiguard's started "
                     "hook refuses a VM whose pins it cannot see\n", path, errno, strerror(errno));
        (void)!write(2, line, n > (int)sizeof line - 1 ? (int)sizeof line - 1 : n);
        return;
    }
    record("abiguard-pin 1 pid %ld loaded %d: %s", (long)getpid(), npins, list);
}

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n = snprintf(buf, sizeof buf, "abiguard-pin: ");
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    (void)!write(2, buf, n);
    _exit(1);
}

/* The allow-list: see the header comment. 0x6030 = KVM_REG_ARM64 | KVM_REG_SIZE_U64. */
static int allowed(uint64_t id)
{
    if ((id & ~0xFULL) == 0x6030000000140000ULL || (id & ~0xFULL) == 0x6030000000160000ULL)
        return 1;
    if ((id & ~0xFFFFULL) == 0x6030000000130000ULL) {
        unsigned op0 = (id >> 14) & 3, op1 = (id >> 11) & 7, crn = (id >> 7) & 15,
                 crm = (id >> 3) & 15;
        if (id == MIDR_EL1_ID || id == REVIDR_EL1_ID || id == AIDR_EL1_ID || id == CLIDR_EL1_ID || id == CTR_EL0_ID)
            return 1;
        return op0 == 3 && op1 == 0 && crn == 0 && crm >= 1 && crm <= 7;
    }
    if (id >= CCSIDR_DEMUX_ID && id < CCSIDR_DEMUX_ID + CSSELR_MAX)
        return 1;
    return 0;
}

static int is_imp_id(uint64_t id)
{
    return id == MIDR_EL1_ID || id == REVIDR_EL1_ID || id == AIDR_EL1_ID;
}

/* "0x" then 1..16 hex digits, nothing else; *end gets the first character after it */
static int parse_hex(const char *s, const char **end, uint64_t *out)
{
    uint64_t v = 0;
    int digits = 0;
    if (s[0] != '0' || (s[1] != 'x' && s[1] != 'X'))
        return -1;
    for (s += 2; ; s++, digits++) {
        unsigned d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (*s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else break;
        if (digits == 16)
            return -1;
        v = v << 4 | d;
    }
    if (!digits)
        return -1;
    *end = s;
    *out = v;
    return 0;
}

/* "cpu=0xMIDR/0xREVIDR/0xAIDR" at p; *end gets the character after it */
static void parse_cpu(const char *s, const char *p, const char **end)
{
    uint64_t v[3];
    int k, i, at = (int)(p - s);
    const char *e = p + 4;
    for (k = 0; k < 3; k++) {
        if (parse_hex(e, &e, &v[k]) || (k < 2 ? *e != '/' : (*e != ',' && *e != '\0')))
            die(ENV_NAME " at character %d: expected cpu=0xMIDR/0xREVIDR/0xAIDR: '%.60s'", at, p);
        if (k < 2)
            e++;
    }
    for (i = 0; i < ncpus; i++)
        if (cpus[i].midr == v[0] && cpus[i].revidr == v[1] && cpus[i].aidr == v[2])
            die(ENV_NAME ": cpu 0x%llx/0x%llx/0x%llx is given twice", (unsigned long long)v[0],
                (unsigned long long)v[1], (unsigned long long)v[2]);
    if (ncpus == MAX_CPUS)
        die(ENV_NAME ": more than %d cpu= items", MAX_CPUS);
    cpus[ncpus].midr = v[0];
    cpus[ncpus].revidr = v[1];
    cpus[ncpus].aidr = v[2];
    ncpus++;
    *end = e;
}

static void parse(const char *s)
{
    const char *p = s, *e;
    int i, discover = 0;
    if (!*s)
        die(ENV_NAME " is set but empty (unset it to disable pinning)");
    if (strlen(s) > 4096)
        die(ENV_NAME " is longer than 4096 characters");
    for (;;) {
        uint64_t id, value;
        int at = (int)(p - s);
        if (strncmp(p, "cpu=", 4) == 0) {
            parse_cpu(s, p, &e);
        } else if (strncmp(p, "hide=", 5) == 0) {
            if (parse_hex(p + 5, &e, &id) || (*e != ',' && *e != '\0'))
                die(ENV_NAME " at character %d: expected hide=0xREGISTER_ID: '%.40s'", at, p);
            for (i = 0; i < nhides; i++)
                if (hides[i] == id)
                    die(ENV_NAME ": hide=0x%016llx is given twice", (unsigned long long)id);
            if ((id >> 52) != 0x602 && (id >> 52) != 0x603)
                die(ENV_NAME ": hide=0x%016llx is not an arm64 32/64-bit register id", (unsigned long long)id);
            if (nhides == MAX_HIDES)
                die(ENV_NAME ": more than %d hide= items", MAX_HIDES);
            hides[nhides++] = id;
        } else {
            if (ncpus || nhides)
                die(ENV_NAME " at character %d: registers come before the cpu= items (and the hide= items)", at);
            if (parse_hex(p, &e, &id) || *e != '=')
                die(ENV_NAME " at character %d: expected REGISTER_ID=VALUE in hex (0x...): '%.40s'", at, p);
            if (!allowed(id))
                die(ENV_NAME ": register 0x%016llx is not on the allow-list (firmware "
                    "0x603000000014000X/0x603000000016000X, ID registers op0=3,op1=0,CRn=0, MIDR/REVIDR/AIDR)",
                    (unsigned long long)id);
            p = e + 1;
            if (parse_hex(p, &e, &value) || (*e != ',' && *e != '\0' && *e != '/'))
                die(ENV_NAME ": register 0x%016llx: malformed value '%.40s' (expected 0x + 1..16 hex digits)",
                    (unsigned long long)id, p);
            pins[npins].has_stream = 0;
            if (*e == '/') {
                if (id != CTR_EL0_ID)
                    die(ENV_NAME ": register 0x%016llx: only CTR_EL0 takes a stream value (/0x...)",
                        (unsigned long long)id);
                p = e + 1;
                if (parse_hex(p, &e, &pins[npins].stream) || (*e != ',' && *e != '\0'))
                    die(ENV_NAME ": register 0x%016llx: malformed stream value '%.40s'", (unsigned long long)id, p);
                pins[npins].has_stream = 1;
            }
            for (i = 0; i < npins; i++)
                if (pins[i].id == id)
                    die(ENV_NAME ": register 0x%016llx is given twice", (unsigned long long)id);
            if (npins == MAX_PINS)
                die(ENV_NAME ": more than %d registers", MAX_PINS);
            pins[npins].id = id;
            pins[npins].value = value;
            npins++;
            if (is_imp_id(id))
                want_imp_writable = 1;
            if (id == VENDOR_HYP_BMAP_2 && (value & DISCOVER_BITS))
                discover = (value & DISCOVER_BITS) == DISCOVER_BITS ? 1 : -1;
        }
        if (*e == '\0')
            break;
        p = e + 1;
    }
    /* the guest is told the calls exist exactly when the library answers them */
    if (discover < 0)
        die(ENV_NAME ": VENDOR_HYP_BMAP_2 offers only one of DISCOVER_IMPL_VER/_CPUS (a guest uses both)");
    if (discover && !ncpus)
        die(ENV_NAME ": VENDOR_HYP_BMAP_2 offers errata discovery but no cpu= items say what to answer");
    if (ncpus && !discover)
        die(ENV_NAME ": cpu= items need VENDOR_HYP_BMAP_2 (0x%016llx) pinned with bits 0x3, or the guest "
            "never asks", (unsigned long long)VENDOR_HYP_BMAP_2);
}

static void resolve(void)
{
    if (!real_ioctl) {
        real_ioctl = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
        if (!real_ioctl)
            die("cannot find the real ioctl(): %s", dlerror());
    }
}

__attribute__((constructor)) static void abiguard_pin_init(void)
{
    const char *s = getenv(ENV_NAME);
    if (!s)
        return;
    parse(s);
    resolve();
    open_record(s);
}

static void apply(int fd)
{
    char line[200];
    int i, n, kept = 0;
    for (i = 0; i < npins; i++) {
        uint64_t value = pins[i].value, now = 0;
        struct kvm_one_reg_abi reg = { pins[i].id, (uint64_t)(uintptr_t)&value };
        if (real_ioctl(fd, KVM_SET_ONE_REG, &reg) != 0) {
            int err = errno;
            struct kvm_one_reg_abi get = { pins[i].id, (uint64_t)(uintptr_t)&now };
            if (err == EBUSY && real_ioctl(fd, KVM_GET_ONE_REG, &get) == 0) {
                n = snprintf(line, sizeof line, "abiguard-pin: vCPU fd %d: 0x%016llx stays 0x%llx, not "
                             "0x%llx: KVM refuses changes once the guest has run (EBUSY)\n", fd,
                             (unsigned long long)pins[i].id, (unsigned long long)now,
                             (unsigned long long)value);
                (void)!write(2, line, n);
                kept++;
                continue;
            }
            die("KVM_SET_ONE_REG 0x%016llx = 0x%llx on vCPU fd %d failed: errno %d (%s); %s: not starting",
                (unsigned long long)pins[i].id, (unsigned long long)value, fd, err, strerror(err),
                err == ENOENT ? "this host's KVM does not have the register"
                              : "this host's KVM refuses the pinned value");
        }
    }
    n = snprintf(line, sizeof line, "abiguard-pin: vCPU fd %d: %d register(s) pinned\n", fd, npins - kept);
    (void)!write(2, line, n);
    record("vcpu fd %d pinned %d kept %d of %d", fd, npins - kept, kept, npins);
}

/* Before vCPU 0 of a VM exists: the capability that makes MIDR/REVIDR/AIDR writable, and
 * the SMCCC filter that forwards errata discovery to us. Both only exist on a VM fd with
 * no vCPU (KVM refuses them later), which is why vCPU 0's creation is the moment. */
static void prepare_vm(int vmfd)
{
    if (want_imp_writable) {
        struct kvm_enable_cap_abi cap;
        int have = real_ioctl(vmfd, KVM_CHECK_EXTENSION, (unsigned long)KVM_CAP_ARM_WRITABLE_IMP_ID_REGS);
        if (have <= 0)
            die("this host's KVM lacks KVM_CAP_ARM_WRITABLE_IMP_ID_REGS (Linux >= 6.15 has it), so it shows the "
                "guest only its own MIDR_EL1/REVIDR_EL1/AIDR_EL1: not starting");
        memset(&cap, 0, sizeof cap);
        cap.cap = KVM_CAP_ARM_WRITABLE_IMP_ID_REGS;
        if (real_ioctl(vmfd, KVM_ENABLE_CAP, &cap) != 0)
            die("KVM_ENABLE_CAP(KVM_CAP_ARM_WRITABLE_IMP_ID_REGS) on VM fd %d failed: errno %d (%s): not starting",
                vmfd, errno, strerror(errno));
    }
    if (ncpus) {
        struct kvm_smccc_filter_abi filter;
        struct kvm_device_attr_abi attr;
        memset(&filter, 0, sizeof filter);
        filter.base = DISCOVER_IMPL_VER;
        filter.nr_functions = 2;
        filter.action = KVM_SMCCC_FILTER_FWD_TO_USER;
        memset(&attr, 0, sizeof attr);
        attr.group = 0;   /* KVM_ARM_VM_SMCCC_CTRL */
        attr.attr = 0;    /* KVM_ARM_VM_SMCCC_FILTER */
        attr.addr = (uint64_t)(uintptr_t)&filter;
        if (real_ioctl(vmfd, KVM_SET_DEVICE_ATTR, &attr) != 0)
            die("KVM_ARM_VM_SMCCC_FILTER (forward 0x%x..0x%x) on VM fd %d failed: errno %d (%s): this host "
                "cannot answer the guest's errata discovery: not starting", DISCOVER_IMPL_VER, DISCOVER_IMPL_CPUS,
                vmfd, errno, strerror(errno));
    }
}

static int find_vcpu(int fd)
{
    int i, n = __atomic_load_n(&nvcpus, __ATOMIC_ACQUIRE);
    for (i = 0; i < n && i < MAX_VCPUS; i++)
        if (__atomic_load_n(&vcpus[i].fd, __ATOMIC_ACQUIRE) == fd)
            return i;
    return -1;
}

/* a guest vCPU whose discovery calls we answer: its kvm_run page, mapped once (every
 * reset re-runs VCPU_INIT on the same fd) */
static void watch_vcpu(int fd)
{
    void *run;
    int slot;
    if (find_vcpu(fd) >= 0)
        return;
    run = mmap(NULL, (size_t)sysconf(_SC_PAGESIZE), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (run == MAP_FAILED)
        die("mapping the kvm_run page of vCPU fd %d failed: errno %d (%s): not starting", fd, errno,
            strerror(errno));
    slot = __atomic_fetch_add(&nvcpus, 1, __ATOMIC_ACQ_REL);
    if (slot >= MAX_VCPUS)
        die("more than %d vCPUs", MAX_VCPUS);
    vcpus[slot].run = run;
    vcpus[slot].answered = 0;
    __atomic_store_n(&vcpus[slot].fd, fd, __ATOMIC_RELEASE);
}

static void set_x(int fd, int n, uint64_t value)
{
    struct kvm_one_reg_abi reg = { CORE_X0 + 2 * (uint64_t)n, (uint64_t)(uintptr_t)&value };
    if (real_ioctl(fd, KVM_SET_ONE_REG, &reg) != 0)
        die("answering the guest's errata discovery on vCPU fd %d: KVM_SET_ONE_REG(x%d) failed: errno %d (%s)",
            fd, n, errno, strerror(errno));
}

/* DISCOVER_IMPL_VER: x0 SUCCESS, x1 version 1.0, x2 how many CPUs; DISCOVER_IMPL_CPUS(x1 =
 * index): x0 SUCCESS, x1..x3 that CPU's MIDR, REVIDR, AIDR, or INVALID_PARAMETER */
static void answer(int slot, uint32_t function)
{
    int fd = vcpus[slot].fd;
    uint64_t index = 0;
    if (function == DISCOVER_IMPL_VER) {
        set_x(fd, 0, SMCCC_SUCCESS);
        set_x(fd, 1, 0x10000);
        set_x(fd, 2, (uint64_t)ncpus);
        set_x(fd, 3, 0);
        return;
    }
    {
        struct kvm_one_reg_abi reg = { CORE_X0 + 2, (uint64_t)(uintptr_t)&index };
        if (real_ioctl(fd, KVM_GET_ONE_REG, &reg) != 0)
            die("reading x1 of the guest's DISCOVER_IMPL_CPUS on vCPU fd %d failed: errno %d (%s)", fd, errno,
                strerror(errno));
    }
    if (index >= (uint64_t)ncpus) {
        set_x(fd, 0, SMCCC_INVALID_PARAMETER);
        return;
    }
    set_x(fd, 0, SMCCC_SUCCESS);
    set_x(fd, 1, cpus[index].midr);
    set_x(fd, 2, cpus[index].revidr);
    set_x(fd, 3, cpus[index].aidr);
    if (index == (uint64_t)ncpus - 1 && !vcpus[slot].answered) {
        vcpus[slot].answered = 1;
        record("vcpu fd %d answered discover_impl %d cpus", fd, ncpus);
    }
}

/* KVM_RUN on a watched vCPU: a discovery exit is answered and the vCPU run again, so QEMU
 * (which would not know the exit) only ever sees the others */
static int run_vcpu(int fd, int slot, void *arg)
{
    for (;;) {
        int ret = real_ioctl(fd, KVM_RUN, arg);
        struct kvm_run_head_abi *run = vcpus[slot].run;
        uint32_t function;
        if (ret != 0 || run->exit_reason != KVM_EXIT_HYPERCALL)
            return ret;
        function = (uint32_t)run->hypercall_nr;
        if (function != DISCOVER_IMPL_VER && function != DISCOVER_IMPL_CPUS)
            return ret;
        answer(slot, function);
    }
}

static int is_guest_fd(int fd)
{
    return fd >= 0 && fd < 65536 && (__atomic_load_n(&guest_fd[fd / 8], __ATOMIC_ACQUIRE) >> (fd % 8) & 1);
}

static int hidden(uint64_t id)
{
    int i;
    for (i = 0; i < nhides; i++)
        if (hides[i] == id)
            return 1;
    return 0;
}

/* KVM_GET_REG_LIST on a guest vCPU: KVM's answer less the hide= ids, with KVM's own
 * protocol (n too small: n set to what is needed, E2BIG). The list is asked into a
 * buffer on this thread's stack (QEMU initialises vCPUs on their own threads). */
static int reg_list(int fd, void *arg)
{
    struct { uint64_t n; uint64_t reg[MAX_REG_LIST]; } all;
    uint64_t *user = arg, want, i, k = 0;
    int ret;
    all.n = MAX_REG_LIST;
    ret = real_ioctl(fd, KVM_GET_REG_LIST, &all);
    if (ret != 0) {
        if (errno == E2BIG)
            die("KVM_GET_REG_LIST on vCPU fd %d lists %llu registers, more than the %d this library filters: "
                "not starting", fd, (unsigned long long)all.n, MAX_REG_LIST);
        return ret;
    }
    for (i = 0; i < all.n; i++)
        if (!hidden(all.reg[i]))
            all.reg[k++] = all.reg[i];
    want = user[0];
    user[0] = k;
    if (want < k) {
        errno = E2BIG;
        return -1;
    }
    memcpy(user + 1, all.reg, k * sizeof(uint64_t));
    if (__atomic_load_n(&record_fd, __ATOMIC_RELAXED) >= 0)
        record("vcpu fd %d reg_list %llu of %llu hidden %llu", fd, (unsigned long long)k,
               (unsigned long long)all.n, (unsigned long long)(all.n - k));
    return 0;
}

/* QEMU's KVM_GET/SET_ONE_REG of a register with a stream value: it sees S where KVM holds
 * G (the guest's), and its write of S is KVM's G; every other value passes unchanged */
static int one_reg(int fd, unsigned long request, void *arg)
{
    struct kvm_one_reg_abi *reg = arg, mine;
    uint64_t v;
    int i, ret;
    for (i = 0; i < npins; i++)
        if (pins[i].has_stream && pins[i].id == reg->id)
            break;
    if (i == npins)
        return real_ioctl(fd, request, arg);
    if (request == KVM_SET_ONE_REG) {
        memcpy(&v, (const void *)(uintptr_t)reg->addr, sizeof v);
        if (v != pins[i].stream)
            return real_ioctl(fd, request, arg);
        v = pins[i].value;
        mine.id = reg->id;
        mine.addr = (uint64_t)(uintptr_t)&v;
        return real_ioctl(fd, request, &mine);
    }
    ret = real_ioctl(fd, request, arg);
    if (ret == 0) {
        memcpy(&v, (const void *)(uintptr_t)reg->addr, sizeof v);
        if (v == pins[i].value) {
            v = pins[i].stream;
            memcpy((void *)(uintptr_t)reg->addr, &v, sizeof v);
        }
    }
    return ret;
}

/* glibc's prototype: int ioctl(int fd, unsigned long request, ...) */
int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    void *arg;
    int ret, saved, slot;
    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);
    resolve();
    if (npins == 0 && nhides == 0)
        return real_ioctl(fd, request, arg);
    if (request == KVM_GET_REG_LIST && nhides && is_guest_fd(fd))
        return reg_list(fd, arg);
    if ((request == KVM_GET_ONE_REG || request == KVM_SET_ONE_REG) && arg && is_guest_fd(fd))
        return one_reg(fd, request, arg);
    if (request == KVM_RUN && ncpus && (slot = find_vcpu(fd)) >= 0)
        return run_vcpu(fd, slot, arg);
    if (request == KVM_CREATE_VCPU && (uintptr_t)arg == 0 && (want_imp_writable || ncpus)) {
        saved = errno;
        prepare_vm(fd);
        errno = saved;
    }
    ret = real_ioctl(fd, request, arg);
    if (ret != 0 || request != KVM_ARM_VCPU_INIT || !arg)
        return ret;
    if (!(((const struct kvm_vcpu_init_abi *)arg)->features[0] & (1u << KVM_ARM_VCPU_PSCI_0_2)))
        return ret;   /* a scratch vCPU (QEMU's host-CPU probe): not a guest vCPU */
    saved = errno;
    apply(fd);
    if (fd >= 0 && fd < 65536)
        __atomic_or_fetch(&guest_fd[fd / 8], (unsigned char)(1u << (fd % 8)), __ATOMIC_RELEASE);
    if (ncpus)
        watch_vcpu(fd);
    errno = saved;
    return ret;
}
