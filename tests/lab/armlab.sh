#!/usr/bin/env bash
# armlab.sh -- abiguard's arm64 real-kernel lab.
#
# Boots real Debian arm64 kernels (5.10 / 6.1 / 6.12 / newest 7.x) under
# qemu-system-aarch64 TCG with EL2 enabled (virt,virtualization=on), so every
# guest kernel runs KVM itself and has a working /dev/kvm.  The initramfs holds
# static busybox, arm64 python3.11 (bookworm debs), the abiguard package
# (../../plugin/abiguard -> /opt/abiguard/abiguard), lab_entry.py and optional
# input files (/inputs).  /init runs
#     python3.11 -I -S -u /opt/abiguard/lab_entry.py MODE
# which prints one JSON object between =====ARMLAB-JSON-BEGIN===== and
# =====ARMLAB-JSON-END===== on the serial console; the host saves it as
# $ARMLAB_RESULTS/NAME.json = {"lab": {...}, "result": {...}}.
#
#   armlab.sh fetch              kernels + initramfs debs into $ARMLAB_CACHE (private apt state)
#   armlab.sh build TAG          $ARMLAB_BUILD/initramfs-TAG.cpio.gz for ARMLAB_MODE (default probe)
#                                and the files of ARMLAB_INPUTS (optional directory)
#   armlab.sh run KVER TAG [CPU] boot kernel KVER (exact, or a prefix: 5.10, 6.1, 6.12, 7) with
#                                initramfs TAG and -cpu CPU (default max) -> $ARMLAB_RESULTS/NAME.json
#                                NAME = ARMLAB_NAME, else KVER (cpu max) or KVER-CPU
#   armlab.sh list               fetched kernels
#
# Environment: ARMLAB_CACHE (/var/cache/abiguard-lab/armlab), ARMLAB_BUILD
# (/var/tmp/abiguard-lab/armlab-build), ARMLAB_RESULTS (required by run),
# ARMLAB_MODE, ARMLAB_INPUTS, ARMLAB_NAME, ARMLAB_TIMEOUT (seconds per boot, 600),
# ARMLAB_MEM (1024), ARMLAB_SMP (1), ARMLAB_MACHINE (virt,virtualization=on,gic-version=3),
# ARMLAB_APPEND (extra kernel command line), ARMLAB_SUITES ("bullseye bookworm trixie sid"),
# ARMLAB_MIRROR (default: the host's configured Debian mirror), ARMLAB_APT_UPDATE=1
# (refresh the private apt lists), ARMLAB_APT_SEED (optional private apt state whose
# lists are copied, read only), ARMLAB_INITRD_COMPRESS=none, QEMU.
#
# The host's apt sources, lists, caches and dpkg status are never read or written
# for arm64.  The only process ever signalled is the timeout(1) this script started.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PKG_SRC=$HERE/../../plugin/abiguard
ENTRY=$HERE/lab_entry.py
CACHE=${ARMLAB_CACHE:-/var/cache/abiguard-lab/armlab}
BUILD=${ARMLAB_BUILD:-/var/tmp/abiguard-lab/armlab-build}
RESULTS=${ARMLAB_RESULTS:-}
MODE=${ARMLAB_MODE:-probe}
INPUTS=${ARMLAB_INPUTS:-}
QEMU=${QEMU:-qemu-system-aarch64}
MEM=${ARMLAB_MEM:-1024}
SMP=${ARMLAB_SMP:-1}
MACHINE=${ARMLAB_MACHINE:-virt,virtualization=on,gic-version=3}
TIMEOUT=${ARMLAB_TIMEOUT:-600}
SUITES=${ARMLAB_SUITES:-"bullseye bookworm trixie sid"}
APT_SEED=${ARMLAB_APT_SEED:-}
APTDIR=$CACHE/apt
PY_SUITE=bookworm
PY_PKGS="busybox-static python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libffi8 libc6 zlib1g libexpat1"
# shellcheck source=debian-mirror.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh"
MIRROR=$(debian_mirror "${ARMLAB_MIRROR:-}")
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf '[armlab] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
check_word() {  # tags, modes and names end up in file names and in /init
    [[ $2 =~ ^[A-Za-z0-9][A-Za-z0-9._,=+-]*$ ]] || die "bad $1 '$2' (allowed: letters, digits, . _ , = + -)"
}
mkdir_or_die() {
    mkdir -p "$@" 2>/dev/null || die "cannot create $* (run as root, or set ARMLAB_CACHE / ARMLAB_BUILD)"
}

