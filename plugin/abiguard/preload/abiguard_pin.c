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
 *     Anything malformed, duplicated or not allowed: one line "abiguard-pin: ..." on stderr
 *     and _exit(1), so QEMU never starts half-pinned.
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
 * Nothing else is touched: no other ioctl, no allocation after load, no threads; one file.
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
#include <unistd.h>

#define KVM_ARM_VCPU_INIT     0x4020AEAEUL   /* _IOW(KVMIO, 0xae, struct kvm_vcpu_init) */
#define KVM_SET_ONE_REG       0x4010AEACUL   /* _IOW(KVMIO, 0xac, struct kvm_one_reg) */
#define KVM_GET_ONE_REG       0x4010AEABUL   /* _IOW(KVMIO, 0xab, struct kvm_one_reg) */
#define KVM_ARM_VCPU_PSCI_0_2 2
#define MAX_PINS              64
#define ENV_NAME              "ABIGUARD_PINS"

struct kvm_vcpu_init_abi { uint32_t target; uint32_t features[7]; };
struct kvm_one_reg_abi { uint64_t id; uint64_t addr; };

static struct { uint64_t id, value; } pins[MAX_PINS];
static int npins;
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
        return op0 == 3 && op1 == 0 && crn == 0 && crm >= 1 && crm <= 7;
    }
    return 0;
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

static void parse(const char *s)
{
    const char *p = s, *e;
    if (!*s)
        die(ENV_NAME " is set but empty (unset it to disable pinning)");
    if (strlen(s) > 4096)
        die(ENV_NAME " is longer than 4096 characters");
    for (;;) {
        uint64_t id, value;
        int i, at = (int)(p - s);
        if (parse_hex(p, &e, &id) || *e != '=')
            die(ENV_NAME " at character %d: expected REGISTER_ID=VALUE in hex (0x...): '%.40s'", at, p);
        if (!allowed(id))
            die(ENV_NAME ": register 0x%016llx is not on the allow-list (firmware "
                "0x603000000014000X/0x603000000016000X, ID registers op0=3,op1=0,CRn=0)",
                (unsigned long long)id);
        p = e + 1;
        if (parse_hex(p, &e, &value) || (*e != ',' && *e != '\0'))
            die(ENV_NAME ": register 0x%016llx: malformed value '%.40s' (expected 0x + 1..16 hex digits)",
                (unsigned long long)id, p);
        for (i = 0; i < npins; i++)
            if (pins[i].id == id)
                die(ENV_NAME ": register 0x%016llx is given twice", (unsigned long long)id);
        if (npins == MAX_PINS)
            die(ENV_NAME ": more than %d registers", MAX_PINS);
        pins[npins].id = id;
        pins[npins].value = value;
        npins++;
        if (*e == '\0')
            break;
        p = e + 1;
    }
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

/* glibc's prototype: int ioctl(int fd, unsigned long request, ...) */
int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    void *arg;
    int ret, saved;
    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);
    resolve();
    ret = real_ioctl(fd, request, arg);
    if (ret != 0 || npins == 0 || request != KVM_ARM_VCPU_INIT || !arg)
        return ret;
    if (!(((const struct kvm_vcpu_init_abi *)arg)->features[0] & (1u << KVM_ARM_VCPU_PSCI_0_2)))
        return ret;   /* a scratch vCPU (QEMU's host-CPU probe): not a guest vCPU */
    saved = errno;
    apply(fd);
    errno = saved;
    return ret;
}
