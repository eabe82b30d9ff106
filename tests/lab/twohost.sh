#!/usr/bin/env bash
# twohost.sh - abiguard's two-host libvirt lab: two independent libvirt "hosts" on ONE
# Linux machine, built from namespaces, with real `virsh migrate --live` between them.
# (Debian 12: libvirt 9.0 monolithic libvirtd, QEMU 7.2 x86_64 + aarch64, iproute2.)
#
# Each host X in {a,b} gets
#   * network namespace "$PREFIX-X"; a veth pair "$PREFIX-va"/"$PREFIX-vb" joins the two with
#     link-local $NET.1/30 (a) and $NET.2/30 (b). Neither end is in the root netns, no default
#     route: nothing can leave the machine.
#   * mount + UTS namespace (hostname "$PREFIX-X", private propagation) with private dirs
#       $ST/X/{etc,run,lib,log,cache}  over /etc/libvirt /run/libvirt /var/lib/libvirt
#                                           /var/log/libvirt /var/cache/libvirt
#       $ST/X/abiguard-{etc,lib,log}    over /etc/abiguard /var/lib/abiguard /var/log/abiguard
#       $ST/X/abiguard-usrlib           over /usr/lib/abiguard (the preload library install builds)
#       $ST/X/hosts                     over /etc/hosts
#     plus a fresh sysfs (netns-correct /sys/class/net). Missing mountpoints on the real
#     machine are created by `up`, listed in $ST/created-mountpoints and removed by `down`
#     (only if empty and not mounted in any namespace).
#   * cgroup namespace rooted at a new "$PREFIX-X" child of the caller's cgroup in every
#     hierarchy, hierarchies re-mounted inside (libvirt without systemd puts VMs at the
#     ABSOLUTE partition /machine; this makes it /$PREFIX-X/machine, no collisions).
#   * its own virtlogd + libvirtd (pid files inside /run/libvirt), started with a clean env,
#     host_uuid ...000a/...000b, listen_tcp/auth_tcp=none on the veth address,
#     qemu.conf user=root (for /dev/kvm 0600), security_driver=none, namespaces=[],
#     migration_address/migration_host = veth address, stdio_handler=logd.
#   * a python PR_SET_CHILD_SUBREAPER parent that reaps orphaned daemons/qemu at once.
#   * NO hook script. If TWOHOST_PRESTART is set, `up` runs it with `sh -c` inside each host's
#     namespaces (after the bind mounts, before the daemons start) with the caller's env plus
#     TWOHOST_HOST=a|b, TWOHOST_HOST_STATE=$ST/X, TWOHOST_PREFIX. That is how a hook gets into
#     the private /etc/libvirt/hooks before libvirtd looks for it (libvirt only notices hook
#     scripts present at daemon start; use `restart X` after adding one later).
#
# Usage:
#   twohost.sh up                     create namespaces, (prestart), start both hosts
#   twohost.sh down                   stop everything this lab started; idempotent
#   twohost.sh status                 show what is running
#   twohost.sh exec  <a|b> cmd...     run cmd inside host a's/b's namespaces (caller's env, cwd /)
#   twohost.sh virsh <a|b> args...    virsh against host a or b (unix socket, from root ns)
#   twohost.sh uri   <a|b>            print qemu+unix URI of host a/b (usable from the root ns)
#   twohost.sh tcp-uri <a|b>          print qemu+tcp URI (usable only inside the two netns)
#   twohost.sh restart <a|b>          restart that host's libvirtd inside its namespaces
#   twohost.sh state                  print the state dir in use
#
# Env: TWOHOST_PREFIX  (abg)  netns/veth/cgroup/hostname prefix, <= 12 chars
#      TWOHOST_STATE   state dir; default: `up` makes a fresh /var/tmp/abiguard-twohost/$PREFIX.XXXXXX
#                      and points /var/tmp/abiguard-twohost/$PREFIX.current at it
#      TWOHOST_NET     (169.254.77) first three octets of the veth /30
#      TWOHOST_PRESTART  command run in each host before its daemons start (see above)
#      TWOHOST_KEEP=1  `down` keeps the state dir (logs, configs)
#      TWOHOST_COLD=1  do not seed the qemu capabilities cache (cold `up` ~4.5 s, warm <1 s)
#      TWOHOST_CAPCACHE (/var/cache/abiguard-lab/twohost-capcache); a chrooted host (below)
#                      uses $TWOHOST_CAPCACHE-<basename of its rootfs> instead
#      TWOHOST_ROOTFS_A / TWOHOST_ROOTFS_B  run that host's virtlogd, libvirtd (and so QEMU)
#                      chrooted into another Debian release's userspace (a root filesystem
#                      made by rootfs.sh). Inside the host's mount namespace an overlay of it
#                      (upper/work in $ST/X, so the cached rootfs is never written) is mounted
#                      at $ST/X/root with proc, the host's fresh /sys (+ its cgroup mounts),
#                      /dev (+ /dev/kvm), tmpfs /run and /tmp, the private dirs listed above
#                      bound at the same paths INSIDE the chroot, and /etc/hosts. Everything
#                      lives in that mount namespace only and disappears with the host. The
#                      unix socket stays $ST/X/run/libvirt-sock (reachable from outside);
#                      prestart, `exec` and `restart` run inside the chroot for such a host
#                      (prestart also gets TWOHOST_ROOTFS=<the rootfs>).
#      TWOHOST_CHROOT_BINDS  "SRC:DST[:rw] ..." directories bound at DST inside every chrooted host,
#                      read-only (e.g. a source tree for a hook) unless ":rw" (a directory the
#                      hosts share and write, e.g. a fleet directory)
set -euo pipefail

