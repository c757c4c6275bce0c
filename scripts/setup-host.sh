#!/usr/bin/env bash
# Installs what vxlab needs on a Debian/Ubuntu host and starts libvirtd (run as root):
# iproute2 and ping for the labs; bash-completion, which loads the completions the README
# installs in /etc/bash_completion.d; libvirt, QEMU, debootstrap and the seed-disk tools for the
# libvirt driver; the C libraries the virt and ssh2 crates link against; bc for benchmarks;
# graphviz for `vxlab graph --format svg`; a C compiler and make for iproute2 builds (the
# rest of iproute2's build dependencies vxlab installs itself when a build needs them);
# chromium and chromium-driver for the class server's browser tests; openssh-server for the
# tests of guest terminals over SSH and of a class on two hosts (they start their own sshd on
# loopback; libvirt's ssh transport runs virt-ssh-helper, from libvirt-daemon, on the "host").
#
# `setup-host.sh --netns` installs only what the namespace driver needs (the one-minute quick
# start): vxlab's build (a C compiler, and the libraries the crates link against), iproute2,
# ping, tcpdump, iptables, graphviz, bash-completion; no QEMU, no libvirtd, no browser.
# Neither installs Rust: vxlab builds with the cargo on PATH (Rust 1.85 or newer; Debian
# 12's own rustc and cargo packages are 1.63, too old), see the README.
# iptables fences each lab's bridge off from the host (see src/host/firewall.rs).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
netns_only=false
[ "${1:-}" = --netns ] && netns_only=true
apt-get update -q
packages=(iproute2 iputils-ping tcpdump iptables pkg-config libvirt-dev libssh2-1-dev libssl-dev
  gcc libc6-dev make graphviz bash-completion)
if ! $netns_only; then
  packages+=(bc libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils debootstrap
    dosfstools mtools openssh-client librsvg2-bin xz-utils
    chromium chromium-driver openssh-server curl openssl)
fi
# Some images carry a backported qemu-utils that blocks the distribution's qemu-system-x86;
# take qemu-utils from the same release as qemu-system-x86 there.
if dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null | grep -q '~bpo'; then
  . /etc/os-release
  packages=("${packages[@]/#qemu-utils/qemu-utils/$VERSION_CODENAME}")
fi
apt-get install -y -q --no-install-recommends --allow-downgrades "${packages[@]}"
$netns_only && exit 0

# /dev/kvm: the group and mode udev gives it (kvm, 0660), where no udev did (containers, CI).
# Left root-only, libvirt's QEMU user cannot open it, libvirt discards its QEMU capability
# cache on every call (about 4 s each) and `vxlab up` takes minutes. Before libvirtd starts,
# so that its first probe already sees the device usable.
if [ -c /dev/kvm ]; then
  getent group kvm >/dev/null || groupadd --system kvm
  chgrp kvm /dev/kvm
  chmod 0660 /dev/kvm
fi

# Kernel same-page merging: guests booted from one image hold many identical pages (their
# kernels, the same files cached), which QEMU offers for merging. Measured on 8 idle seed-lab
# guests: 63 MiB less memory each (PSS 230 -> 147 MiB), ksmd using 1.2 % of a core.
if [ -w /sys/kernel/mm/ksm/run ]; then
  echo 1 > /sys/kernel/mm/ksm/run
fi

# Start libvirtd unless something already runs it (no systemd in containers and CI).
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  if command -v systemctl >/dev/null && systemctl start libvirtd 2>/dev/null; then :; else
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
  fi
  for _ in $(seq 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
virsh -c qemu:///system version >/dev/null
