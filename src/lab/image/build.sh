#!/bin/sh
# Builds metalherd's lab node image: a Debian kernel and an initrd whose
# /init runs Debian's Ignition and then switch_roots into a Debian root
# with systemd and OpenSSH. Node software (etcd) is not in the image: as on
# Flatcar, it arrives as a system extension; this script only downloads
# the Debian packages those extensions are built from. Run by
# src/lab/image.rs (as root):
#
#   sh build.sh SUITE MIRROR PACKAGES WORK OUT [DEBS]
#
# SUITE    Debian suite (bookworm)
# MIRROR   Debian mirror URL
# PACKAGES comma-separated packages for the root
# WORK     empty scratch directory (holds `init`; the chroot goes here);
#          the caller deletes it
# OUT      directory that receives vmlinuz, initrd.img and packages.txt
# DEBS     comma-separated packages downloaded (not installed) as .deb files
#          into OUT/debs/ by the root's apt, which checks each against
#          Debian's signed archive index
#
# Progress: one line per step on stdout ("step NAME more words"); what the
# programs print goes to stderr.
set -eu

suite=$1 mirror=$2 packages=$3 work=$4 out=$5 debs=${6:-}
exec 3>&1 1>&2
step() { echo "step $*" >&3; }

root=$work/root
export LC_ALL=C.UTF-8

step "mmdebstrap $suite (downloads ~200 MB)"
# - No initramfs: the kernel's postinst would build one we do not use;
#   update-initramfs is diverted to a no-op before the kernel is installed.
# - Docs, man pages, locales, and kernel modules a QEMU VM without disks
#   never needs are not unpacked: the root lives in RAM, compressed, on
#   every VM. Dropped: these module directories, but for the ones kept.
drop_modules="sound net/bluetooth net/mac80211 net/wireless
	drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet
	drivers/infiniband drivers/iio drivers/staging drivers/comedi drivers/isdn
	drivers/bluetooth drivers/usb drivers/scsi drivers/hwmon drivers/platform
	drivers/mtd drivers/mmc drivers/target drivers/nfc drivers/atm
	drivers/firewire drivers/parport drivers/pcmcia drivers/memstick
	drivers/thunderbolt fs"
keep_modules="drivers/net/ethernet/intel/e1000/ drivers/net/ethernet/intel/e1000e/
	drivers/scsi/scsi_mod.ko drivers/scsi/scsi_common.ko drivers/scsi/sd_mod.ko
	drivers/scsi/virtio_scsi.ko fs/overlayfs/ fs/squashfs/ fs/ext4/ fs/jbd2/
	fs/mbcache.ko fs/fat/ fs/isofs/ fs/fuse/ fs/nls/ fs/autofs/ fs/binfmt_misc.ko
	fs/efivarfs/ fs/pstore/ fs/quota/ fs/fscache/ fs/netfs/ fs/9p/ fs/erofs/"
set --
for d in $drop_modules; do
	set -- "$@" --dpkgopt="path-exclude=/lib/modules/*/kernel/$d/*"
done
for k in $keep_modules; do
	case "$k" in */) k="$k*" ;; esac
	set -- "$@" --dpkgopt="path-include=/lib/modules/*/kernel/$k"
done
# The extension packages: downloaded by the root's apt while its index is
# there (mmdebstrap deletes it, and /tmp, at the end).
set -- "$@" --customize-hook='mkdir -p "$1/var/lib/metalherd-debs"'
if [ -n "$debs" ]; then
	set -- "$@" --customize-hook="chroot \"\$1\" sh -c 'cd /var/lib/metalherd-debs && apt-get download -q $(echo "$debs" | tr , ' ')'"
fi
mmdebstrap --variant=minbase --mode=root --format=directory \
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	--aptopt='APT::Install-Recommends "false"' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	"$@" \
	--essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.real --add /usr/sbin/update-initramfs && printf "#!/bin/sh\nexit 0\n" >"$1/usr/sbin/update-initramfs" && chmod 755 "$1/usr/sbin/update-initramfs"' \
	--include="$packages" \
	"$suite" "$root" "$mirror"