PREFIX=${TWOHOST_PREFIX:-abg}
STROOT=/var/tmp/abiguard-twohost
CAPCACHE=${TWOHOST_CAPCACHE:-/var/cache/abiguard-lab/twohost-capcache}
NET=${TWOHOST_NET:-169.254.77}
PY=/usr/bin/python3
DPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOSTS=(a b)
declare -A IP=([a]=$NET.1 [b]=$NET.2)
# host_uuid must differ, otherwise the destination refuses "migrate to the same host".
declare -A HUUID=([a]=7f3c2a10-5b1e-4d0a-9c51-2a0c0fa0000a [b]=7f3c2a10-5b1e-4d0a-9c51-2a0c0fa0000b)
# private dir (under $ST/X) -> mountpoint inside host X's mount namespace
BINDS=(etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt
       cache:/var/cache/libvirt abiguard-etc:/etc/abiguard abiguard-lib:/var/lib/abiguard
       abiguard-log:/var/log/abiguard abiguard-usrlib:/usr/lib/abiguard)

log()   { printf '[twohost %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
die()   { log "FATAL: $*"; exit 1; }
now()   { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
is_host() { case ${1:-} in a|b) return 0 ;; *) die "host must be a or b, got '${1:-}'" ;; esac; }

# ---------------------------------------------------------------- state dir
ST=${TWOHOST_STATE:-}
resolve_state() {  # for every command but `up`
  if [ -z "$ST" ] && [ -L "$STROOT/$PREFIX.current" ]; then ST=$(readlink "$STROOT/$PREFIX.current"); fi
  return 0
}
need_state() { [ -n "$ST" ] && [ -f "$ST/.twohost-state" ] || die "no lab state (prefix $PREFIX${ST:+, state $ST}) - run 'up' first"; }