# shellcheck source=apt-private.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt-private.sh"
private_apt_options "$APTDIR"

# ----------------------------------------------------------------------------
# private apt state (the seed at $APT_SEED, if any, is only read)
apt_setup() {
    mkdir_or_die "$APTDIR"/etc "$APTDIR"/lists/partial "$APTDIR"/archives/partial "$APTDIR"/cache
    [ -e "$APTDIR/status" ] || : > "$APTDIR/status"
    [ -s "$KEYRING" ] || die "$KEYRING missing (apt-get install debian-archive-keyring)"
    local s missing=0
    for s in $(printf '%s\n' $SUITES $PY_SUITE | sort -u); do
        echo "deb [arch=arm64 signed-by=$KEYRING] $MIRROR $s main"
    done > "$APTDIR/etc/sources.list"
    if [ -n "$APT_SEED" ] && ! ls "$APTDIR"/lists/*_Packages* >/dev/null 2>&1 &&
       ls "$APT_SEED"/lists/*_Packages* >/dev/null 2>&1; then
        log "copying apt lists from seed $APT_SEED (read only)"
        cp -p "$APT_SEED"/lists/*Release* "$APT_SEED"/lists/*_Packages* "$APTDIR/lists/" 2>/dev/null || true
    fi
    for s in $SUITES $PY_SUITE; do
        ls "$APTDIR"/lists/*_dists_"${s}"_main_binary-arm64_Packages* >/dev/null 2>&1 || missing=1
    done
    if [ "${ARMLAB_APT_UPDATE:-0}" = 1 ] || [ "$missing" = 1 ]; then
        apt_update
    fi
}
apt_update() {
    log "apt-get update (private lists in $APTDIR, mirror $MIRROR)"
    apt-get "${APTO[@]}" -q update >&2
}

# download PKG[=VER] or PKG/SUITE into DIR (retry once after an update)
apt_download() {
    local dir=$1; shift
    mkdir -p "$dir"
    if ! (cd "$dir" && apt-get "${APTO[@]}" -q download "$@" >&2); then
        apt_update
        (cd "$dir" && apt-get "${APTO[@]}" -q download "$@" >&2)
    fi
}

# version of linux-image-arm64 in a suite (exact suite match, not -backports)
meta_version() {
    apt-cache "${APTO[@]}" madison linux-image-arm64 |
        awk -F'|' -v s=" $1/main " 'index($3" ", s) {gsub(/ /, "", $2); print $2; exit}'
}
deps_of() {  # PKG=VER -> Depends line
    apt-cache "${APTO[@]}" show "$1" | awk '/^Depends:/ {sub(/^Depends: /, ""); print; exit}'
}

fetch_kernel() {
    local suite=$1 ver img kver deb tmp vmlinuz cfg pkgs
    ver=$(meta_version "$suite")
    [ -n "$ver" ] || { log "no linux-image-arm64 in $suite"; return 1; }
    img=$(deps_of "linux-image-arm64=$ver" | grep -oE 'linux-image-[0-9][^ ,]*-arm64' | head -1)
    [ -n "$img" ] || { log "cannot resolve image package of linux-image-arm64=$ver"; return 1; }
    kver=${img#linux-image-}
    if [ -s "$CACHE/kernels/$kver/Image" ]; then
        log "$suite: $kver already in cache"
        return 0
    fi
    log "$suite: linux-image-arm64 $ver -> $img"
    local d=$CACHE/debs/kernel-$kver
    rm -rf "$d"; mkdir -p "$d"
    apt_download "$d" "$img=$ver"
    deb=$(ls "$d"/*.deb)
    # (grep -q would close the pipe early: dpkg-deb then fails under pipefail)
    if ! dpkg-deb -c "$deb" | grep -E '/vmlinuz' >/dev/null; then
        # sid (7.x) splits the image: linux-image-K is a meta package that
        # depends on linux-binary-K (the vmlinuz) and linux-base-K (config).
        local kre; kre=$(printf '%s' "$kver" | sed 's/[.+]/\\&/g')
        pkgs=$(deps_of "$img=$ver" | grep -oE "linux-(binary|base)-$kre" | sort -u || true)
        [ -n "$pkgs" ] || die "$img has no vmlinuz and no linux-binary-$kver dependency"
        log "$suite: $img has no vmlinuz; fetching: $(echo $pkgs)"
        for p in $pkgs; do apt_download "$d" "$p=$ver"; done
    fi
    tmp=$(mktemp -d "$CACHE/x.XXXXXX")
    for deb in "$d"/*.deb; do   # only the kernel image and its config
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*' \
            './boot/config-*' './usr/lib/modules/*/vmlinuz' './usr/lib/modules/*/config' 2>/dev/null || true
    done
    vmlinuz=$(find "$tmp" -type f \( -name "vmlinuz-$kver" -o -path "*/modules/$kver/vmlinuz" \) | head -1)
    cfg=$(find "$tmp" -type f \( -name "config-$kver" -o -path "*/modules/$kver/config" \) | head -1)
    [ -n "$vmlinuz" ] || { rm -rf "$tmp"; die "no vmlinuz in $d"; }
    mkdir -p "$CACHE/kernels/$kver.part"
    case "$(head -c2 "$vmlinuz" | od -An -tx1 | tr -d ' ')" in
        1f8b) log "vmlinuz is gzip: decompressing to Image"; gzip -dc "$vmlinuz" > "$CACHE/kernels/$kver.part/Image" ;;
        *)    cp "$vmlinuz" "$CACHE/kernels/$kver.part/Image" ;;
    esac
    # arm64 Image header: magic "ARM\x64" at offset 0x38
    [ "$(dd if="$CACHE/kernels/$kver.part/Image" bs=1 skip=56 count=4 2>/dev/null)" = "$(printf 'ARM\x64')" ] ||
        log "WARNING: $kver Image has no arm64 magic (EFI zboot?)"
    [ -n "$cfg" ] && cp "$cfg" "$CACHE/kernels/$kver.part/config"
    printf 'suite=%s\nmeta_version=%s\npackage=%s\ndebs=%s\n' "$suite" "$ver" "$img" \
        "$(cd "$d" && ls *.deb | tr '\n' ' ')" > "$CACHE/kernels/$kver.part/source.txt"
    rm -rf "$tmp" "$CACHE/kernels/$kver"
    mv "$CACHE/kernels/$kver.part" "$CACHE/kernels/$kver"   # complete kernels only
    cfg=$CACHE/kernels/$kver/config
    if [ -s "$cfg" ]; then
        log "$kver: $(grep -E '^CONFIG_(KVM|VIRTUALIZATION)=' "$cfg" | tr '\n' ' ')"
        grep '^CONFIG_KVM=y' "$cfg" >/dev/null || log "WARNING: $kver has no built-in KVM"
    fi
}