step "configure root"
set -- "$root"/usr/lib/modules/*
[ $# -eq 1 ] || { echo "expected one kernel in $root/usr/lib/modules, found: $*"; exit 1; }
kver=${1##*/}
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
rm -rf "$root"/boot/* "$root"/vmlinuz* "$root"/initrd.img*
chroot "$root" depmod "$kver"
chroot "$root" dpkg-query -W -f '${Package}=${Version}\n' >"$out/packages.txt"
mkdir -p "$out/debs"
if [ -n "$debs" ]; then
	mv "$root"/var/lib/metalherd-debs/*.deb "$out/debs/"
fi
rm -rf "$root/var/lib/metalherd-debs"

# Debian's Ignition relabels for SELinux after writing files: give it a
# config to read and a setfiles that does nothing.
mkdir -p "$root/etc/selinux"
printf 'SELINUX=disabled\nSELINUXTYPE=targeted\n' >"$root/etc/selinux/config"
printf '#!/bin/sh\n# metalherd lab: no SELinux here; Ignition calls this to relabel.\nexit 0\n' \
	>"$root/usr/sbin/setfiles"
chmod 755 "$root/usr/sbin/setfiles"

# sshd: the keys Ignition writes, no passwords, and only the host key
# Ignition delivers (openssh-server's install generated keys of its own).
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/ssh/sshd_config.d/metalherd.conf" <<'EOF'
AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys.d/ignition
PasswordAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
EOF

# Ignition's disks stage (partitions, RAID, LUKS, filesystems). Flatcar's
# initramfs runs it under systemd, which Ignition asks over D-Bus for the
# devices; the lab's /init has no systemd, so it runs here, first thing in
# the real root, from the config /init's fetch stage cached, before any
# local filesystem is mounted, then deletes that cache. (The files stage
# ran in /init already: what Ignition would write into a filesystem
# declared here, the crypttab of a LUKS volume included, stays on the RAM
# root; lab VMs never boot twice.)
# Its log holds the config, private host key included: root only.
cat >"$root/etc/systemd/system/metalherd-lab-ignition-disks.service" <<'EOF'
[Unit]
Description=Ignition disks stage, as Flatcar's initramfs runs it
DefaultDependencies=no
ConditionPathExists=/run/metalherd-lab/ignition.json
Wants=systemd-udev-trigger.service
After=systemd-udevd.service systemd-udev-trigger.service
Before=local-fs-pre.target
Wants=local-fs-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=PATH=/usr/sbin:/usr/bin:/sbin:/bin
ExecStart=/bin/sh -c 'exec /usr/lib/dracut/modules.d/30ignition/ignition -platform metal -root / -stage disks -config-cache /run/metalherd-lab/ignition.json -state-file /run/metalherd-lab/ignition.state -neednet /run/metalherd-lab/ignition.neednet -log-to-stdout >>/run/metalherd-lab/ignition.log 2>&1'
ExecStartPost=/bin/sh -c 'rm -f /run/metalherd-lab/ignition.json; echo "metalherd-lab: ignition disks stage done" >/dev/console'
ExecStopPost=/bin/sh -c '[ "$$SERVICE_RESULT" = success ] || { rm -f /run/metalherd-lab/ignition.json; echo "metalherd-lab: ignition disks stage FAILED ($$SERVICE_RESULT; its log: /run/metalherd-lab/ignition.log)" >/dev/console; }'

[Install]
WantedBy=local-fs-pre.target
EOF

# First boot: systemd applies the presets (Ignition's enables its units)
# only when the machine ID is "uninitialized".
echo uninitialized >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
mkdir -p "$root/etc/systemd/system-preset"
cat >"$root/etc/systemd/system-preset/80-metalherd-lab.preset" <<'EOF'
enable systemd-networkd.service
enable systemd-networkd.socket
enable systemd-networkd-wait-online.service
enable ssh.service
enable getty@.service
enable metalherd-lab-ignition-disks.service
EOF
echo 'disable *' >"$root/etc/systemd/system-preset/99-metalherd-lab-default.preset"
# Presets on first boot only enable; what packages enabled at install
# stays enabled: the timers are not wanted on a lab VM.
chroot "$root" systemctl disable apt-daily.timer apt-daily-upgrade.timer \
	dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer
chroot "$root" systemctl enable systemd-networkd.service ssh.service metalherd-lab-ignition-disks.service
chroot "$root" systemctl mask systemd-firstboot.service

# Ignition creates the core user; it may use sudo without a password.
echo 'core ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/core"
chmod 0440 "$root/etc/sudoers.d/core"

# mmdebstrap copied these from the build host.
echo metalherd-lab >"$root/etc/hostname"
rm -f "$root/etc/resolv.conf"
: >"$root/etc/resolv.conf"

step "initrd"
# The second cpio: busybox, the modules /init loads (with the root's kmod:
# the build host needs none), /init. Assembled inside the root, then
# moved out before the root is packed.
init=$root/tmp/initrd
mkdir -p "$init/bin" "$init/lib/modules/$kver"
cp "$root/usr/bin/busybox" "$init/bin/busybox"
cp "$work/init" "$init/init"
chmod 755 "$init/init" "$init/bin/busybox"
for m in virtio_pci virtio_net loop squashfs overlay; do
	chroot "$root" modprobe -S "$kver" --show-depends "$m"
done >"$work/modules.txt"
while read -r kind path _; do
	[ "$kind" = insmod ] || continue
	rel=${path#/lib/modules/"$kver"/}
	mkdir -p "$init/lib/modules/$kver/${rel%/*}"
	cp "$root$path" "$init/lib/modules/$kver/$rel"
done <"$work/modules.txt"
cp "$root/usr/lib/modules/$kver/modules.builtin" "$root/usr/lib/modules/$kver/modules.order" \
	"$init/lib/modules/$kver/"
chroot "$root" depmod -b /tmp/initrd "$kver"
mv "$init" "$work/cpio-init"
init=$work/cpio-init

step "squashfs"
# The first cpio holds the root, uncompressed, as a zstd squashfs (level
# 9: 6% larger than the default 15, built in a tenth of the time).
mkdir "$work/cpio-root"
mksquashfs "$root" "$work/cpio-root/root.squashfs" -comp zstd -Xcompression-level 9 -noappend -no-progress

step "cpio"
# An uncompressed cpio works only at a 4-byte-aligned offset: first.
(cd "$work/cpio-root" && echo root.squashfs | cpio -o -H newc --quiet) >"$out/initrd.img"
(cd "$init" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9n) >>"$out/initrd.img"
step "done"
