/*
 * fake_kvm.c -- a stand-in for the kernel below abiguard_pin.so, for tests on any machine.
 *
 * Preloaded after the library (LD_PRELOAD="abiguard_pin.so fake_kvm.so"), so the library's
 * dlsym(RTLD_NEXT, "ioctl") finds this ioctl instead of libc's. It answers the few KVM
 * ioctls the library issues on the fds the test names (FAKE_KVM_VM, FAKE_KVM_VCPU: a memfd,
 * so the library's mmap of "the kvm_run page" works), keeps the vCPU's registers in a
 * table, and logs every call as one line on stderr. KVM_RUN plays a script
 * (FAKE_KVM_EXITS: function ids, "0x..." separated by commas; "io" for an exit the library
 * must hand back): each entry is one exit the fake makes the vCPU take.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t regs_id[256], regs_val[256];
static int nregs, step;

static int envint(const char *name)
{
    const char *s = getenv(name);
    return s ? atoi(s) : -1;
}

static uint64_t *slot(uint64_t id)
{
    int i;
    for (i = 0; i < nregs; i++)
        if (regs_id[i] == id)
            return &regs_val[i];
    regs_id[nregs] = id;
    regs_val[nregs] = 0;
    return &regs_val[nregs++];
}

static void write_exit(int fd, uint32_t reason, uint64_t nr)
{
    (void)!pwrite(fd, &reason, 4, 8);
    (void)!pwrite(fd, &nr, 8, 32);
}

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    void *arg;
    int vm = envint("FAKE_KVM_VM"), vcpu = envint("FAKE_KVM_VCPU");
    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (fd != vm && fd != vcpu) {   /* not ours: the real one */
        int (*real)(int, unsigned long, ...) = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
        return real(fd, request, arg);
    }
    switch (request) {
    case 0xAE03UL:   /* KVM_CHECK_EXTENSION */
        fprintf(stderr, "fake: check_extension %lu\n", (unsigned long)(uintptr_t)arg);
        return getenv("FAKE_KVM_NO_CAP") ? 0 : 1;
    case 0x4068AEA3UL:   /* KVM_ENABLE_CAP */
        fprintf(stderr, "fake: enable_cap %u\n", *(uint32_t *)arg);
        return 0;
    case 0x4018AEE1UL: { /* KVM_SET_DEVICE_ATTR */
        const uint32_t *a = arg;
        const uint32_t *f = (const uint32_t *)(uintptr_t)*(const uint64_t *)(a + 4);
        fprintf(stderr, "fake: smccc_filter group %u attr %llu base 0x%x n %u action %u\n", a[1],
                (unsigned long long)*(const uint64_t *)(a + 2), f[0], f[1], ((const uint8_t *)f)[8]);
        return 0;
    }
    case 0xAE41UL:   /* KVM_CREATE_VCPU */
        fprintf(stderr, "fake: create_vcpu %lu\n", (unsigned long)(uintptr_t)arg);
        return vcpu;
    case 0x4020AEAEUL:   /* KVM_ARM_VCPU_INIT */
        fprintf(stderr, "fake: vcpu_init\n");
        return 0;
    case 0x4010AEACUL: { /* KVM_SET_ONE_REG */
        const uint64_t *r = arg;
        *slot(r[0]) = *(const uint64_t *)(uintptr_t)r[1];
        fprintf(stderr, "fake: set 0x%llx = 0x%llx\n", (unsigned long long)r[0],
                (unsigned long long)*(const uint64_t *)(uintptr_t)r[1]);
        return 0;
    }
    case 0x4010AEABUL: { /* KVM_GET_ONE_REG */
        const uint64_t *r = arg;
        *(uint64_t *)(uintptr_t)r[1] = *slot(r[0]);
        return 0;
    }
    case 0xAE80UL: {     /* KVM_RUN */
        const char *script = getenv("FAKE_KVM_EXITS");
        char buf[512], *tok, *save;
        int i = 0;
        snprintf(buf, sizeof buf, "%s", script ? script : "io");
        for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), i++)
            if (i == step)
                break;
        step++;
        fprintf(stderr, "fake: run %d %s\n", step, tok ? tok : "(end)");
        if (!tok || strcmp(tok, "io") == 0) {
            write_exit(fd, 2, 0);
            return 0;
        }
        {
            uint64_t nr = strtoull(tok, NULL, 0);   /* before buf is reused below */
            /* the guest's x1 for this call: the index it asks for, from FAKE_KVM_X1_<step> */
            snprintf(buf, sizeof buf, "FAKE_KVM_X1_%d", step);
            *slot(0x6030000000100002ULL) = getenv(buf) ? strtoull(getenv(buf), NULL, 0) : 0;
            write_exit(fd, 3, nr);
        }
        return 0;
    }
    }
    fprintf(stderr, "fake: unexpected ioctl 0x%lx\n", request);
    return -1;
}
