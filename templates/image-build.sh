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
