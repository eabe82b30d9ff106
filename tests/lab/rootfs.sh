#!/usr/bin/env bash
# rootfs.sh - cached Debian root filesystems with another release's libvirt + QEMU, for
# abiguard's mixed-version x86 fleet lab (a twohost host can run chrooted into one:
# TWOHOST_ROOTFS_A / TWOHOST_ROOTFS_B, see twohost.sh).
#
#   rootfs.sh build SUITE...   build (once) $ROOTFS_CACHE/rootfs-SUITE; prints its path
#   rootfs.sh path SUITE       print the path (exit 1 if not built)
#   rootfs.sh info SUITE       libvirt / QEMU / python versions inside (one "key value" a line)
#   rootfs.sh list             built root filesystems
#   rootfs.sh remove SUITE     delete a built rootfs (nothing may be mounted in it)
#
# SUITE: trixie (libvirt 11.x + QEMU 10.x) or sid (libvirt 12.x + QEMU 11.x); any Debian
# suite debootstrap knows works.
#
# A build is debootstrap --variant=minbase from the host's configured Debian mirror (the
# same choice as armlab.sh: first non-security ".../debian" URI of the host's apt sources,
# else deb.debian.org), then apt-get install --no-install-recommends of libvirt's daemons
# (monolithic libvirtd + virtlogd + the qemu driver), libvirt-clients, qemu-system-x86,
# python3, python3-libvirt, python3-lxml, iproute2 inside the chroot, with a policy-rc.d
# that forbids every service start. Everything that needs /proc, /dev, /sys inside the
# chroot runs in a private mount namespace (unshare -m), so no mount can outlive the build.
# The build happens in rootfs-SUITE.build.XXXXXX and is renamed into place only when it is
# complete (stamp file .abiguard-rootfs); an interrupted build leaves nothing that counts.
# The host's apt configuration, lists and dpkg state are never read or written (debootstrap
# only reads the archive keyring).
#
# Env: ROOTFS_CACHE (/var/cache/abiguard-lab), ROOTFS_MIRROR (default: host mirror),
#      ROOTFS_EXTRA_PKGS (more packages), ROOTFS_REBUILD=1 (rebuild even if cached)
set -euo pipefail

CACHE=${ROOTFS_CACHE:-/var/cache/abiguard-lab}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PKGS="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
      python3 python3-libvirt python3-lxml iproute2 ca-certificates ${ROOTFS_EXTRA_PKGS:-}"
STAMP=.abiguard-rootfs

# shellcheck source=debian-mirror.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh"
MIRROR=$(debian_mirror "${ROOTFS_MIRROR:-}")

