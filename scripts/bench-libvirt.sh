#!/usr/bin/env bash
# Benchmark: `vxlab up` of the seed lab with 1 and 2 libvirt guests against a bare boot of the
# fastest recipe measured by hand on this kind of machine (/work/shared/guest-image.md: no
# cloud-init, identity and address on the kernel command line through systemd and its network
# generator, root's key as a systemd credential, a small initrd, masked units, a 128 MiB TCG
# translation cache). The reference image is built here by that recipe, independently of
# `vxlab image build`, and cached in $REF_DIR.
#
# Both are timed to SSH in the same run (the bare guests: until `ssh root@guest true`
# succeeds on every guest; vxlab: its `--timings` line "SSH up" of the last guest), and vxlab
# also to the lab up and checked. Each size runs RUNS times (default 3), alternating vxlab
# and bare; medians are printed with the load average before each run.
#
# Then a class: `vxlab up --count CLASS` (default 4: 8 VMs) of the seed lab, its wall time,
# the slowest copy, and the host memory each idle guest holds (QEMU's RSS, its anonymous
# part, PSS, and the fall in MemAvailable per guest), again after KSM has merged what it can
# when setup-host.sh turned it on. CLASS=0 skips it.
# Needs root, libvirtd, and vxlab's debian-12 image (built first if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SIZES=${SIZES:-1 2}
REF_DIR=${REF_DIR:-/var/cache/vxlab/bench-reference}
cargo build --release -q
VXLAB=$PWD/target/release/vxlab
"$VXLAB" image list | grep -q '^debian-12 ' || "$VXLAB" image build debian-12 >&2
work=$(mktemp -d); chmod 755 "$work"
export VXLAB_STATE_DIR=$work/state
BR=vxbr-bench
CLASS=${CLASS:-4}
cleanup() {
  "$VXLAB" down bench-vm --all >/dev/null 2>&1 || true
  for d in $(virsh -c qemu:///system list --all --name | grep '^bench-ref-'); do
    virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
  done
  "$VXLAB" down bench-vm >/dev/null 2>&1 || true
  ip link del $BR 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
load() { cut -d' ' -f1 /proc/loadavg; }

reference_image() { # the fastest recipe, built once
  [ -f "$REF_DIR/ready" ] && return
  local root=$REF_DIR/rootfs mirror
  mirror=$(awk '/^URIs:/ { u = $2 } /^Suites:/ && / bookworm( |$)/ { print u; exit }' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list)
  echo "building the reference image (fastest recipe) from $mirror into $REF_DIR" >&2
  rm -rf "$REF_DIR"; mkdir -p "$root"; chmod 755 "$REF_DIR"
  debootstrap --variant=minbase \
    --include=systemd-sysv,openssh-server,iproute2,iputils-ping,udev,kmod \
    bookworm "$root" "$mirror" >"$REF_DIR/build.log" 2>&1
  mkdir -p "$root/etc/initramfs-tools/conf.d"
  printf 'virtio_pci\nvirtio_blk\next4\n' >> "$root/etc/initramfs-tools/modules"
  echo MODULES=list > "$root/etc/initramfs-tools/conf.d/small.conf"
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends \
    linux-image-amd64 >>"$REF_DIR/build.log" 2>&1
  chroot "$root" systemctl enable systemd-networkd systemd-network-generator >>"$REF_DIR/build.log" 2>&1
  for u in systemd-logind.service dbus.service dbus.socket getty-static.service \
      systemd-pstore.service sys-kernel-debug.mount sys-kernel-tracing.mount \
      sys-kernel-config.mount sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount \
      systemd-networkd-wait-online.service e2scrub_reap.service e2scrub_all.timer \
      apt-daily.timer apt-daily-upgrade.timer fstrim.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$u"
  done
  : > "$root/etc/machine-id"
  rm -rf "$root/root/.ssh"
  echo '/dev/vda / ext4 defaults 0 1' > "$root/etc/fstab"
  cp "$root"/boot/vmlinuz-* "$REF_DIR/vmlinuz"; cp "$root"/boot/initrd.img-* "$REF_DIR/initrd.img"
  mkfs.ext4 -q -F -d "$root" "$REF_DIR/base.raw" 2G
  qemu-img convert -O qcow2 "$REF_DIR/base.raw" "$REF_DIR/base.qcow2"
  rm -rf "$root" "$REF_DIR/base.raw"
  chmod 644 "$REF_DIR"/*
  touch "$REF_DIR/ready"
}

lab_file() { # N -> the seed lab with N guests
  local f=$work/bench-$1.yaml
  sed -e 's/^name: two-vm/name: bench-vm/' labs/two-vm.yaml > "$f"
  [ "$1" = 1 ] && sed -i -e '/vm-b/d' "$f"
  echo "$f"
}

bare() { # N -> "seconds-to-port-22 seconds-to-SSH-login" of every guest of the reference image
  local n=$1 i ip d t0 tp key
  ip link add $BR type bridge; ip addr add 192.168.10.1/24 dev $BR; ip link set $BR up
  ssh-keygen -q -t ed25519 -N '' -f "$work/key" <<<y >/dev/null
  key=$(cut -d' ' -f1,2 "$work/key.pub")
  t0=$(now)
  for i in $(seq 1 "$n"); do
    ip=192.168.10.$((i + 1)); d=$work/g$i; mkdir -p "$d"; chmod 755 "$d"
    qemu-img create -q -f qcow2 -F qcow2 -b "$REF_DIR/base.qcow2" "$d/disk.qcow2"
    cat > "$d/dom.xml" <<XML
<domain type='qemu'><name>bench-ref-$i</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>$REF_DIR/vmlinuz</kernel><initrd>$REF_DIR/initrd.img</initrd>
<cmdline>root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0 quiet ip=$ip:::255.255.255.0::eth0:off systemd.hostname=ref-$i systemd.machine_id=$(printf '%032x' "$i") "systemd.set_credential=ssh.authorized_keys.root:$key"</cmdline></os>
<features><acpi/><tcg><tb-cache unit='MiB'>128</tb-cache></tcg></features>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$d/disk.qcow2'/><target dev='vda' bus='virtio'/></disk>
<interface type='bridge'><source bridge='$BR'/><mac address='52:54:00:bb:00:$(printf %02x "$i")'/><model type='virtio'/></interface>
<serial type='file'><source path='$d/console.log'/><target port='0'/></serial></devices></domain>
XML
    virsh -c qemu:///system create "$d/dom.xml" >/dev/null
  done
  for i in $(seq 1 "$n"); do
    until timeout 1 bash -c "echo > /dev/tcp/192.168.10.$((i + 1))/22" 2>/dev/null; do sleep 0.1; done
  done
  tp=$(now)
  for i in $(seq 1 "$n"); do
    ip=192.168.10.$((i + 1))
    until ssh -q -i "$work/key" -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null "root@$ip" true; do sleep 0.1; done
  done
  t1=$(now)
  for i in $(seq 1 "$n"); do
    virsh -c qemu:///system destroy "bench-ref-$i" >/dev/null; rm -rf "$work/g$i"
  done
  rm -f "$work/key" "$work/key.pub"
  ip link del $BR
  # Printed last: the caller reads it and goes on, and the next run needs the bridge gone.
  echo "$(echo "$tp - $t0" | bc -l) $(echo "$t1 - $t0" | bc -l)"
}

vxlab_up() { # N -> "seconds-to-port-22 seconds-to-SSH seconds-up-and-checked" of `vxlab up`
  local f t0 t1 port ssh
  f=$(lab_file "$1")
  t0=$(now)
  "$VXLAB" up "$f" --timings >/dev/null 2>"$work/timings"
  t1=$(now)
  port=$(awk '$4 == "SSH" && $5 == "port" { t = $1 } END { print t }' "$work/timings")
  ssh=$(awk '$4 == "SSH" && $5 == "up" { t = $1 } END { print t }' "$work/timings")
  "$VXLAB" down bench-vm >/dev/null 2>&1
  echo "$port $ssh $(echo "$t1 - $t0" | bc -l)"
}

reference_image
printf '%-7s %5s %5s | %9s %9s %11s | %9s %9s | %9s %9s\n' guests runs load \
  "vxlab 22" "vxlab SSH" "vxlab check" "bare 22" "bare SSH" "ratio 22" "ratio SSH"
for n in $SIZES; do
  vp=() vs=() vu=() bp=() bs=() loads=()
  for _ in $(seq "$RUNS"); do
    loads+=("$(load)")
    read -r p s u < <(vxlab_up "$n")
    vp+=("$p"); vs+=("$s"); vu+=("$u")
    loads+=("$(load)")
    read -r p s < <(bare "$n")
    bp+=("$p"); bs+=("$s")
  done
  med() { printf '%s\n' "$@" | median; }
  mvp=$(med "${vp[@]}"); mvs=$(med "${vs[@]}"); mvu=$(med "${vu[@]}")
  mbp=$(med "${bp[@]}"); mbs=$(med "${bs[@]}")
  printf '%-7s %5s %5s | %9.1f %9.1f %11.1f | %9.1f %9.1f | %9.2f %9.2f\n' "$n" "$RUNS" \
    "$(med "${loads[@]}")" "$mvp" "$mvs" "$mvu" "$mbp" "$mbs" \
    "$(echo "$mvp / $mbp" | bc -l)" "$(echo "$mvs / $mbs" | bc -l)"
  echo "  runs: vxlab port 22 ${vp[*]}; SSH ${vs[*]}; up+check ${vu[*]};" \
    "bare port 22 ${bp[*]}; SSH ${bs[*]}; load ${loads[*]}" >&2
done

[ "$CLASS" -gt 0 ] || exit 0
f=$(lab_file 2)
sleep 5
m0=$(awk '/MemAvailable/ { print $2 }' /proc/meminfo)
echo "class: up --count $CLASS of the seed lab ($((2 * CLASS)) VMs), load $(load)"
t0=$(now)
"$VXLAB" up "$f" --count "$CLASS" >/dev/null 2>"$work/class"
t1=$(now)
# Idle: free page reporting hands the memory guests freed back in steps over a minute or
# two; the figures are taken once the class's resident memory has not fallen by 1 % for 30 s
# (at most 5 minutes).
class_rss() { for pid in $(pgrep -f 'guest=vxlab-bench-vm-'); do awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; done | awk '{ s += $1 } END { print s + 0 }'; }
settle_start=$(now); low=$(class_rss); still=0
for _ in $(seq 30); do
  sleep 10
  cur=$(class_rss)
  if [ $(( (low - cur) * 100 )) -lt "$low" ]; then still=$((still + 1)); else still=0; low=$cur; fi
  [ "$still" -ge 3 ] && break
done
printf 'idle after %.0f s more\n' "$(echo "$(now) - $settle_start" | bc -l)"
grep -E 'copies of|after' "$work/class" >&2
slowest=$(awk '$4 == "up" && $5 == "and" { print $NF == "s" ? $(NF - 1) : $NF }' "$work/class" | sort -n | tail -1)
printf 'total %.1f s, slowest copy %s s\n' "$(echo "$t1 - $t0" | bc -l)" "$slowest"
per_guest() { # LABEL: median RSS, anonymous RSS and PSS of the class's QEMUs, MemAvailable fall
  local m; m=$(awk '/MemAvailable/ { print $2 }' /proc/meminfo)
  for pid in $(pgrep -f 'guest=vxlab-bench-vm-'); do
    awk '/^VmRSS/ { r = $2 } /^RssAnon/ { a = $2 } END { printf "%d %d ", r / 1024, a / 1024 }' "/proc/$pid/status"
    awk '/^Pss:/ { s += $2 } END { printf "%d\n", s / 1024 }' "/proc/$pid/smaps"
  done | sort -n | awk -v n=$((2 * CLASS)) -v d=$(( (m0 - m) / 1024 )) -v l="$1" '
    { r[NR] = $1; a[NR] = $2; p[NR] = $3 }
    END { m = int((NR + 1) / 2)
          printf "%s, per idle guest (median of %d): RSS %d MiB (%d MB), anonymous %d MiB, PSS %d MiB; host MemAvailable fell %d MiB per guest\n", l, NR, r[m], r[m] * 1.048576, a[m], p[m], d / n }'
}
ksm=/sys/kernel/mm/ksm
per_guest "$(if [ "$(cat $ksm/run 2>/dev/null)" = 1 ]; then echo "KSM on, $(( $(cat $ksm/pages_sharing) * 4 / 1024 )) MiB shared away so far"; else echo "KSM off"; fi)"
if [ "$(cat $ksm/run 2>/dev/null)" = 1 ]; then
  # Two full scans merge what can be merged; at the default rate that takes a few minutes.
  scans=$(( $(cat $ksm/full_scans) + 2 ))
  for _ in $(seq 60); do [ "$(cat $ksm/full_scans)" -ge "$scans" ] && break; sleep 5; done
  per_guest "KSM on, after two more full scans ($(( $(cat $ksm/pages_sharing) * 4 / 1024 )) MiB shared away)"
fi
"$VXLAB" down bench-vm --all >/dev/null 2>&1
