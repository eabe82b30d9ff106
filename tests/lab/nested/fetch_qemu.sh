#!/usr/bin/env bash
# fetch_qemu.sh SUITE: download arm64 qemu-system-arm from SUITE plus exactly the
# library packages whose sonames qemu-system-aarch64 needs (readelf -d NEEDED
# closure, resolved through the Depends of packages already selected).
# Output: $NESTED_CACHE/debs-SUITE/*.deb, $NESTED_CACHE/stage-SUITE (dpkg-deb -x of all),
# $NESTED_CACHE/pkgs-SUITE.txt
set -euo pipefail
ND=$(cd "$(dirname "$0")" && pwd); source "$ND/aptenv.sh"
S=$1
# one suite's lists, and a package cache of its own: the closure below asks apt-cache once per
# candidate package, and without a cache each call parses the suite's Packages file again
A=("${APTO[@]}" -o "Dir::Etc::SourceList=$APTDIR/etc/sources.$S.list"
   -o "Dir::Cache::pkgcache=$APTDIR/cache/pkgcache-$S.bin" -o "Dir::Cache::srcpkgcache=$APTDIR/cache/srcpkgcache-$S.bin")
D=$NESTED_CACHE/debs-$S; ST=$NESTED_CACHE/stage-$S
mkdir -p "$D" "$ST" "$APTDIR/cache"
dl() { for p in "$@"; do ls "$D/${p}_"*.deb >/dev/null 2>&1 || (cd "$D" && apt-get "${A[@]}" -q download "$p" >&2); dpkg-deb -x "$D/${p}_"*.deb "$ST"; echo "$p" >> "$D/.have"; done; }
deps() { apt-cache "${A[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances "$1" 2>/dev/null | awk '/Depends:/ {print $2}' | grep -v '^<' || true; }
: > "$D/.have"
dl qemu-system-arm libc6 libgcc-s1 zlib1g   # zlib1g: not lib*-named
for round in 1 2 3 4 5 6; do
  missing=$(python3 "$ND/needed.py" "$ST" usr/bin/qemu-system-aarch64 --missing)
  [ -z "$missing" ] && break
  echo "round $round missing: $missing" >&2
  # candidate packages: Depends of everything selected so far
  cands=$(for p in $(sort -u "$D/.have"); do deps "$p"; done | sort -u)
  new=()
  for c in $cands; do
    grep -qx "$c" "$D/.have" && continue
    case $c in lib*) new+=("$c");; esac
  done
  # only keep candidates that provide a missing soname
  for c in "${new[@]}"; do
    [ -e "$D/.cand_$c" ] && continue; touch "$D/.cand_$c"
    f=$(cd "$D" && ls ${c}_*.deb 2>/dev/null || (apt-get "${A[@]}" -q download "$c" >/dev/null 2>&1 && ls ${c}_*.deb)) || continue
    files=$(dpkg-deb -c "$D/$f" | awk '{print $6}' | sed 's#.*/##')
    hit=0; for m in $missing; do grep -xF "$m" <<<"$files" >/dev/null && hit=1; done
    if [ $hit = 1 ]; then
      dpkg-deb -x "$D/$f" "$ST"; echo "$c" >> "$D/.have"
    else rm -f "$D/$f"; fi
  done
done
python3 "$ND/needed.py" "$ST" usr/bin/qemu-system-aarch64 --missing
sort -u "$D/.have" > "$NESTED_CACHE/pkgs-$S.txt"; ls "$D"/*.deb | xargs -n1 basename > "$NESTED_CACHE/debs-$S.txt"
echo "packages: $(tr '\n' ' ' < "$NESTED_CACHE/pkgs-$S.txt")"
