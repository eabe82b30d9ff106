/* pintest.c: exercises abiguard_pin.so's write path on a real arm64 KVM (run in the lab with
 * LD_PRELOAD=abiguard_pin.so). Creates a VM and one vCPU, KVM_ARM_VCPU_INIT with the
 * preferred target (+ PSCI_0_2 unless argv[1] is "scratch", like QEMU's host-CPU probe),
 * then prints each register id given on the command line with KVM_GET_ONE_REG:
 *     pintest [scratch] ID...   ->  "ID=VALUE" lines, or "ID=errno:N"; exit 0
 * Every ioctl goes through libc's ioctl(), so the preloaded library sees it. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define KVM_CREATE_VM            0xAE01UL
#define KVM_CREATE_VCPU          0xAE41UL
#define KVM_ARM_PREFERRED_TARGET 0x8020AEAFUL
#define KVM_ARM_VCPU_INIT        0x4020AEAEUL
#define KVM_GET_ONE_REG          0x4010AEABUL
struct vcpu_init { uint32_t target; uint32_t features[7]; };
struct one_reg { uint64_t id; uint64_t addr; };

int main(int argc, char **argv)
{
    struct vcpu_init init;
    int kvm, vm, vcpu, i = 1, scratch = argc > 1 && !strcmp(argv[1], "scratch");
    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) { perror("pintest: /dev/kvm"); return 2; }
    vm = ioctl(kvm, KVM_CREATE_VM, 0UL);
    if (vm < 0) { perror("pintest: KVM_CREATE_VM"); return 2; }
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0UL);
    if (vcpu < 0) { perror("pintest: KVM_CREATE_VCPU"); return 2; }
    memset(&init, 0, sizeof init);
    if (ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init)) { perror("pintest: PREFERRED_TARGET"); return 2; }
    if (!scratch) init.features[0] |= 1u << 2;       /* KVM_ARM_VCPU_PSCI_0_2 */
    if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init)) { perror("pintest: KVM_ARM_VCPU_INIT"); return 2; }
    for (i = 1 + scratch; i < argc; i++) {
        uint64_t v = 0;
        struct one_reg r = { strtoull(argv[i], NULL, 0), (uint64_t)(uintptr_t)&v };
        if (ioctl(vcpu, KVM_GET_ONE_REG, &r)) printf("%s=errno:%d\n", argv[i], errno);
        else printf("%s=0x%llx\n", argv[i], (unsigned long long)v);
    }
    return 0;
}
