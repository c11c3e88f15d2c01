#!/bin/sh
# Boots one test host of tests/it/hosts.rs. Runs as root inside the host's
# network namespace and a fresh private mount and UTS namespace
# (`ip netns exec NS unshare --mount --uts --propagation private`), so every
# mount below dies with the host's processes and never touches the real
# machine. Environment (set by hosts.rs, besides PATH):
#   HOST_DIR   this host's directory (upper/work dirs, logs, sshd_config)
#   MACHINE    the machine's name, CONFIG its rendered final Ignition
#   IGNITION   Debian's full ignition binary
#   STANDIN    the systemctl stand-in to install
# Exit 10: Ignition failed (its log, which holds private keys, is in
# $HOST_DIR/ignition.log, mode 0600). Otherwise it ends by exec'ing sshd.
set -eu
cd /
hostname "$MACHINE"

# A writable view of each directory a bootstrap writes to: an overlay whose
# upper dir is this host's own. The upper dir carries the lower dir's mode
# and owner, which the merged directory shows (sshd's StrictModes checks it).
for d in etc home var opt usr/bin usr/local root; do
    name=$(echo "$d" | tr / _)
    mkdir -p "$HOST_DIR/upper/$name" "$HOST_DIR/work/$name"
    chmod --reference="/$d" "$HOST_DIR/upper/$name"
    chown --reference="/$d" "$HOST_DIR/upper/$name"
    mount -t overlay "mh-$MACHINE" \
        -o "lowerdir=/$d,upperdir=$HOST_DIR/upper/$name,workdir=$HOST_DIR/work/$name" "/$d"
done
mount -t tmpfs -o mode=0755 "mh-$MACHINE-run" /run
mkdir -p /run/sshd

# Name resolution that never waits: the host's own name, no DNS server.
echo "127.0.1.1 $MACHINE" >>/etc/hosts
rm -f /etc/resolv.conf
echo "# test host $MACHINE: no DNS" >/etc/resolv.conf

# The machine's first boot: Debian's Ignition applies its final config to
# / (the overlays). It always relabels for SELinux: a disabled policy and
# a no-op setfiles.
mkdir -p /etc/selinux "$HOST_DIR/ignition/bin"
chmod 0700 "$HOST_DIR/ignition" # its config cache holds the host key
printf 'SELINUX=disabled\nSELINUXTYPE=targeted\n' >/etc/selinux/config
printf '#!/bin/sh\nexit 0\n' >"$HOST_DIR/ignition/bin/setfiles"
chmod 0755 "$HOST_DIR/ignition/bin/setfiles"
(umask 077 && : >"$HOST_DIR/ignition.log")
for stage in fetch-offline files; do
    if ! env -i PATH="$HOST_DIR/ignition/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        IGNITION_CONFIG_FILE="$CONFIG" \
        "$IGNITION" -platform file -stage "$stage" -log-to-stdout -root / \
        -config-cache "$HOST_DIR/ignition/config.json" \
        -state-file "$HOST_DIR/ignition/state" \
        -neednet "$HOST_DIR/ignition/neednet" >>"$HOST_DIR/ignition.log" 2>&1; then
        echo "boot: ignition stage $stage failed" >&2
        exit 10
    fi
done

# What Flatcar has and Debian lacks: core may sudo without a password,
# (no systemd here) a systemctl stand-in, found first
# both on sudo's secure_path and on an SSH session's PATH.
usermod -a -G sudo core
echo '%sudo ALL=(ALL:ALL) NOPASSWD: ALL' >/etc/sudoers.d/90-flatcar-sudo
# Every command sudo runs is logged with its arguments: the tests check
# that no key material ever travels in argv.
echo 'Defaults logfile=/var/log/sudo.log, loglinelen=0, !syslog' >>/etc/sudoers.d/90-flatcar-sudo
chmod 0440 /etc/sudoers.d/90-flatcar-sudo
# etcd: Debian's /usr/bin/etcd stands where the etcd extension, merged by
# systemd-sysext, puts it on a real node.
mkdir -p /usr/local/sbin /usr/local/bin
install -m 0755 "$STANDIN" /usr/local/sbin/systemctl
ln -sf /usr/local/sbin/systemctl /usr/local/bin/systemctl

echo "boot: $MACHINE is up, starting sshd"
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/sbin/sshd -D -e -f "$HOST_DIR/sshd_config"
