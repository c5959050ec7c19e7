# Sourced by the image build scripts (build-rootfs.sh, vm/build-vm.sh) after debootstrap:
# the point release's updates and the security archive applied at build time. A node is
# patched by rebuilding its image, never in place, so the image must not carry packages
# with known fixes (Lynis PKGS-7392). The apt sources stay in the image for a node switched
# to mutable packages (harden_package_lock: mutable).
# Needs: $rootfs, $mirror (the main archive, e.g. http://deb.debian.org/debian), in_root.
# AEGIS_SECURITY_MIRROR overrides the security archive (default: beside $mirror).
apply_updates() {
  local security=${AEGIS_SECURITY_MIRROR:-${mirror%/debian}/debian-security}
  cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
  [ -s "$rootfs/etc/resolv.conf" ] || cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
  echo "aegis-image: applying bookworm-updates and bookworm-security from $mirror, $security" >&2
  in_root apt-get update -qq >&2
  in_root env DEBIAN_FRONTEND=noninteractive apt-get -y -qq \
    -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef dist-upgrade >&2
}
