#!/bin/sh
# Builds metalherd's lab node image: a Debian kernel and an initrd whose
# /init starts systemd in an initrd, which runs Debian's Ignition as
# Flatcar's initramfs does and then switches into a Debian root with
# systemd and OpenSSH. Node software (etcd) is not in the image: as on
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
	fs/xfs/ fs/mbcache.ko fs/fat/ fs/isofs/ fs/fuse/ fs/nls/ fs/autofs/ fs/binfmt_misc.ko
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

# Ignition runs as on Flatcar: in the initrd, under systemd, with the real
# root at /sysroot: fetch, disks (partitions, RAID, LUKS, filesystems, with
# udev), mount (the declared filesystems under /sysroot), files (into
# them), then umount, and systemd switches to the root. /init builds that
# initrd in a tmpfs: the root's /usr (read-only), a copy of its /etc, and
# over it what is below, in /usr/lib/metalherd-lab/initrd.
# Ignition's output holds the config, private host key included: it goes
# to /run/metalherd-lab/ignition.log (root only), never to the journal or
# the console.
lab=$root/usr/lib/metalherd-lab
initrd_etc=$lab/initrd/etc
units=$initrd_etc/systemd/system
mkdir -p "$units/initrd.target.requires" "$units/initrd-switch-root.target.wants" \
	"$initrd_etc/udev/rules.d"
cat >"$initrd_etc/initrd-release" <<'EOF'
NAME="metalherd lab initrd"
ID=debian
VERSION_ID=12
EOF
cp "$root/usr/lib/dracut/modules.d/30ignition/99-xx-ignition-systemd-cryptsetup.rules" \
	"$initrd_etc/udev/rules.d/"
# As dracut's dm module (Flatcar's initramfs is dracut's): device-mapper
# devices opened here (a LUKS volume Ignition made) keep their udev
# records across the switch, or the root's udev ignores them and systemd
# waits for their devices forever.
cat >"$initrd_etc/udev/rules.d/11-dm.rules" <<'EOF'
SUBSYSTEM!="block", GOTO="dm_end"
KERNEL!="dm-[0-9]*", GOTO="dm_end"
ACTION!="add|change", GOTO="dm_end"
OPTIONS+="db_persist"
LABEL="dm_end"
EOF
# One unit per stage, in Ignition's own order (its dracut units:
# ignition-{fetch,disks,mount,files}.service).
stage_unit() { # STAGE AFTER BEFORE [UNIT LINES...]
	stage=$1 after=$2 before=$3
	shift 3
	{
		echo "[Unit]"
		echo "Description=Ignition ($stage), as Flatcar's initramfs runs it"
		echo "DefaultDependencies=no"
		echo "ConditionPathExists=/etc/initrd-release"
		echo "OnFailure=metalherd-lab-ignition-failed@$stage.service"
		[ -n "$after" ] && echo "Requires=$after" && echo "After=$after"
		echo "Before=$before metalherd-lab-ignition.target"
		for line in "$@"; do echo "$line"; done
		echo
		echo "[Service]"
		echo "Type=oneshot"
		echo "RemainAfterExit=yes"
		echo "Environment=PATH=/usr/sbin:/usr/bin:/sbin:/bin"
		echo "StandardOutput=append:/run/metalherd-lab/ignition.log"
		echo "StandardError=inherit"
		echo "ExecStartPre=/bin/sh -c 'echo \"metalherd-lab: ignition $stage\" >/dev/console'"
		echo "ExecStart=/usr/lib/metalherd-lab/ignition $stage"
	} >"$units/metalherd-lab-ignition-$stage.service"
}
stage_unit fetch "" metalherd-lab-ignition-disks.service \
	"After=basic.target"
stage_unit disks metalherd-lab-ignition-fetch.service metalherd-lab-ignition-mount.service \
	"Requires=systemd-udevd.service" "After=systemd-udevd.service systemd-udev-trigger.service"
stage_unit mount metalherd-lab-ignition-disks.service metalherd-lab-ignition-files.service \
	"Requires=initrd-root-fs.target" "After=initrd-root-fs.target"
stage_unit files metalherd-lab-ignition-mount.service initrd-parse-etc.service
# Ignition retries a config server that answers 5xx or not at all forever:
# a deadline, long enough for a TCG guest starved by its neighbours.
echo "TimeoutStartSec=300" >>"$units/metalherd-lab-ignition-fetch.service"
echo "ExecStartPost=/bin/sh -c 'echo \"metalherd-lab: ignition disks stage done\" >/dev/console'" \
	>>"$units/metalherd-lab-ignition-disks.service"