cmd_fetch() {
    apt_setup
    mkdir -p "$CACHE/debs/initramfs" "$CACHE/kernels"
    local s
    for s in $SUITES; do fetch_kernel "$s"; done
    local p need=()
    for p in $PY_PKGS; do
        ls "$CACHE/debs/initramfs/${p}_"*.deb >/dev/null 2>&1 || need+=("$p/$PY_SUITE")
    done
    if [ ${#need[@]} -gt 0 ]; then
        log "initramfs debs from $PY_SUITE: ${need[*]}"
        apt_download "$CACHE/debs/initramfs" "${need[@]}"
    fi
    cmd_list
}

cmd_list() {
    local k
    for k in "$CACHE"/kernels/*/Image; do
        [ -e "$k" ] || continue
        k=$(basename "$(dirname "$k")")
        case "$k" in *.part) continue ;; esac
        printf '%s\t%s\n' "$k" "$(grep -E '^(suite|meta_version)=' "$CACHE/kernels/$k/source.txt" | tr '\n' ' ')"
    done
}

# ----------------------------------------------------------------------------
# initramfs: static busybox + python3.11 (bookworm arm64 debs, no maintainer
# scripts) + abiguard + lab_entry.py + inputs + /init.  One image serves every
# kernel: no modules are needed (KVM, PL011, devtmpfs, initramfs are built in).
copy_tree() {  # SRC DST: regular files and dirs, no __pycache__/*.pyc, normalised modes
    mkdir -p "$2"
    tar -C "$1" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.pyo' -cf - . | tar -C "$2" -xf -
    find "$2" -type d -exec chmod 0755 {} + ; find "$2" -type f -exec chmod 0644 {} +
}

cmd_build() {
    [ $# -eq 1 ] || die "usage: armlab.sh build TAG   (ARMLAB_MODE=$MODE, ARMLAB_INPUTS=${INPUTS:-none})"
    local tag=$1 debs=$CACHE/debs/initramfs st r w f out
    check_word tag "$tag"; check_word mode "$MODE"
    [ -d "$PKG_SRC" ] || die "no package directory $PKG_SRC"
    [ -f "$ENTRY" ] || die "no $ENTRY"
    [ -z "$INPUTS" ] || [ -d "$INPUTS" ] || die "ARMLAB_INPUTS=$INPUTS is not a directory"
    ls "$debs"/*.deb >/dev/null 2>&1 || die "no debs in $debs: run fetch first"
    mkdir_or_die "$BUILD"
    w=$(mktemp -d "$BUILD/build-$tag.XXXXXX")     # private: concurrent builds do not clash
    trap 'rm -rf "$w"' EXIT
    st=$w/stage r=$w/rootfs out=$BUILD/initramfs-$tag.cpio.gz
    mkdir -p "$st" "$r"
    for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$st"; done
    mkdir -p "$r"/{bin,dev,proc,sys,tmp,root,etc,usr/bin,usr/lib,inputs,opt/abiguard}
    cp -a "$st/bin/busybox" "$r/bin/busybox"
    # dynamic loader, libc and the few libraries python3.11 + _ctypes need
    (cd "$st" && find . \( -name 'ld-linux-aarch64.so.1' -o -name 'libc.so.6' -o -name 'libm.so.6' \
        -o -name 'libz.so.1*' -o -name 'libexpat.so.1*' -o -name 'libffi.so.8*' \) \
        -exec cp -a --parents {} "$r/" \;)
    cp -a "$st/usr/bin/python3.11" "$r/usr/bin/"
    ln -sf python3.11 "$r/usr/bin/python3"
    cp -a "$st/usr/lib/python3.11" "$r/usr/lib/"
    (cd "$r/usr/lib/python3.11" && rm -rf test idlelib tkinter turtledemo ensurepip lib2to3 \
        pydoc_data distutils config-3.11-* unittest/test sqlite3/test ctypes/test \
        lib-dynload/_test* lib-dynload/_ctypes_test* lib-dynload/xx* lib-dynload/_sqlite3* \
        lib-dynload/_curses* lib-dynload/readline* lib-dynload/_dbm* lib-dynload/_ssl* \
        lib-dynload/_hashlib* lib-dynload/nis* lib-dynload/_crypt*)
    rm -rf "$st"
    copy_tree "$PKG_SRC" "$r/opt/abiguard/abiguard"
    install -m 0644 "$ENTRY" "$r/opt/abiguard/lab_entry.py"
    [ -z "$INPUTS" ] || copy_tree "$INPUTS" "$r/inputs"
    cat > "$r/init" <<EOF
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read up _ < /proc/uptime
echo "ARMLAB-INIT uptime=\$up kernel=\$(uname -r) mode=$MODE"
dmesg > /tmp/dmesg.txt
dmesg -n 1                       # keep printk off the console while JSON is printed
ls -l /dev/kvm || echo "ARMLAB-NO-DEV-KVM"
export LD_LIBRARY_PATH=/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu PYTHONHASHSEED=0
cd /tmp
/usr/bin/python3.11 -I -S -u /opt/abiguard/lab_entry.py $MODE
rc=\$?
read up2 _ < /proc/uptime
echo "ARMLAB-DONE rc=\$rc uptime=\$up2"
poweroff -f
EOF
    chmod 0755 "$r/init"
    python3 "$HERE/mkcpio.py" "$r" "$out.tmp"
    # what went in (read back by run into lab.initramfs)
    {
        echo "tag=$tag"; echo "mode=$MODE"
        echo "sha256=$(sha256sum "$out.tmp" | cut -d' ' -f1)"
        echo "inputs=$(cd "$r/inputs" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | tr '\n' ' ')"
        echo "package_files=$(cd "$r/opt/abiguard/abiguard" && find . -type f | wc -l)"
    } > "$out.info.tmp"
    mv "$out.tmp" "$out"; mv "$out.info.tmp" "$out.info"
    log "built $out ($(du -h "$out" | cut -f1), mode=$MODE, sha256 $(sed -n 's/^sha256=//p' "$out.info" | head -c 16)...)"
    rm -rf "$w"; trap - EXIT
}

# ----------------------------------------------------------------------------
resolve_kver() {
    local want=$1 k
    [ -s "$CACHE/kernels/$want/Image" ] && { echo "$want"; return; }
    for k in $(cmd_list | cut -f1 | sort -V); do
        case "$k" in "$want".*|"$want"-*|"$want"+*) echo "$k"; return ;; esac
    done
    die "kernel '$want' not fetched (have: $(cmd_list | cut -f1 | tr '\n' ' '))"
}

# console filter: copy to the log, note host seconds (since QEMU start) of milestones
TS_FILTER='
import json, sys, time
logf, tsf, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])
marks = {b"Booting Linux on physical CPU": "linux_banner", b"kvm [1]: ": "kvm_init",
         b"ARMLAB-INIT": "init_started", b"=====ARMLAB-JSON-BEGIN": "json_begin",
         b"ARMLAB-DONE": "program_done", b"reboot: Power down": "power_down"}
tl = {}
with open(logf, "wb") as log:
    for line in sys.stdin.buffer:
        now = round(time.time() - t0, 2)
        tl.setdefault("first_output", now)
        for k, v in marks.items():
            if k in line and v not in tl:
                tl[v] = now
        log.write(line)
tl["console_closed"] = round(time.time() - t0, 2)
with open(tsf + ".tmp", "w") as f:
    json.dump(tl, f)
import os; os.replace(tsf + ".tmp", tsf)
'

cmd_run() {
    [ $# -ge 2 ] && [ $# -le 3 ] || die "usage: armlab.sh run KERNEL_VERSION TAG [CPU]"
    [ -n "$RESULTS" ] || die "set ARMLAB_RESULTS (directory for NAME.json)"
    local kver tag=$2 cpu=${3:-max} name img initrd logf tsf t0 t1 rc=0 qpid fpid fd _
    check_word tag "$tag"; check_word cpu "$cpu"
    kver=$(resolve_kver "$1")
    if [ -n "${ARMLAB_NAME:-}" ]; then name=$ARMLAB_NAME
    elif [ "$cpu" = max ]; then name=$kver
    else name=$kver-$cpu; fi
    check_word name "$name"
    img=$CACHE/kernels/$kver/Image
    initrd=$BUILD/initramfs-$tag.cpio.gz
    [ -s "$initrd" ] || die "no $initrd: run 'armlab.sh build $tag' first"
    mkdir -p "$BUILD/logs" "$RESULTS"
    logf=$BUILD/logs/$name.log tsf=$BUILD/logs/$name.timeline.json
    rm -f "$tsf"
    local append="console=ttyAMA0 panic=-1 rdinit=/init ${ARMLAB_APPEND:-}"
    local qargs=(-M "$MACHINE" -cpu "$cpu" -m "$MEM" -smp "$SMP"
                 -nographic -no-reboot -nic none -kernel "$img" -initrd "$initrd" -append "$append")
    log "booting $kver -cpu $cpu with $tag under TCG (timeout ${TIMEOUT}s), console -> $logf"
    t0=$(date +%s.%N)
    # timeout(1) ends QEMU (SIGTERM, then SIGKILL) on a hang; it is the only
    # process this script ever signals (also on INT/TERM of this script).  The
    # console goes through a filter that stamps host times of boot milestones.
    exec {fd}> >(exec python3 -u -c "$TS_FILTER" "$logf" "$tsf" "$t0")
    fpid=$!
    timeout -k 10 "$TIMEOUT" "$QEMU" "${qargs[@]}" </dev/null >&"$fd" 2>&1 &
    qpid=$!
    exec {fd}>&-
    local interrupted=0
    trap 'interrupted=1; kill -TERM "$qpid" 2>/dev/null || true' INT TERM HUP
    wait "$qpid" || rc=$?
    while kill -0 "$qpid" 2>/dev/null; do rc=0; wait "$qpid" || rc=$?; done
    trap - INT TERM HUP
    wait "$fpid" 2>/dev/null || true
    for _ in $(seq 50); do [ -e "$tsf" ] && break; sleep 0.1; done
    t1=$(date +%s.%N)
    [ "$interrupted" = 0 ] || die "$name: interrupted; QEMU stopped, no result written"
    [ "$rc" = 124 ] && log "$name: boot timed out after ${TIMEOUT}s"
    python3 - "$logf" "$RESULTS/$name.json" "$kver" "$t0" "$t1" "$rc" "$tsf" \
        "$CACHE/kernels/$kver/source.txt" "$("$QEMU" --version | head -1)" "$QEMU ${qargs[*]}" \
        "$cpu" "$tag" "$initrd.info" "$name" "$TIMEOUT" <<'PYEOF'
import json, re, sys
(logf, out, kver, t0, t1, rc, tsf, srcf, qver, qcmd, cpu, tag, infof, name,
 timeout) = sys.argv[1:]
text = open(logf, "rb").read().decode("utf-8", "replace").replace("\r", "")
lines = text.split("\n")
def kv(path):
    try:
        return dict(l.split("=", 1) for l in open(path).read().split("\n") if "=" in l)
    except OSError:
        return None
lab = {"name": name, "kernel_version": kver, "cpu": cpu, "initramfs_tag": tag,
       "qemu": qver, "qemu_cmdline": qcmd, "qemu_exit": int(rc), "timeout_seconds": int(timeout),
       "timed_out": rc == "124", "host_wall_seconds": round(float(t1) - float(t0), 1),
       "console_log": logf}
try:
    lab["host_timeline_seconds"] = json.load(open(tsf))
except (OSError, ValueError):
    pass
for key, path in (("source", srcf), ("initramfs", infof)):
    d = kv(path)
    if d is not None:
        lab[key] = d
m = re.search(r"ARMLAB-INIT uptime=([\d.]+)", text)
if m:
    lab["guest_uptime_at_init_seconds"] = float(m.group(1))
m = re.search(r"ARMLAB-DONE rc=(\d+) uptime=([\d.]+)", text)
if m:
    lab["program_rc"] = int(m.group(1))
    lab["guest_uptime_after_program_seconds"] = float(m.group(2))
lab["boot_lines"] = [l.strip() for l in lines
                     if re.search(r"kvm \[\d+\]:|started at EL|ARMLAB-NO-DEV-KVM|Kernel panic", l)][:40]
lab["cpu_features"] = [l.split("CPU features: ", 1)[1].strip() for l in lines if "CPU features: " in l]
lab["kvm_initialized"] = any("kvm [" in l and "initialized successfully" in l for l in lines)
lab["dev_kvm"] = "ARMLAB-NO-DEV-KVM" not in text and "ARMLAB-INIT" in text
res = {"lab": lab, "result": None}
try:
    b = lines.index("=====ARMLAB-JSON-BEGIN=====")
    e = lines.index("=====ARMLAB-JSON-END=====", b)
    res["result"] = json.loads("".join(lines[b + 1:e]))
    ok = True
except ValueError as ex:
    lab["error"] = "no JSON between markers: %s" % ex
    lab["console_tail"] = lines[-40:]
    ok = False
with open(out + ".tmp", "w") as f:
    json.dump(res, f, indent=1, sort_keys=True)
    f.write("\n")
import os; os.replace(out + ".tmp", out)
print("%s: %s, host wall %.1fs, /init at host %ss (guest %ss), done at guest %ss, kvm %s -> %s" % (
    name, "OK" if ok else "FAILED", lab["host_wall_seconds"],
    lab.get("host_timeline_seconds", {}).get("init_started"), lab.get("guest_uptime_at_init_seconds"),
    lab.get("guest_uptime_after_program_seconds"),
    "initialized" if lab["kvm_initialized"] else "NOT initialized", out), file=sys.stderr)
sys.exit(0 if ok else 1)
PYEOF
}

case "${1:-}" in
    fetch) cmd_fetch ;;
    build) shift; cmd_build "$@" ;;
    run) shift; cmd_run "$@" ;;
    list) cmd_list ;;
    *) sed -n '2,32p' "$0"; exit 2 ;;
esac
