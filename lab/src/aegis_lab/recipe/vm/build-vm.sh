#!/usr/bin/env bash
# Build the Aegis VM node disk: the node image's packages plus Debian's cloud kernel, as an
# ext4 disk image made with `mkfs.ext4 -d` (no loop mount), and the kernel and initrd for
# qemu's direct kernel boot. Per-VM identity comes from a small seed disk at boot
# (aegis-seed.service): authorized key, pre-generated SSH host keys, hostname.
#
# usage: build-vm.sh WORK_DIR MIRROR NODE_PACKAGES_TXT OUT_DIR
set -euo pipefail

work=$1 mirror=$2 packages=$3 out=$4
rootfs="$work/rootfs"
include=$(grep -hv '^\s*#' "$packages" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
include="$include,linux-image-cloud-amd64,initramfs-tools,udev,e2fsprogs"

echo "aegis-vm: debootstrap bookworm from $mirror (with the cloud kernel)" >&2
debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$mirror" >&2
in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
. "$(cd "$(dirname "$0")/.." && pwd)/apt-updates.sh"
# Security and point-release updates first: before the identity is removed below (an
# upgraded openssh-server would make host keys) and before units are masked or disabled
apply_updates

: > "$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id" "$rootfs"/etc/ssh/ssh_host_*
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$rootfs/etc/fstab"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$rootfs/etc/hosts"
echo aegis-vm > "$rootfs/etc/hostname"

# Identity from the seed disk (LABEL=aegisseed), before sshd starts.
cat > "$rootfs/usr/local/sbin/aegis-seed" <<'SH'
#!/bin/sh
set -eu
dev=/dev/disk/by-label/aegisseed
for i in $(seq 50); do [ -e "$dev" ] && break; sleep 0.1; done
mkdir -p /run/aegis-seed
mount -o ro "$dev" /run/aegis-seed
install -d -m 0700 /root/.ssh
install -m 0600 /run/aegis-seed/authorized_keys /root/.ssh/authorized_keys
for k in /run/aegis-seed/ssh_host_*_key; do
  install -m 0600 "$k" "/etc/ssh/$(basename "$k")"
  install -m 0644 "$k.pub" "/etc/ssh/$(basename "$k").pub"
done
name=$(cat /run/aegis-seed/hostname)
hostname "$name"
echo "$name" > /etc/hostname
# the name resolves locally, as the Debian installer writes it (Lynis NAME-4404)
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$name" > /etc/hosts
umount /run/aegis-seed
SH
chmod 0755 "$rootfs/usr/local/sbin/aegis-seed"
cat > "$rootfs/etc/systemd/system/aegis-seed.service" <<'UNIT'
[Unit]
Description=Aegis VM identity from the seed disk
DefaultDependencies=no
After=systemd-udev-settle.service local-fs.target
Before=ssh.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/aegis-seed
[Install]
WantedBy=multi-user.target
UNIT
in_root systemctl enable aegis-seed.service ssh.service systemd-networkd.service >/dev/null

install -d -m 0755 "$rootfs/etc/ssh/sshd_config.d"
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' \
  > "$rootfs/etc/ssh/sshd_config.d/05-aegis-image.conf"
# DHCP from qemu's user network on the virtio NIC.
install -d -m 0755 "$rootfs/etc/systemd/network"
printf '[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n' > "$rootfs/etc/systemd/network/10-aegis.network"
for unit in systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
            fstrim.timer getty@tty1.service systemd-networkd-wait-online.service; do
  in_root systemctl mask "$unit" >/dev/null 2>&1 || true
done
install -d -m 0755 "$rootfs/etc/systemd/journald.conf.d"
# Journal forwarding is off until aegis.fleet.harden gets a collector URL; the collector
# side (systemd-journal-remote) never runs on a node.
for unit in systemd-journal-upload.service systemd-journal-remote.socket systemd-journal-remote.service; do
  in_root systemctl disable "$unit" >/dev/null 2>&1 || true
done
# fail2ban and the daily AIDE check are off until aegis.fleet.harden configures them: Debian's
# sshd jail watches /var/log/auth.log, which a journal-only node lacks (fail2ban would fail
# and the node boot "degraded"), and AIDE has no baseline before the role makes one.
for unit in fail2ban.service dailyaidecheck.timer; do
  in_root systemctl disable "$unit" >/dev/null 2>&1 || true
done
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' > "$rootfs/etc/systemd/journald.conf.d/10-aegis.conf"

in_root apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*

mkdir -p "$out.tmp"
cp "$(readlink -f "$rootfs/vmlinuz")" "$out.tmp/vmlinuz"
cp "$(readlink -f "$rootfs/initrd.img")" "$out.tmp/initrd.img"
echo "aegis-vm: writing the ext4 disk image" >&2
mkfs.ext4 -q -L aegisroot -d "$rootfs" "$out.tmp/disk.raw" 3G >&2
rm -rf "$out"
mv "$out.tmp" "$out"