log() { printf '[rootfs %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now()   { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
check_suite() { [[ ${1:-} =~ ^[a-z][a-z0-9-]*$ ]] || die "bad suite '${1:-}'"; }
rootfs_of() { echo "$CACHE/rootfs-$1"; }

# run a shell snippet chrooted into $1, with /proc /sys /dev /dev/pts mounted in a private
# mount namespace (gone when the command ends)
in_chroot() {
    local root=$1; shift
    unshare --mount --propagation private -- /bin/sh -ec '
        r=$1; shift
        mount -t proc proc "$r/proc"
        mount -t sysfs -o ro sysfs "$r/sys"
        mount --rbind /dev "$r/dev"
        exec chroot "$r" /usr/bin/env -i PATH="$0" HOME=/root LC_ALL=C.UTF-8 \
             DEBIAN_FRONTEND=noninteractive /bin/sh -ec "$@"' "$DPATH" "$root" "$@"
}

build_one() {
    local suite=$1 dest tmp t0 t1
    check_suite "$suite"; dest=$(rootfs_of "$suite")
    if [ -f "$dest/$STAMP" ] && [ "${ROOTFS_REBUILD:-0}" != 1 ]; then
        log "$suite: cached at $dest"; echo "$dest"; return 0
    fi
    [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
    command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"
    [ -s "$KEYRING" ] || die "$KEYRING missing (apt-get install debian-archive-keyring)"
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "$CACHE/rootfs-$suite.build.XXXXXX")
    # shellcheck disable=SC2064
    trap "log 'build of $suite failed - removing $tmp'; rm -rf --one-file-system '$tmp'" EXIT
    t0=$(now)
    log "$suite: debootstrap --variant=minbase from $MIRROR into $tmp"
    debootstrap --variant=minbase --keyring="$KEYRING" "$suite" "$tmp" "$MIRROR" \
        > "$tmp.debootstrap.log" 2>&1 || { tail -n 30 "$tmp.debootstrap.log" >&2; rm -f "$tmp.debootstrap.log"; die "debootstrap $suite failed"; }
    rm -f "$tmp.debootstrap.log"
    log "$suite: debootstrap done in $(since "$t0") s"
    t1=$(now)
    printf '#!/bin/sh\n# abiguard rootfs: never start services\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"
    chmod 0755 "$tmp/usr/sbin/policy-rc.d"
    # the mirror may lag (sid's Release had expired on the measuring machine's mirror); apt
    # runs as root inside the chroot (no _apt sandbox user needed)
    printf '%s\n' 'APT::Install-Recommends "false";' 'APT::Install-Suggests "false";' \
        'Acquire::Check-Valid-Until "false";' 'APT::Sandbox::User "root";' > "$tmp/etc/apt/apt.conf.d/90abiguard"
    # no man pages / docs / locales: smaller and faster
    cat > "$tmp/etc/dpkg/dpkg.cfg.d/90abiguard" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/info/*
EOF
    # shellcheck disable=SC2086
    in_chroot "$tmp" "apt-get -q update >/dev/null && apt-get -q -y install $(echo $PKGS) >/var/log/abiguard-rootfs-install.log 2>&1 || { tail -n 40 /var/log/abiguard-rootfs-install.log; exit 1; }
                      apt-get clean; rm -rf /var/lib/apt/lists/*" \
        || die "$suite: package install failed"
    log "$suite: packages installed in $(since "$t1") s"
    # what the lab expects to find
    for f in /usr/sbin/libvirtd /usr/sbin/virtlogd /usr/bin/virsh /usr/bin/qemu-system-x86_64 /usr/bin/python3; do
        [ -x "$tmp$f" ] || die "$suite: $f missing after install"
    done
    mkdir -p "$tmp/usr/share/abiguard/vendor"
    # daemons started by twohost.sh must not find the image's own default networks etc.
    rm -f "$tmp"/etc/libvirt/qemu/networks/autostart/*.xml 2>/dev/null || true
    info_of "$tmp" > "$tmp/$STAMP"
    if [ -e "$dest" ]; then
        grep -qF " $dest/" /proc/*/mountinfo 2>/dev/null && die "something is mounted below $dest"
        rm -rf --one-file-system "$dest"
    fi
    mv "$tmp" "$dest"
    trap - EXIT
    log "$suite: ready at $dest in $(since "$t0") s ($(du -sm "$dest" | cut -f1) MB)"
    sed 's/^/    /' "$dest/$STAMP" >&2
    echo "$dest"
}

info_of() {
    local r=$1 p
    echo "suite $(cat "$r/etc/debian_version")"
    echo "mirror $MIRROR"
    for p in libvirt-daemon libvirt-clients qemu-system-x86 python3 python3-libvirt; do
        echo "$p $(chroot "$r" dpkg-query -W -f '${Version}' "$p" 2>/dev/null || echo missing)"
    done
    echo "built $(date -u +%FT%TZ)"
}

cmd=${1:-}; [ $# -gt 0 ] && shift
case $cmd in
    build) [ $# -gt 0 ] || die "build: which suite(s)?"; for s in "$@"; do build_one "$s"; done ;;
    path)  check_suite "${1:-}"; d=$(rootfs_of "$1"); [ -f "$d/$STAMP" ] || die "rootfs $1 not built"; echo "$d" ;;
    info)  check_suite "${1:-}"; d=$(rootfs_of "$1"); [ -f "$d/$STAMP" ] || die "rootfs $1 not built"; cat "$d/$STAMP" ;;
    list)  for d in "$CACHE"/rootfs-*; do [ -f "$d/$STAMP" ] && echo "$d"; done; true ;;
    remove)
        check_suite "${1:-}"; d=$(rootfs_of "$1")
        grep -qF " $d/" /proc/*/mountinfo 2>/dev/null && die "something is mounted below $d"
        rm -rf --one-file-system "$d"; log "removed $d" ;;
    *) sed -n '2,30p' "$0"; exit 2 ;;
esac
