#!/usr/bin/env bash
# Build the root filesystem of aegis-ee-base, the base image of Aegis's execution
# environment (EE): Debian bookworm minbase with Python 3 and pip. ansible-builder adds
# ansible-core, ansible-runner, the collections and the system packages of bindep.txt on
# top (execution-environment.yml); nothing here is Ansible-specific.
#
# usage: build-ee-base.sh ROOTFS_DIR MIRROR OUTPUT_TARBALL
# The package list is packages.txt beside this script; changing either file changes the
# recipe hash and so triggers a rebuild.
set -euo pipefail

rootfs=$1 mirror=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
include=$(grep -v '^\s*#' "$here/packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')

echo "aegis-ee-base: debootstrap bookworm from $mirror into $rootfs" >&2
debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$mirror" >&2

in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# No identity in an image that runs playbooks as a throw-away container.
: > "$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$rootfs/etc/hosts"

# apt's package lists stay in the image: ansible-builder's install-from-bindep runs
# `apt-get install` (options.package_manager_path) for bindep.txt's packages, and
# playbooks/audit.yml runs `apt-get download` on the control node, i.e. inside the EE.
# The build host's local CAs (update-ca-certificates' /usr/local/share/ca-certificates):
# ansible-builder's stages reach the package index with pip through whatever this host
# trusts (an egress proxy's CA, a company CA), and so do playbooks run in the EE.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  install -d "$rootfs/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  in_root update-ca-certificates >&2
fi

cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
in_root apt-get update -q >&2
: > "$rootfs/etc/resolv.conf"
in_root apt-get clean
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
       "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log

echo "aegis-ee-base: packing $out" >&2
tar --numeric-owner --xattrs -C "$rootfs" -c . | zstd -q -T0 -3 -o "$out.tmp"
mv "$out.tmp" "$out"