ns_of()    { echo "$PREFIX-$1"; }
uri_unix() { echo "qemu+unix:///system?socket=$ST/$1/run/libvirt-sock"; }
uri_tcp()  { echo "qemu+tcp://${IP[$1]}/system"; }
vsh()      { local h=$1; shift; virsh -q -c "$(uri_unix "$h")" "$@"; }
# a pid is alive if it exists and is not a zombie
alive()    { local s; s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$s" ] && [ "$s" != Z ]; }
pidfile_alive() { local p; [ -s "$1" ] && p=$(cat "$1") && [[ $p =~ ^[0-9]+$ ]] && alive "$p" && echo "$p"; }
lvpid()    { pidfile_alive "$ST/$1/run/libvirtd.pid"; }
vlpid()    { pidfile_alive "$ST/$1/run/virtlogd.pid"; }
netns_exists() { [ -e "/run/netns/$1" ] || ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }
waitgone() { local p=$1 n=${2:-100} i; for ((i=0; i<n; i++)); do alive "$p" || return 0; sleep 0.1; done; return 1; }
# a process that lives in host X's namespaces (libvirtd, else virtlogd)
anchor()   { lvpid "$1" || vlpid "$1" || die "host $1 not running"; }
# (the command also joins host X's cgroups, so /proc/self/cgroup looks like the daemons')
# (a chrooted host: also its root and cwd, i.e. the chroot)
inhost()   {
  local h=$1 p; shift; p=$(anchor "$h")
  ( cg_join "$h" "$BASHPID" || { log "FATAL: cannot join host $h cgroups"; exit 125; }
    exec nsenter -t "$p" -m -n -u -C $(chroot_opts "$h") -- "$@" )
}
chroot_opts() { if [ -n "$(rootfs_of "$1")" ]; then echo "--root --wd"; fi; }
# is this absolute path a mountpoint in ANY process's mount namespace?
mounted_anywhere() { cat /proc/[0-9]*/mountinfo 2>/dev/null | awk -v m="$1" '$5==m {f=1} END{exit !f}'; }

# ---------------------------------------------------------------- cgroups
# print "<mountpoint><path>" of every cgroup hierarchy the given pid is in
cg_dirs() {
  local line rest ctrls path mnt
  while IFS= read -r line; do
    rest=${line#*:}; ctrls=${rest%%:*}; path=${rest#*:}
    mnt=$(awk -v want="$ctrls" '
      { n=index($0," - "); split(substr($0,1,n-1),a," "); split(substr($0,n+3),b," ")
        if (want=="" && b[1]=="cgroup2") { print a[5]; exit }
        if (want!="" && b[1]=="cgroup") {
          m=split(b[3],o,","); split("",have); for(i=1;i<=m;i++) have[o[i]]=1
          k=split(want,w,","); ok=1; for(i=1;i<=k;i++) if(!(w[i] in have)) ok=0
          if (ok) { print a[5]; exit } } }' /proc/self/mountinfo)
    [ -n "$mnt" ] && [ -d "$mnt" ] && echo "$mnt${path%/}"
  done < "/proc/$1/cgroup"
}
# create a fresh "$PREFIX-<host>" child cgroup (next to the caller's) in every hierarchy,
# record it, and move pid into it
cg_enter() {
  local h=$1 pid=$2 d c
  for d in $(cg_dirs "$pid"); do
    c=$d/$PREFIX-$h
    if [ ! -d "$c" ]; then mkdir "$c" || return 1; echo "$h $c" >> "$ST/cgroups.list"; fi
    if [ -f "$d/cpuset.cpus" ]; then
      cat "$d/cpuset.cpus" > "$c/cpuset.cpus" || return 1; cat "$d/cpuset.mems" > "$c/cpuset.mems" || return 1
    fi
    echo "$pid" > "$c/cgroup.procs" || return 1
  done
  return 0
}
# move pid into host X's recorded cgroups (used by `restart`)
cg_join() {
  local h=$1 pid=$2 hh c
  while read -r hh c; do
    if [ "$hh" = "$h" ] && [ -d "$c" ]; then echo "$pid" > "$c/cgroup.procs" || return 1; fi
  done < "$ST/cgroups.list"
  return 0
}
cg_cleanup() {
  [ -n "$ST" ] && [ -f "$ST/cgroups.list" ] || return 0
  local h c left=0
  while read -r h c; do
    [ -d "$c" ] || continue
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$c" ] && { log "WARN: cgroup $c not removed"; left=1; }
  done < <(sort -u "$ST/cgroups.list")
  [ $left = 0 ] && rm -f "$ST/cgroups.list"
  return 0
}

# ---------------------------------------------------------------- capabilities cache
# the rootfs host X runs chrooted into ("" = this machine's own userspace)
rootfs_of() { local v; v=TWOHOST_ROOTFS_${1^^}; if [ -n "$ST" ] && [ -f "$ST/$1/rootfs" ]; then cat "$ST/$1/rootfs"; else echo "${!v:-}"; fi; }
# capabilities cache of host X's libvirt/QEMU (one per userspace: the emulator path is the same)
capcache_of() { local r; r=$(rootfs_of "$1"); if [ -n "$r" ]; then echo "$CAPCACHE-$(basename "$r")"; else echo "$CAPCACHE"; fi; }
capcache_seed() {  # $1 = host
  local cc; cc=$(capcache_of "$1")
  [ "${TWOHOST_COLD:-0}" != 1 ] && [ -d "$cc/qemu/capabilities" ] || return 0
  mkdir -p "$ST/$1/cache/qemu"; cp -a "$cc/qemu/capabilities" "$ST/$1/cache/qemu/"
}
capcache_save() {  # $1 = host (default a). Keep the most complete copy (libvirt re-validates entries on use)
  local h=${1:-a} src n_src n_dst tmp cc
  src=$ST/$h/cache/qemu/capabilities; cc=$(capcache_of "$h")
  [ -d "$src" ] || return 0
  n_src=$(find "$src" -name '*.xml' | wc -l)
  n_dst=$( { find "$cc/qemu/capabilities" -name '*.xml' 2>/dev/null || true; } | wc -l)
  [ "$n_src" -gt "$n_dst" ] || return 0
  mkdir -p "$cc/qemu"; tmp=$(mktemp -d "$cc/qemu/.new.XXXXXX")
  cp -a "$src/." "$tmp/"
  rm -rf "$cc/qemu/capabilities"; mv "$tmp" "$cc/qemu/capabilities"
  log "saved qemu capabilities cache ($n_src entries) to $cc"
}
capcache_save_all() {  # host a as before; a chrooted b has a cache of its own
  capcache_save a
  if [ "$(capcache_of b)" != "$(capcache_of a)" ]; then capcache_save b; fi
}

# ---------------------------------------------------------------- files
write_reaper() {  # $1 = file.  usage: reaper.py <pidfile> <rcfile> cmd...
  cat > "$1" <<'PYEOF'
import ctypes, os, sys
# Become a child subreaper: orphaned descendants (daemonized virtlogd/libvirtd/qemu)
# are re-parented to us and reaped immediately (this machine's PID 1 reaps only every ~2 s,
# and libvirt waits for that on every qemu kill). Exit when no descendants are left.
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(36, 1, 0, 0, 0) != 0:          # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
pidfile, rcfile, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(pidfile, "w") as f:
    f.write("%d\n" % os.getpid())
child = os.fork()
if child == 0:
    os.execvp(cmd[0], cmd)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if pid == child:
        with open(rcfile, "w") as f:
            f.write("%d\n" % os.waitstatus_to_exitcode(status))
PYEOF
}

write_config() {  # $1 = host
  local h=$1 d=$ST/$1 b
  for b in "${BINDS[@]}"; do mkdir -p "$d/${b%%:*}"; done
  mkdir -p "$d/etc/hooks"
  chmod 0755 "$d" "$d"/{etc,run,lib,log}; chmod 0711 "$d/cache"
  cat > "$d/etc/libvirtd.conf" <<EOF
# host $h of abiguard's twohost lab
listen_tls = 0
listen_tcp = 1
listen_addr = "${IP[$h]}"
tcp_port = "16509"
auth_tcp = "none"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
host_uuid = "${HUUID[$h]}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  cat > "$d/etc/qemu.conf" <<EOF
# host $h of abiguard's twohost lab
# /dev/kvm may be root:root 0600 (no udev rules) -> run qemu as root
user = "root"
group = "root"
security_driver = "none"
# incoming migration listens on / is advertised at this host's veth address
migration_address = "${IP[$h]}"
migration_host = "${IP[$h]}"
# guest stdio goes through this host's own virtlogd (/run/libvirt/virtlogd-sock)
stdio_handler = "logd"
# no per-VM mount namespace: the lab's hosts share this machine's /dev, and where that
# /dev carries bind-mounted device nodes (container-hosted CI machines: /dev/null, /dev/kvm)
# libvirt cannot move them into the VM's private /dev ("Unable to move ... mount to
# /dev/null: Invalid argument"); chrooted hosts would also lose /dev/kvm there
namespaces = []
EOF
  echo 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"' > "$d/etc/virtlogd.conf"
  : > "$d/etc/libvirt.conf"
  local v r; v=TWOHOST_ROOTFS_${h^^}; r=${!v:-}
  if [ -n "$r" ]; then
    [ -x "$r/usr/sbin/libvirtd" ] && [ -x "$r/usr/sbin/virtlogd" ] || die "host $h: $r has no libvirtd/virtlogd (build it with rootfs.sh)"
    echo "$r" > "$d/rootfs"
  fi
  printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "${IP[a]}" "$PREFIX-a" "${IP[b]}" "$PREFIX-b" > "$d/hosts"
  capcache_seed "$h"
}

# ---------------------------------------------------------------- up
# the in-namespace part of a host start: mounts, prestart, daemons
INNER='
  d=$1; h=$2; hn=$3; cgm=$4; dpath=$5; shift 5
  hostname "$hn"
  # fresh sysfs for this netns (what "ip netns exec" does) ...
  mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
  # ... and cgroup hierarchies re-mounted inside the cgroup namespace, so "/" is
  # /<prefix>-<host> and libvirt'"'"'s absolute "/machine" partition lands below it
  mount -t tmpfs -o mode=755,nosuid,nodev,noexec cgroup-tmpfs /sys/fs/cgroup
  while read -r mp fs opts; do
    mkdir -p "$mp"; mount -t "$fs" -o "$opts" cgroup "$mp"
  done < "$cgm"
  if [ -n "${TWOHOST_ROOTFS:-}" ]; then
    # another release'"'"'s userspace: an overlay of it, chrooted into (see TWOHOST_ROOTFS_A)
    R=$d/root; mkdir -p "$R" "$d/rootfs-upper" "$d/rootfs-work"
    mount -t overlay -o "lowerdir=$TWOHOST_ROOTFS,upperdir=$d/rootfs-upper,workdir=$d/rootfs-work" twohost-rootfs "$R"
    mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
    mount --rbind /sys "$R/sys"
    mount --rbind /dev "$R/dev"
    mount -t tmpfs -o mode=755,nosuid,nodev run "$R/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"
    for b in "$@"; do mkdir -p "$R${b#*:}"; mount --bind "$d/${b%%:*}" "$R${b#*:}"; done
    mount --bind "$d/hosts" "$R/etc/hosts"
    for b in ${TWOHOST_CHROOT_BINDS:-}; do
      src=${b%%:*}; dst=${b#*:}; mode=ro
      case $dst in *:rw) dst=${dst%:rw}; mode=rw ;; esac
      [ -d "$src" ] || { echo "TWOHOST_CHROOT_BINDS: $src is not a directory"; exit 4; }
      mkdir -p "$R$dst"; mount --bind "$src" "$R$dst"
      [ "$mode" = rw ] || mount -o remount,bind,ro "$R$dst"
    done
    set -- chroot "$R"
    echo "chroot $R (overlay of $TWOHOST_ROOTFS)"
  else
    for b in "$@"; do mount --bind "$d/${b%%:*}" "${b#*:}"; done
    mount --bind "$d/hosts" /etc/hosts
    set --
  fi
  if [ -n "${TWOHOST_PRESTART:-}" ]; then
    echo "prestart: $TWOHOST_PRESTART"
    TWOHOST_HOST=$h TWOHOST_HOST_STATE=$d timeout 300 "$@" sh -c "$TWOHOST_PRESTART" \
      || { echo "prestart failed with rc=$?"; exit 3; }
    echo "prestart done"
  fi
  "$@" env -i PATH="$dpath" HOME=/root LC_ALL=C virtlogd -d -p /run/libvirt/virtlogd.pid
  "$@" env -i PATH="$dpath" HOME=/root LC_ALL=C libvirtd -d -l -p /run/libvirt/libvirtd.pid
'
start_host() {
  local h=$1 ns; ns=$(ns_of "$1")
  (
    cg_enter "$h" "$BASHPID" || exit 1    # the new cgroup namespace is rooted here
    export TWOHOST_PREFIX=$PREFIX
    TWOHOST_ROOTFS=$(rootfs_of "$h"); export TWOHOST_ROOTFS
    [ -n "$TWOHOST_ROOTFS" ] || unset TWOHOST_ROOTFS
    exec setsid "$PY" -I "$ST/reaper.py" "$ST/$h/reaper.pid" "$ST/$h/starter.rc" \
      nsenter --net="/run/netns/$ns" -- \
      unshare --cgroup --mount --uts --propagation private -- \
      /bin/sh -ec "$INNER" sh "$ST/$h" "$h" "$PREFIX-$h" "$ST/cgmounts" "$DPATH" "${BINDS[@]}" \
      </dev/null >>"$ST/$h/starter.log" 2>&1 &
  ) || die "host $h: could not create/enter its cgroups"
  echo "$ST/$h/reaper.pid" >> "$ST/reapers.list"
}

wait_libvirtd() {  # $1 host, $2 rc file of the starter
  local h=$1 rcf=$2 i
  for ((i=0; i<600; i++)); do
    if [ -s "$rcf" ] && [ "$(cat "$rcf")" != 0 ]; then
      sed 's/^/    | /' "$ST/$h/starter.log" >&2; die "host $h failed to start (see $ST/$h/starter.log)"
    fi
    vsh "$h" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  sed 's/^/    | /' "$ST/$h/starter.log" >&2; die "host $h libvirtd not answering after 60 s"
}

make_mountpoints() {
  local b m
  for b in "${BINDS[@]}"; do
    m=${b#*:}
    if [ -e "$m" ] || [ -L "$m" ]; then
      [ -d "$m" ] || die "$m exists and is not a directory"
    else
      mkdir -p "$m"; echo "$m" >> "$ST/created-mountpoints"
      log "created missing mountpoint $m on the real machine (removed again by 'down')"
    fi
  done
  if [ ! -e /run/netns ]; then echo /run/netns >> "$ST/created-mountpoints"; fi
}

cmd_up() {
  local t0 h ns c; t0=$(now)
  [ "$(id -u)" = 0 ] || die "must run as root"
  for c in virsh libvirtd virtlogd ip unshare nsenter setsid timeout awk "$PY"; do
    command -v "$c" >/dev/null || die "missing $c"
  done
  [ ${#PREFIX} -le 12 ] || die "TWOHOST_PREFIX too long (veth names are limited to 15 chars)"
  [[ $PREFIX =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] || die "TWOHOST_PREFIX must be [A-Za-z0-9_-]"
  for h in "${HOSTS[@]}"; do
    netns_exists "$(ns_of "$h")" && die "netns $(ns_of "$h") exists - run '$0 down' first (same TWOHOST_PREFIX)"
  done
  if [ -z "$ST" ]; then
    mkdir -p "$STROOT"
    if [ -L "$STROOT/$PREFIX.current" ]; then
      local old; old=$(readlink "$STROOT/$PREFIX.current")
      [ -f "$old/.twohost-state" ] && [ -n "$(ST=$old; lvpid a || lvpid b || true)" ] \
        && die "lab $PREFIX already running (state $old) - run '$0 down' first"
    fi
    ST=$(mktemp -d "$STROOT/$PREFIX.XXXXXX")
    ln -sfn "$ST" "$STROOT/$PREFIX.current"
  else
    case $ST in /*/*) ;; *) die "TWOHOST_STATE must be an absolute path below /" ;; esac
    if [ -d "$ST" ] && [ -n "$(ls -A "$ST")" ]; then
      [ -f "$ST/.twohost-state" ] || die "$ST exists, is not empty and was not made by $0 - refusing to wipe it"
      [ -n "$(lvpid a || lvpid b || true)" ] && die "lab in $ST already running - run '$0 down' first"
      cg_cleanup
      grep -qF " $ST/" /proc/self/mountinfo && die "something is mounted below $ST"
      rm -rf --one-file-system "$ST"
    fi
    mkdir -p "$ST"
  fi
  # unix socket paths are limited to 108 bytes
  [ ${#ST} -le 80 ] || die "state dir path too long for unix sockets: $ST"
  touch "$ST/.twohost-state"; echo "$PREFIX" > "$ST/prefix"
  # from here on, a failure tears down what was made so far
  trap 'rc=$?; if [ $rc != 0 ]; then log "up failed (rc=$rc) - cleaning up"; TWOHOST_KEEP=1 cmd_down || true; fi' EXIT
  write_reaper "$ST/reaper.py"
  # cgroup mounts of the root mount namespace: "<mountpoint> <fstype> <options>"
  awk '{ n=index($0," - "); split(substr($0,1,n-1),a," "); split(substr($0,n+3),b," ")
         if ((b[1]=="cgroup" || b[1]=="cgroup2") && a[5] ~ "^/sys/fs/cgroup/") {
           o=""; m=split(b[3],x,","); for(i=1;i<=m;i++) if (x[i] !~ /^release_agent=/) o=o (o==""?"":",") x[i]
           print a[5], b[1], o } }' /proc/self/mountinfo > "$ST/cgmounts"
  make_mountpoints
  log "state $ST; netns $(ns_of a) <-veth-> $(ns_of b), ${IP[a]} / ${IP[b]}"
  ip netns add "$(ns_of a)"; echo "$(ns_of a)" >> "$ST/netns.list"
  ip netns add "$(ns_of b)"; echo "$(ns_of b)" >> "$ST/netns.list"
  ip link add "$PREFIX-va" netns "$(ns_of a)" type veth peer name "$PREFIX-vb" netns "$(ns_of b)"
  for h in "${HOSTS[@]}"; do
    ns=$(ns_of "$h")
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "${IP[$h]}/30" dev "$PREFIX-v$h"
    ip -n "$ns" link set "$PREFIX-v$h" up
    write_config "$h"
  done
  [ -d "$ST/a/cache/qemu/capabilities" ] && log "qemu capabilities cache seeded from $CAPCACHE"
  for h in "${HOSTS[@]}"; do start_host "$h"; done
  for h in "${HOSTS[@]}"; do wait_libvirtd "$h" "$ST/$h/starter.rc"; done
  # cross-host TCP check over the veth: virsh inside netns a -> libvirtd b and back
  [ "$(ip netns exec "$(ns_of a)" virsh -q -c "$(uri_tcp b)" hostname)" = "$PREFIX-b" ] || die "a cannot reach b's libvirtd over tcp"
  [ "$(ip netns exec "$(ns_of b)" virsh -q -c "$(uri_tcp a)" hostname)" = "$PREFIX-a" ] || die "b cannot reach a's libvirtd over tcp"
  for h in "${HOSTS[@]}"; do log "host $h: libvirtd $(lvpid "$h"), $(uri_unix "$h")$( [ -z "$(rootfs_of "$h")" ] || echo ", chroot $(rootfs_of "$h")")"; done
  capcache_save_all
  trap - EXIT
  log "up done in $(since "$t0") s"
}

# ---------------------------------------------------------------- restart
cmd_restart() {
  local h=$1 t0 p vl n; t0=$(now); need_state
  vl=$(vlpid "$h") || die "host $h: virtlogd not running (is the lab up?)"
  if p=$(lvpid "$h"); then
    kill "$p" 2>/dev/null || true
    waitgone "$p" 150 || die "host $h: libvirtd $p did not stop within 15 s"
  fi
  rm -f "$ST/$h/run/libvirtd.pid"
  n=$(date +%s%N)
  (
    cg_join "$h" "$BASHPID" || exit 1
    exec setsid env -i PATH="$DPATH" HOME=/root LC_ALL=C \
      "$PY" -I "$ST/reaper.py" "$ST/$h/reaper.$n.pid" "$ST/$h/restart.$n.rc" \
      nsenter -t "$vl" -m -n -u -C $(chroot_opts "$h") -- libvirtd -d -l -p /run/libvirt/libvirtd.pid \
      </dev/null >>"$ST/$h/starter.log" 2>&1 &
  ) || die "host $h: could not join its cgroups"
  echo "$ST/$h/reaper.$n.pid" >> "$ST/reapers.list"
  wait_libvirtd "$h" "$ST/$h/restart.$n.rc"
  log "host $h: libvirtd restarted (pid $(lvpid "$h")) in $(since "$t0") s"
}

# ---------------------------------------------------------------- down
stop_host() {
  local h=$1 ns p dom; ns=$(ns_of "$h")
  if [ -n "$ST" ] && p=$(lvpid "$h"); then
    for dom in $(timeout 20 virsh -q -c "$(uri_unix "$h")" list --name 2>/dev/null); do
      timeout 20 virsh -q -c "$(uri_unix "$h")" destroy "$dom" >/dev/null 2>&1 || true
    done
    kill "$p" 2>/dev/null || true
    waitgone "$p" 100 || log "WARN: host $h libvirtd $p still alive"
  fi
  if [ -n "$ST" ] && p=$(vlpid "$h"); then
    kill "$p" 2>/dev/null || true; waitgone "$p" 50 || true
  fi
  # only a netns this state recorded as created (or, with no state at all, a stale one of
  # this prefix) is ours; never touch the netns of a lab that merely shares the prefix
  if [ -n "$ST" ] && [ -f "$ST/.twohost-state" ] && ! grep -qx "$ns" "$ST/netns.list" 2>/dev/null; then
    return 0
  fi
  if netns_exists "$ns"; then
    # anything still inside our netns was started by us (qemu, stuck daemons, exec leftovers)
    for p in $(ip netns pids "$ns" 2>/dev/null); do
      log "host $h: kill leftover pid $p ($(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-60))"
      kill -9 "$p" 2>/dev/null || true
    done
    for p in $(ip netns pids "$ns" 2>/dev/null); do waitgone "$p" 50 || true; done
    ip netns del "$ns" 2>/dev/null || log "WARN: could not delete netns $ns"
  fi
  if [ -n "$ST" ] && [ -f "$ST/netns.list" ]; then
    netns_exists "$ns" || sed -i "/^$ns\$/d" "$ST/netns.list"
  fi
  return 0
}

remove_mountpoints() {
  [ -n "$ST" ] && [ -f "$ST/created-mountpoints" ] || return 0
  local m keep=()
  while IFS= read -r m; do
    [ -n "$m" ] || continue
    if [ ! -e "$m" ]; then continue; fi
    if [ "$m" = /run/netns ]; then
      # made by `ip netns add` (a shared self-bind mount); undo only if no netns is left in it
      if [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
        while awk '$5=="/run/netns"{f=1} END{exit !f}' /proc/self/mountinfo; do umount /run/netns || break; done
        rmdir /run/netns 2>/dev/null || keep+=("$m")
      else keep+=("$m"); fi
      continue
    fi
    if mounted_anywhere "$m"; then log "keeping $m: still a mountpoint in some namespace"; keep+=("$m"); continue; fi
    rmdir "$m" 2>/dev/null || { log "keeping $m: not empty"; keep+=("$m"); }
  done < <(sort -ru "$ST/created-mountpoints")
  if [ ${#keep[@]} = 0 ]; then rm -f "$ST/created-mountpoints"; else printf '%s\n' "${keep[@]}" > "$ST/created-mountpoints"; fi
}

leftovers() {  # print anything of ours still present
  local h p f
  for h in "${HOSTS[@]}"; do
    if [ -z "$ST" ] || grep -qx "$(ns_of "$h")" "$ST/netns.list" 2>/dev/null; then
      netns_exists "$(ns_of "$h")" && echo "netns $(ns_of "$h")"
    fi
    [ -n "$ST" ] || continue
    for p in libvirtd virtlogd; do pidfile_alive "$ST/$h/run/$p.pid" >/dev/null && echo "$p of host $h"; done
  done
  [ -n "$ST" ] || return 0
  if [ -f "$ST/reapers.list" ]; then
    while IFS= read -r f; do p=$(pidfile_alive "$f") && echo "reaper $p ($f)"; done < "$ST/reapers.list"
  fi
  [ -f "$ST/cgroups.list" ] && awk '{print "cgroup " $2}' "$ST/cgroups.list" | sort -u
  grep -F " $ST/" /proc/self/mountinfo | sed 's/^/mount /'
  return 0
}

cmd_down() {
  local t0 h left f p; t0=$(now)
  for h in "${HOSTS[@]}"; do stop_host "$h"; done
  if [ -n "$ST" ] && [ -f "$ST/reapers.list" ]; then
    # reapers exit by themselves once their descendants are gone
    while IFS= read -r f; do
      if p=$(pidfile_alive "$f"); then
        waitgone "$p" 30 || { log "kill reaper $p"; kill "$p" 2>/dev/null || true; waitgone "$p" 20 || true; }
      fi
    done < "$ST/reapers.list"
  fi
  cg_cleanup
  [ -n "$ST" ] && [ -d "$ST/a/cache/qemu/capabilities" ] && capcache_save_all
  remove_mountpoints
  left=$(leftovers)
  if [ -n "$left" ]; then
    log "WARN: leftovers:"; printf '%s\n' "$left" >&2
    log "down done in $(since "$t0") s (state kept in $ST because of leftovers)"
    return 1
  fi
  if [ -n "$ST" ] && [ -f "$ST/.twohost-state" ]; then
    if [ "${TWOHOST_KEEP:-0}" = 1 ]; then
      log "state kept in $ST (TWOHOST_KEEP=1)"
    else
      rm -rf --one-file-system "$ST"
    fi
  fi
  if [ -L "$STROOT/$PREFIX.current" ] && [ "$(readlink "$STROOT/$PREFIX.current")" = "$ST" ] && [ "${TWOHOST_KEEP:-0}" != 1 ]; then
    rm -f "$STROOT/$PREFIX.current"
  fi
  log "down done in $(since "$t0") s (nothing left: netns, daemons, qemu, cgroups, mounts)"
}

cmd_status() {
  local h p
  echo "prefix $PREFIX, state ${ST:-<none>}"
  [ -n "$ST" ] || return 0
  for h in "${HOSTS[@]}"; do
    if p=$(lvpid "$h"); then
      echo "host $h: libvirtd $p, netns $(ns_of "$h"), $(uri_unix "$h")"
      echo "    domains: $(vsh "$h" list --all --name | xargs echo)"
      ip netns pids "$(ns_of "$h")" | xargs -r ps -o pid=,ppid=,comm= -p | sed 's/^/    /'
    else echo "host $h: not running"; fi
  done
}

cmd=${1:-}; [ $# -gt 0 ] && shift
[ "$cmd" = up ] || resolve_state
case $cmd in
  up)      cmd_up ;;
  down)    cmd_down ;;
  status)  cmd_status ;;
  state)   need_state; echo "$ST" ;;
  uri)     is_host "${1:-}"; need_state; uri_unix "$1" ;;
  tcp-uri) is_host "${1:-}"; uri_tcp "$1" ;;
  virsh)   is_host "${1:-}"; need_state; h=$1; shift; vsh "$h" "$@" ;;
  exec)    is_host "${1:-}"; need_state; h=$1; shift; [ $# -gt 0 ] || die "exec: no command"; inhost "$h" "$@" ;;
  restart) is_host "${1:-}"; cmd_restart "$1" ;;
  *) sed -n '2,50p' "$0"; exit 2 ;;
esac