echo "ExecStop=/usr/lib/metalherd-lab/ignition umount" >>"$units/metalherd-lab-ignition-mount.service"
echo "ExecStartPost=/bin/sh -c 'echo \"metalherd-lab: ignition done\" >/dev/console'" \
	>>"$units/metalherd-lab-ignition-files.service"
cat >"$units/metalherd-lab-ignition.target" <<'EOF'
[Unit]
Description=Ignition complete (metalherd lab)
Requires=metalherd-lab-ignition-fetch.service metalherd-lab-ignition-disks.service
Requires=metalherd-lab-ignition-mount.service metalherd-lab-ignition-files.service
Before=initrd.target
EOF
ln -s ../metalherd-lab-ignition.target "$units/initrd.target.requires/"
cat >"$units/metalherd-lab-ignition-failed@.service" <<'EOF'
[Unit]
Description=Ignition's %i stage failed: say so and power off
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/usr/lib/metalherd-lab/ignition-failed %i
EOF
# After the umount stage (a stop ordered before this start), before the
# switch: Ignition's cache (the host key) goes, and the NIC goes down
# unconfigured, for the root's udev to rename it.
cat >"$units/metalherd-lab-handover.service" <<'EOF'
[Unit]
Description=Hand the VM over to its root (metalherd lab)
DefaultDependencies=no
After=metalherd-lab-ignition-mount.service
Before=initrd-switch-root.service

[Service]
Type=oneshot
ExecStart=/usr/lib/metalherd-lab/handover
EOF
ln -s ../metalherd-lab-handover.service "$units/initrd-switch-root.target.wants/"

cat >"$lab/ignition" <<'EOF'
#!/bin/sh
# metalherd lab: Ignition's STAGE ($1) on the root at /sysroot.
exec /usr/lib/dracut/modules.d/30ignition/ignition -platform metal -root /sysroot \
	-stage "$1" -config-cache /run/metalherd-lab/ignition.json \
	-state-file /run/metalherd-lab/ignition.state \
	-neednet /run/metalherd-lab/ignition.neednet -log-to-stdout
EOF
cat >"$lab/ignition-failed" <<'EOF'
#!/bin/sh
# metalherd lab: Ignition's stage $1 failed. Says why on the console, in
# words that hold no URL (its token), config text or key, and powers off
# (the lab runs QEMU with -no-shutdown: the VM stays to be looked at).
log=/run/metalherd-lab/ignition.log
stage=$1
# A stage that did not run because an earlier one failed is not failed.
systemctl -q is-failed "metalherd-lab-ignition-$stage.service" || exit 0
case "$stage" in
fetch)
	# "HTTP Forbidden", "connect: connection refused", ...
	result=$(grep -o 'GET result: [A-Za-z ]*' "$log" | tail -n 1)
	error=$(grep 'GET error: ' "$log" | tail -n 1 | sed -n 's/.*: \([a-z][a-z ]*\)$/\1/p')
	if [ -n "$result" ] && [ "$result" != "GET result: OK" ]; then
		why="HTTP ${result#GET result: }"
	elif [ -n "$error" ]; then
		why="no config within 300 s, last error: $error"
	fi
	;;
*)
	# Ignition's own last word ("Ignition failed: ... hash mismatch"), never
	# a line holding config data, a key or the token.
	why=$(grep 'Ignition failed' "$log" | grep -v -e 'data:' -e 'PRIVATE' -e 'token=' |
		tail -n 1 | sed 's/.*Ignition failed: //' | cut -c1-400)
	stage="$stage stage"
	;;
esac
rm -f /run/metalherd-lab/ignition.json
echo "metalherd-lab: ignition FAILED ($stage: ${why:-see the log}; log in $log)" >/dev/console
echo "metalherd-lab: powering off" >/dev/console
sync
exec systemctl --force --force poweroff
EOF
cat >"$lab/handover" <<'EOF'
#!/bin/sh
# metalherd lab: the initrd's last step before systemd switches root.
rm -f /run/metalherd-lab/ignition.json
for nic in $(ls /sys/class/net); do
	[ "$nic" = lo ] && continue
	ip addr flush dev "$nic"
	ip link set "$nic" down
done
echo "metalherd-lab: switching to the root" >/dev/console
EOF
chmod 755 "$lab/ignition" "$lab/ignition-failed" "$lab/handover"

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
EOF
echo 'disable *' >"$root/etc/systemd/system-preset/99-metalherd-lab-default.preset"
# Presets on first boot only enable; what packages enabled at install
# stays enabled: the timers are not wanted on a lab VM.
chroot "$root" systemctl disable apt-daily.timer apt-daily-upgrade.timer \
	dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer
chroot "$root" systemctl enable systemd-networkd.service ssh.service
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
