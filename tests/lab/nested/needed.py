#!/usr/bin/env python3
"""needed.py ROOT BIN [--missing|--list]: DT_NEEDED closure of an arm64 ELF inside ROOT.
--list prints ROOT-relative paths of the resolved libraries (symlinks resolved to files)."""
import os
import subprocess
import sys

root, binp, mode = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "--list")
dirs = ["lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib", "usr/lib"]
def needed(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=False).stdout
    return [l.split("[")[1].split("]")[0] for l in out.splitlines() if "(NEEDED)" in l]
def find(so):
    for d in dirs:
        p = os.path.join(root, d, so)
        if os.path.exists(p):
            return os.path.join(d, so)
found, missing, todo = {}, set(), [binp]
while todo:
    for so in needed(os.path.join(root, todo.pop())):
        if so in found or so in missing: continue
        p = find(so)
        if p: found[so] = p; todo.append(p)
        else: missing.add(so)
if mode == "--missing": print(" ".join(sorted(missing)))
else:
    for _so, p in sorted(found.items()): print(p)
