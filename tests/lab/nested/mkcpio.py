#!/usr/bin/env python3
# minimal, deterministic cpio "newc" writer (no cpio binary needed, no mknod)
import gzip
import os
import stat
import sys

root, out = sys.argv[1], sys.argv[2]
entries = []
for dp, dns, fns in os.walk(root):
    dns.sort(); fns.sort()
    for n in dns + fns:
        p = os.path.join(dp, n)
        entries.append((os.path.relpath(p, root), os.lstat(p)))
ino = [1000]
def rec(name, mode, data=b"", rdev=(0, 0), nlink=1):
    ino[0] += 1
    nb = name.encode() + b"\0"
    hdr = f"070701{ino[0]:08X}{mode:08X}{0:08X}{0:08X}{nlink:08X}{0:08X}{len(data):08X}{0:08X}{0:08X}{rdev[0]:08X}{rdev[1]:08X}{len(nb):08X}{0:08X}"
    b = hdr.encode() + nb
    b += b"\0" * (-len(b) % 4)
    b += data + b"\0" * (-len(data) % 4)
    return b
parts = []
for name, st in sorted(entries):
    m = st.st_mode
    perm = stat.S_IMODE(m)
    if stat.S_ISDIR(m):
        parts.append(rec(name, stat.S_IFDIR | perm, nlink=2))
    elif stat.S_ISLNK(m):
        parts.append(rec(name, stat.S_IFLNK | 0o777, os.readlink(os.path.join(root, name)).encode()))
    elif stat.S_ISREG(m):
        with open(os.path.join(root, name), "rb") as f:
            parts.append(rec(name, stat.S_IFREG | perm, f.read()))
# the kernel opens /dev/console before running /init: provide the node
parts.append(rec("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
parts.append(rec("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)))
parts.append(rec("TRAILER!!!", 0))
raw = b"".join(parts)
with open(out, "wb") as f:   # ARMLAB_INITRD_COMPRESS=none: plain cpio (the kernel accepts both)
    f.write(raw if os.environ.get("ARMLAB_INITRD_COMPRESS", "gzip") == "none"
            else gzip.compress(raw, compresslevel=6, mtime=0))
print(f"initramfs: {len(parts)} entries, {len(raw) / 2**20:.1f} MiB raw, "
      f"{os.path.getsize(out) / 2**20:.1f} MiB written -> {out}", file=sys.stderr)
