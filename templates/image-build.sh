#!/usr/bin/env bash
# Builds a small Debian guest image offline from the host's Debian mirror: a root file
# system by debootstrap, its own kernel (vxlan.ko included) with a small initrd for direct
# kernel boot, an empty machine-id, and what building iproute2 from source needs (guests have
# no route to a mirror).
#
# Under software emulation every second of boot counts, and every process started during boot
# competes with the SSH session for the guest's one CPU. So a vxlab guest boots straight into
# `vxlab.target` (`systemd.unit=` on the kernel command line): it unpacks its seed (the SSH
# host key vxlab pinned, root's key), gives the underlay interface its name and address, and
# starts sshd. No udev, journald, getty or cloud-init (whose Python cost about 6 s of every
# boot); systemd itself sets the hostname and machine-id from the command line. Without that
# command line the image boots normally (multi-user, networkd, cloud-init NoCloud): that is
# how vxlab boots images users bring, and how the NoCloud path is tested.
# Rendered by `vxlab image build`; every value is shell-quoted by the renderer.
set -euo pipefail
exec 2>&1
stage() { echo "stage: $*"; }
out={{ dir | sh }}
suite={{ suite | sh }}
mirror={{ mirror | sh }}
root="$out/rootfs"
rm -rf "$root" "$out/base.raw" "$out/vmlinuz" "$out/initrd.img" "$out/recipe"
mkdir -p "$root"
stage "debootstrap $suite from $mirror"
debootstrap --variant=minbase \
  --include=systemd-sysv,openssh-server,iproute2,iputils-ping,udev,kmod,cloud-init,python3-cffi-backend,tcpdump,busybox-static,{{ build_tools | join(sep=",") }} \
  "$suite" "$root" "$mirror"

stage "installing the guest kernel"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -o Acquire::Retries=3 install -y -q --no-install-recommends linux-image-amd64
chroot "$root" apt-get clean

stage "configuring boot"
# Every guest gets its own machine-id (vxlab passes systemd.machine_id=; cloud-init images
# generate one at first boot), and its own host key from the seed.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
echo 'datasource_list: [ NoCloud, None ]' > "$root/etc/cloud/cloud.cfg.d/90_dpkg.cfg"
# The normal boot: networkd applies cloud-init's network-config.
chroot "$root" systemctl enable systemd-networkd.service
cat > "$root/etc/ssh/sshd_config.d/vxlab.conf" <<'SSHD'
# Only the host key vxlab pinned; no PAM session work (motd, logind) per connection.
HostKey /etc/ssh/ssh_host_ed25519_key
UsePAM no
PrintMotd no
PrintLastLog no
SSHD
# Jobs of the normal boot a lab guest does not need. getty-static starts five gettys when
# logind is masked; the ConditionNeedsUpdate jobs would run at every guest's first boot.
for unit in \
    systemd-logind.service dbus.service dbus.socket getty-static.service getty@tty1.service \
    systemd-networkd-wait-online.service systemd-pstore.service \
    systemd-random-seed.service systemd-update-utmp.service \
    systemd-update-utmp-runlevel.service systemd-journal-flush.service \
    systemd-hwdb-update.service ldconfig.service systemd-journal-catalog-update.service \
    systemd-update-done.service systemd-tmpfiles-clean.timer systemd-binfmt.service \
    proc-sys-fs-binfmt_misc.automount sys-kernel-debug.mount sys-kernel-tracing.mount \
    sys-kernel-config.mount sys-fs-fuse-connections.mount dev-hugepages.mount \
    dev-mqueue.mount e2scrub_reap.service e2scrub_all.timer apt-daily.timer \
    apt-daily-upgrade.timer man-db.timer fstrim.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# Generators nothing here needs, masked as units are: each is a process before any unit
# starts (about a second of the boot together). fstab, getty, debug and cloud-init stay.
mkdir -p "$root/etc/systemd/system-generators"
for g in systemd-cryptsetup-generator systemd-gpt-auto-generator \
    systemd-hibernate-resume-generator systemd-integritysetup-generator \
    systemd-rc-local-generator systemd-run-generator systemd-system-update-generator \
    systemd-sysv-generator systemd-veritysetup-generator systemd-bless-boot-generator; do
  ln -sf /dev/null "$root/etc/systemd/system-generators/$g"
done

