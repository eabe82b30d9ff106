/* record_probe.c -- armfleet fact probe (7c): where can QEMU, as libvirt launches it under AppArmor, write a small
 * record? LD_PRELOADed; tries each path of ABIGUARD_PROBE_PATHS (':'-separated; %D = the
 * domain's private dir, from XDG_CONFIG_HOME minus /.config) at load and again at the first
 * KVM_ARM_VCPU_INIT (after QEMU's -sandbox is in place); one "abiguard-probe:" line each. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int (*real_ioctl)(int, unsigned long, ...);
static int done_late;
static void try_all(const char *when)
{
    const char *paths = getenv("ABIGUARD_PROBE_PATHS"), *xdg = getenv("XDG_CONFIG_HOME");
    char dir[512] = "", buf[4096], path[1024], line[1400];
    if (!paths) return;
    if (xdg) { snprintf(dir, sizeof dir, "%s", xdg); char *p = strstr(dir, "/.config"); if (p) *p = 0; }
    snprintf(buf, sizeof buf, "%s", paths);
    for (char *tok = strtok(buf, ":"); tok; tok = strtok(NULL, ":")) {
        char *d = strstr(tok, "%D"), *c = strstr(tok, "%C");
        const char *base = strrchr(dir, '/');
        base = base ? base + 1 : dir;
        if (!strncmp(base, "domain-", 7)) base += 7;      /* "1-NAME": the channel dir's name */
        if (d) { *d = 0; snprintf(path, sizeof path, "%s%s%s-%s", tok, dir, d + 2, when); }
        else if (c) { *c = 0; snprintf(path, sizeof path, "%s%s%s-%s", tok, base, c + 2, when); }
        else snprintf(path, sizeof path, "%s-%s", tok, when);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int n;
        if (fd >= 0) {
            n = snprintf(line, sizeof line, "abiguard-probe: pid %d wrote %s\n", getpid(), path);
            (void)!write(fd, line, n); close(fd);
            n = snprintf(line, sizeof line, "abiguard-probe: %s %s ok\n", when, path);
        } else
            n = snprintf(line, sizeof line, "abiguard-probe: %s %s errno %d %s\n", when, path, errno, strerror(errno));
        (void)!write(2, line, n);
    }
}
__attribute__((constructor)) static void init(void) { try_all("load"); }
int ioctl(int fd, unsigned long req, ...)
{
    va_list ap; va_start(ap, req); void *arg = va_arg(ap, void *); va_end(ap);
    if (!real_ioctl) real_ioctl = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    int r = real_ioctl(fd, req, arg);
    if (req == 0x4020AEAEUL && !done_late) { int e = errno; done_late = 1; try_all("vcpu-init"); errno = e; }
    return r;
}
