#!/usr/bin/env bash
# Builds a small Debian guest image offline from the host's Debian mirror: a root file
# system by debootstrap, its own kernel (vxlan.ko included) for direct kernel boot, an empty
# machine-id so every clone gets its own, cloud-init limited to the NoCloud seed, and what
# building iproute2 from source needs (guests have no route to a mirror).
# Rendered by `vxlab image build`; every value is shell-quoted by the renderer.
set -euo pipefail
exec 2>&1
stage() { echo "stage: $*"; }
out={{ dir | sh }}
suite={{ suite | sh }}
mirror={{ mirror | sh }}
root="$out/rootfs"
rm -rf "$root" "$out/base.raw"
mkdir -p "$root"
stage "debootstrap $suite from $mirror"
debootstrap --variant=minbase \
  --include=systemd-sysv,openssh-server,iproute2,iputils-ping,udev,kmod,ifupdown,cloud-init,python3-cffi-backend,tcpdump,{{ build_tools | join(sep=",") }} \
  "$suite" "$root" "$mirror"
stage "installing the guest kernel"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends linux-image-amd64
chroot "$root" apt-get clean
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
echo 'datasource_list: [ NoCloud, None ]' > "$root/etc/cloud/cloud.cfg.d/90_dpkg.cfg"
# Under software emulation cloud-init's Python costs about 50 s of every boot. Images vxlab
# builds read the seed disk with a small shell service instead (cloud-init stays installed
# but disabled; the seed carries its NoCloud documents too, for images users bring), and
# boot-time jobs a lab guest does not need are masked (e2scrub_reap took 30 s of CPU).
touch "$root/etc/cloud/cloud-init.disabled"
for unit in e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer \
    man-db.timer fstrim.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
cat > "$root/usr/local/sbin/vxlab-seed" <<'SEED'
#!/bin/sh
# Applies the vxlab-* files of the seed disk: hostname, root's authorized key, the SSH host
# key vxlab pinned, and the underlay interface's name and address (found by its MAC).
set -eu
m=/run/vxlab-seed
mkdir -p "$m"
mount -t vfat -o ro /dev/vdb "$m"
trap 'umount "$m"' EXIT
if [ ! -e "$m/vxlab-hostname" ]; then
  echo "vxlab-seed: no vxlab seed on /dev/vdb"
  exit 0
fi
name=$(cat "$m/vxlab-hostname")
echo "$name" > /etc/hostname
hostname "$name"
printf '127.0.1.1\t%s\n' "$name" >> /etc/hosts
install -d -m 700 /root/.ssh
install -m 600 "$m/vxlab-authorized_keys" /root/.ssh/authorized_keys
rm -f /etc/ssh/ssh_host_*
install -m 600 "$m/vxlab-ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
install -m 644 "$m/vxlab-ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
mac=$(cat "$m/vxlab-mac")
want=$(cat "$m/vxlab-interface")
have=""
for d in /sys/class/net/*; do
  [ "$(cat "$d/address")" = "$mac" ] && have=${d##*/}
done
[ -n "$have" ] || { echo "vxlab-seed: no interface with MAC $mac"; exit 1; }
[ "$have" = "$want" ] || ip link set dev "$have" name "$want"
ip link set dev lo up
ip link set dev "$want" up
ip addr add "$(cat "$m/vxlab-address")" dev "$want"
echo "vxlab-seed: $name, $want $(cat "$m/vxlab-address"), host key and root's key in place"
SEED
chmod 755 "$root/usr/local/sbin/vxlab-seed"
cat > "$root/etc/systemd/system/vxlab-seed.service" <<'UNIT'
[Unit]
Description=vxlab seed: hostname, keys and underlay address from the seed disk
DefaultDependencies=no
BindsTo=dev-vdb.device
After=dev-vdb.device local-fs.target
Before=ssh.service network-pre.target sysinit.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vxlab-seed
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
UNIT
ln -sf /etc/systemd/system/vxlab-seed.service "$root/etc/systemd/system/sysinit.target.wants/vxlab-seed.service"
echo '/dev/vda / ext4 defaults 0 1' > "$root/etc/fstab"
cp "$root"/boot/vmlinuz-* "$out/vmlinuz"
cp "$root"/boot/initrd.img-* "$out/initrd.img"
stage "making the disk image"
mkfs.ext4 -q -F -d "$root" "$out/base.raw" 2G
qemu-img convert -O qcow2 "$out/base.raw" "$out/base.qcow2"
rm -rf "$root" "$out/base.raw"
chmod 0755 "$out"
chmod 0644 "$out/base.qcow2" "$out/vmlinuz" "$out/initrd.img"
echo {{ recipe | sh }} > "$out/recipe"
stage "image ready: $out"