# The vxlab boot.
cat > "$root/usr/local/sbin/vxlab-seed" <<'SEED'
#!/bin/sh
# Unpacks the seed vxlab wrote for this guest, a tar archive on the raw disk /dev/vdb (the
# SSH host key vxlab pinned and root's authorized key), then names and addresses the
# underlay interface as `vxlab.underlay=NAME,MAC,ADDRESS/PREFIX` on the command line says.
# The initrd loaded the virtio drivers, so the disk and the NIC are there or about to be.
set -eu
wait_for() { # COMMAND...: until it succeeds, for up to 5 s
  i=0
  until "$@"; do
    i=$((i + 1))
    [ "$i" -le 100 ] || { echo "vxlab-seed: gave up waiting for: $*"; exit 1; }
    sleep 0.05
  done
}
wait_for test -b /dev/vdb
tar -x -f /dev/vdb -C / --numeric-owner --no-overwrite-dir
underlay=""
for word in $(cat /proc/cmdline); do
  case "$word" in vxlab.underlay=*) underlay=${word#vxlab.underlay=} ;; esac
done
[ -n "$underlay" ] || { echo "vxlab-seed: no vxlab.underlay= on the command line"; exit 1; }
want=${underlay%%,*}
rest=${underlay#*,}
mac=${rest%%,*}
address=${rest#*,}
have=""
by_mac() {
  for d in /sys/class/net/*; do
    if [ "$(cat "$d/address")" = "$mac" ]; then have=${d##*/}; return 0; fi
  done
  return 1
}
wait_for by_mac
[ "$have" = "$want" ] || ip link set dev "$have" name "$want"
ip link set dev "$want" up
case "$address" in
  *:*) ip -6 addr add "$address" dev "$want" nodad ;;
  *) ip addr add "$address" dev "$want" ;;
esac
echo "vxlab-seed: $want $address, host key and root's key in place"
SEED
chmod 755 "$root/usr/local/sbin/vxlab-seed"
cat > "$root/etc/systemd/system/vxlab.target" <<'UNIT'
[Unit]
Description=vxlab lab guest: seed, underlay address and sshd, nothing else
Requires=vxlab-seed.service vxlab-sshd.service
AllowIsolate=yes
UNIT
cat > "$root/etc/systemd/system/vxlab-seed.service" <<'UNIT'
[Unit]
Description=vxlab seed: pinned SSH keys, underlay name and address
DefaultDependencies=no

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vxlab-seed
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
UNIT
cat > "$root/etc/systemd/system/vxlab-sshd.service" <<'UNIT'
[Unit]
Description=OpenSSH server for vxlab, as soon as the seed is in place
DefaultDependencies=no
Requires=vxlab-seed.service
After=vxlab-seed.service

[Service]
ExecStart=/usr/sbin/sshd -D
Type=notify
KillMode=process
Restart=on-failure
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755
UNIT
echo '/dev/vda / ext4 defaults 0 1' > "$root/etc/fstab"

stage "making the boot files"
# The kernel uncompressed: QEMU loads an ELF kernel itself and enters it directly (PVH), so
# the guest skips decompressing xz under emulation.
kernel=$(ls "$root"/boot/vmlinuz-*)
offset=$(LC_ALL=C grep -m1 -obUaP '\xfd7zXZ\x00' "$kernel" | cut -d: -f1)
tail -c +$((offset + 1)) "$kernel" | xz -dc --single-stream > "$out/vmlinuz" 2>/dev/null || true
head -c 4 "$out/vmlinuz" | grep -q ELF || { echo "cannot unpack $kernel"; exit 1; }
# The initrd: busybox and the drivers for the root disk, the NIC, the RNG and the balloon,
# uncompressed. Initramfs-tools' own, udev and all, took seconds under emulation.
kver=${kernel##*/vmlinuz-}
ird="$root/tmp/vxlab-initrd"
rm -rf "$ird"; mkdir -p "$ird/bin" "$ird/dev" "$ird/proc" "$ird/root" "$ird/modules"
cp "$root/bin/busybox" "$ird/bin/busybox"
for m in virtio_pci virtio_blk ext4 virtio_net virtio_rng virtio_balloon; do
  chroot "$root" modprobe --set-version "$kver" --show-depends "$m"
done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' > "$ird/modules.list"
while read -r ko; do
  cp "$root$ko" "$ird/modules/"
  echo "${ko##*/}"
done < "$ird/modules.list" > "$ird/modules/order"
rm "$ird/modules.list"
cat > "$ird/init" <<'INIT'
#!/bin/busybox sh
# vxlab's initrd: the virtio and ext4 drivers, the root disk mounted, systemd started.
b=/bin/busybox
$b mount -t devtmpfs devtmpfs /dev
$b mount -t proc proc /proc
for m in $($b cat /modules/order); do $b insmod "/modules/$m" 2>/dev/null; done
root=/dev/vda
for w in $($b cat /proc/cmdline); do
  case "$w" in root=*) root=${w#root=} ;; esac
done
i=0
until [ -b "$root" ] || [ "$i" -ge 200 ]; do i=$((i + 1)); $b usleep 25000; done
$b mount -t ext4 -o rw "$root" /root || { echo "vxlab initrd: cannot mount $root"; exec $b sh; }
$b umount /proc
$b mount --move /dev /root/dev
exec $b switch_root /root /sbin/init
INIT
chmod 755 "$ird/init"
(cd "$ird" && find . | chroot "$root" sh -c 'cd /tmp/vxlab-initrd && cpio -o -H newc --quiet') > "$out/initrd.img"
rm -rf "$ird"
stage "making the disk image"
mkfs.ext4 -q -F -d "$root" "$out/base.raw" 2G
qemu-img convert -O qcow2 "$out/base.raw" "$out/base.qcow2"
rm -rf "$root" "$out/base.raw"
chmod 0755 "$out"
chmod 0644 "$out/base.qcow2" "$out/vmlinuz" "$out/initrd.img"
