# Sourced by the lab scripts: the Debian mirror this machine already uses, so the labs
# download from where apt does (first non-security ".../debian" URI of the apt sources,
# deb822 *.sources and one-line *.list files), else deb.debian.org. Reads only.
host_mirror() {
    { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | sed 's/^URIs://' | tr ' ' '\n'
      grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
          sed -E 's/\[[^]]*\]//' | awk '{print $2}'
    } | grep -E '^(https?|file)://.*/debian/?$' | grep -v security | head -n 1 || true
}
debian_mirror() {  # $1: an explicit mirror (may be empty)
    local m=${1:-$(host_mirror)}
    echo "${m:-http://deb.debian.org/debian}"
}
