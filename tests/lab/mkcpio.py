#!/usr/bin/env python3
"""mkcpio.py ROOT OUT: a minimal, deterministic cpio "newc" initramfs (no cpio binary, no
mknod): sorted names, fixed inode numbers, uid/gid 0, mtime 0, gzip mtime 0; /dev/console
and /dev/null added as nodes. ARMLAB_INITRD_COMPRESS=none writes it uncompressed.
Used by armlab.sh and nested/nested_lab.py."""
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
    hdr = "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X" % (
        ino[0], mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0)
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
print("initramfs: %d entries, %.1f MiB raw, %.1f MiB written" % (
    len(parts), len(raw) / 2**20, os.path.getsize(out) / 2**20), file=sys.stderr)
