# Sourced by the arm64 labs: apt options that keep an arm64 apt state entirely under one
# private directory (sources, lists, archives, an empty dpkg status, no pkgcache), so the
# host's apt configuration, lists and package status are never read or written.
private_apt_options() {  # $1: the private apt directory; sets the array APTO
    APTO=(-o "Dir::Etc::SourceList=$1/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$1/lists" -o "Dir::State::status=$1/status"
          -o "Dir::Cache=$1/cache" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
          -o "Dir::Cache::Archives=$1/archives"
          -o APT::Architecture=arm64 -o APT::Architectures=arm64
          -o APT::Sandbox::User=root -o Acquire::Languages=none)
}
