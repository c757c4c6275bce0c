#!/usr/bin/env bash
# Benchmark: `vxlab up` wall time of the seed lab with 1 and 2 libvirt guests, beside the bare
# boot-to-SSH time of the same image started by hand (overlay, a seed disk with the vxlab-*
# files its vxlab-seed service reads: name, keys, static address; `virsh create`, wait for
# port 22), guests started together. Needs root, libvirtd
# and the debian-12 image (`vxlab image build`). Prints seconds and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
VXLAB=$PWD/target/release/vxlab
IMG=$("$VXLAB" image list >/dev/null; echo "${VXLAB_IMAGE_DIR:-/var/cache/vxlab/images}/debian-12")
work=$(mktemp -d); chmod 755 "$work"
export VXLAB_STATE_DIR=$work/state
BR=vxbr-bench
trap 'for d in $(virsh list --all --name | grep ^bench-); do virsh destroy $d; done >/dev/null 2>&1 || true; ip link del $BR 2>/dev/null || true; rm -rf "$work"' EXIT

lab_file() { # N -> the seed lab with N guests
  local f=$work/bench-$1.yaml
  sed -e 's/^name: two-vm/name: bench-vm/' labs/two-vm.yaml > "$f"
  [ "$1" = 1 ] && sed -i -e '/vm-b/d' "$f"
  echo "$f"
}

bare() { # N: boot N guests by hand and wait for all their SSH ports
  local n=$1 i ip t0
  ip link add $BR type bridge; ip addr add 192.168.10.1/24 dev $BR; ip link set $BR up
  ssh-keygen -q -t ed25519 -N '' -f "$work/key" <<<y >/dev/null
  t0=$(date +%s.%N)
  for i in $(seq 1 "$n"); do
    ip=192.168.10.$((i + 1)); d=$work/g$i; mkdir -p "$d"; chmod 755 "$d"
    qemu-img create -q -f qcow2 -F qcow2 -b "$IMG/base.qcow2" "$d/disk.qcow2"
    echo "bench-$i" > "$d/vxlab-hostname"
    cp "$work/key.pub" "$d/vxlab-authorized_keys"
    ssh-keygen -q -t ed25519 -N '' -f "$d/vxlab-ssh_host_ed25519_key" <<<y >/dev/null
    printf '52:54:00:aa:00:%02x\n' "$i" > "$d/vxlab-mac"
    echo eth0 > "$d/vxlab-interface"
    echo "$ip/24" > "$d/vxlab-address"
    mkfs.vfat -n cidata -C "$d/seed.img" 1024 >/dev/null
    mcopy -i "$d/seed.img" "$d"/vxlab-* ::
    cat > "$d/dom.xml" <<XML
<domain type='qemu'><name>bench-$i</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>$IMG/vmlinuz</kernel><initrd>$IMG/initrd.img</initrd>
<cmdline>root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0 quiet</cmdline></os>
<features><acpi/><tcg><tb-cache unit='MiB'>128</tb-cache></tcg></features>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$d/disk.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$d/seed.img'/><target dev='vdb' bus='virtio'/><readonly/></disk>
<interface type='bridge'><source bridge='$BR'/><mac address='52:54:00:aa:00:$(printf %02x "$i")'/><model type='virtio'/></interface>
<serial type='file'><source path='$d/console.log'/><target port='0'/></serial></devices></domain>
XML
    virsh create "$d/dom.xml" >/dev/null
  done
  for i in $(seq 1 "$n"); do
    until timeout 1 bash -c "echo > /dev/tcp/192.168.10.$((i + 1))/22" 2>/dev/null; do sleep 0.25; done
  done
  echo "$(date +%s.%N) - $t0" | bc -l
  for i in $(seq 1 "$n"); do virsh destroy bench-$i >/dev/null; rm -rf "$work/g$i"; done
  rm -f "$work/key" "$work/key.pub"
  ip link del $BR
}

up() { # N: vxlab up of the N-guest lab, then down (not timed)
  local f t0 t1
  f=$(lab_file "$1")
  t0=$(date +%s.%N); "$VXLAB" up "$f" >/dev/null; t1=$(date +%s.%N)
  "$VXLAB" down bench-vm >/dev/null 2>&1
  echo "$t1 - $t0" | bc -l
}

printf '%-8s %14s %18s %8s\n' guests "vxlab up (s)" "bare boot-to-SSH (s)" ratio
for n in ${SIZES:-1 2}; do
  v=$(up "$n"); b=$(bare "$n")
  printf '%-8s %14.1f %18.1f %8.2f\n' "$n" "$v" "$b" "$(echo "$v / $b" | bc -l)"
done
