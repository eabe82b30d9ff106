# source me: private arm64 apt state for the nested lab.
# NESTED_CACHE (default /var/cache/abiguard-lab/nested) holds a copy of the armlab's private
# apt state ($ARMLAB_CACHE/apt, made by `tests/lab/armlab.sh fetch`), the QEMU debs and the
# unpacked stages. Nothing of the host's apt state is read or written.
ND=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ARMLAB_CACHE=${ARMLAB_CACHE:-/var/cache/abiguard-lab/armlab}
NESTED_CACHE=${NESTED_CACHE:-/var/cache/abiguard-lab/nested}
APTDIR=$NESTED_CACHE/apt
# shellcheck source=apt-private.sh
. "$ND/../apt-private.sh"
private_apt_options "$APTDIR"
# first use: copy the armlab's private apt state (read only) and make one sources file per suite
if [ ! -d "$APTDIR" ]; then
    [ -d "$ARMLAB_CACHE/apt" ] || { echo "nested: no $ARMLAB_CACHE/apt: run tests/lab/armlab.sh fetch first" >&2; exit 1; }
    mkdir -p "$NESTED_CACHE" && cp -a "$ARMLAB_CACHE/apt" "$APTDIR"
fi
for _s in bookworm sid trixie; do
    [ -e "$APTDIR/etc/sources.$_s.list" ] || grep " $_s main" "$APTDIR/etc/sources.list" > "$APTDIR/etc/sources.$_s.list" || true
done
