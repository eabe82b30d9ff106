/* The Linux guest's /init (issue 28): a guest that keeps running after its boot and can say
 * again, on its own console, what its kernel decided about its CPUs.
 *
 * At start and on 'P' it prints, between AGI-REPORT-BEGIN and AGI-REPORT-END, the lines of
 * the kernel's own log (klogctl: the ring buffer, not a copy made at boot) that tell the CPU
 * story: the MIDR it was shown, the implementation CPUs its errata discovery found, the
 * errata workarounds it enabled (lab/armfleet/linux.py parses them). Between reports it
 * prints a heartbeat every two seconds, so a migration can be seen not to stop it. On 'R' it
 * reboots (reboot(RB_AUTOBOOT): PSCI SYSTEM_RESET, QEMU resets the VM in place), so the next
 * boot's story is told by the host it runs on then. The boot id tells the boots apart.
 *
 * It writes through /dev/kmsg, not the tty: the kernel's console prints those lines by
 * polling the UART, while a tty write waits for the UART's transmit interrupt (a Linux
 * guest moved back to the cortex-a57 host printed nothing more through its tty, heartbeats
 * included). The kernel stamps each line ("[   12.345678] "); linux.py reads past it. It
 * reads its commands from the console (fd 0).
 *
 * Static, no libraries beyond libc: built by linux.py with aarch64-linux-gnu-gcc -static. */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define SYSLOG_ACTION_READ_ALL 3
#define SYSLOG_ACTION_SIZE_BUFFER 10

static char klog[1 << 20];
static char boot_id[64] = "unknown";
static unsigned reports, beat;
static FILE *out;

/* the kernel's lines that carry the CPU story (what linux.parse_boot reads) */
static const char *const STORY[] = {
    "Linux version ", "Booting Linux on physical CPU", "smccc: KVM:", "CPU features: detected: ARM errat",
    "SMP: Total of",
};

static void report(void) {
    int n = klogctl(SYSLOG_ACTION_READ_ALL, klog, sizeof klog - 1);
    reports++;
    fprintf(out, "AGI-REPORT-BEGIN boot=%s r=%u n=%04x\n", boot_id, reports, beat);
    if (n < 0) {
        perror("AGI klogctl");
        n = 0;
    }
    klog[n] = 0;
    for (char *line = klog, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        if (strstr(line, "AGI"))        /* this program's own lines, from earlier reports */
            continue;
        for (size_t i = 0; i < sizeof STORY / sizeof *STORY; i++)
            if (strstr(line, STORY[i])) {
                fprintf(out, "AGI-K %s\n", line);
                break;
            }
    }
    fprintf(out, "AGI-REPORT-END boot=%s r=%u\n", boot_id, reports);
}

int main(void) {
    /* /dev/kmsg lives in devtmpfs (the initramfs has /dev/console only); one write(2)
     * per line: /dev/kmsg takes a record per write */
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    out = fopen("/dev/kmsg", "w");
    if (!out)
        out = stdout;
    setvbuf(out, NULL, _IOLBF, 0);
    mkdir("/proc", 0555);
    if (mount("proc", "/proc", "proc", 0, NULL) == 0) {
        int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY);
        if (fd >= 0) {
            ssize_t k = read(fd, boot_id, sizeof boot_id - 1);
            boot_id[k > 0 ? k : 0] = 0;
            boot_id[strcspn(boot_id, "\n")] = 0;
            close(fd);
        }
    }
    /* single bytes from the console, as they come (no line discipline, no echo) */
    struct termios t;
    if (tcgetattr(0, &t) == 0) {
        cfmakeraw(&t);
        t.c_oflag |= OPOST | ONLCR;
        tcsetattr(0, TCSANOW, &t);
    }
    report();
    time_t last = time(NULL);
    for (;;) {
        struct pollfd p = {.fd = 0, .events = POLLIN};
        char c;
        if (poll(&p, 1, 500) > 0) {
            if (read(0, &c, 1) != 1)
                usleep(500000);    /* a hung-up console: keep beating, do not spin */
            else if (c == 'P')
                report();
            else if (c == 'R') {
                fprintf(out, "AGI rebooting boot=%s\n", boot_id);
                sync();
                reboot(RB_AUTOBOOT);
            }
        }
        if (time(NULL) - last >= 2) {
            last = time(NULL);
            fprintf(out, "AGI-HB n=%04x boot=%s\n", ++beat, boot_id);
        }
    }
}
