#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu host, as root: install, build and put vxlab on PATH,
# build the guest image (offline, from the host's Debian mirror; once), bring the seed lab up
# on two virtual machines, check it, show what a student must see (the FDB explained, and the
# first ARP request flooded to 239.1.1.1 on the wire, the rest unicast), and take it down again.
set -euo pipefail
cd "$(dirname "$0")/.."
# Rust is not installed here: vxlab builds with the cargo on PATH, Rust 1.85 or newer
# (Cargo.toml's rust-version); said before anything is installed.
have=$(rustc --version 2>/dev/null | cut -d' ' -f2) || have=
if [ -z "$have" ] || [ "$(printf '%s\n' 1.85.0 "${have%%-*}" | sort -V | head -n1)" != 1.85.0 ]; then
  echo "$0: vxlab needs Rust 1.85 or newer on PATH (found: ${have:-none}); the README's quick start says how to get it (rustup)" >&2
  exit 69
fi
bash scripts/setup-host.sh
# vxlab on PATH, as every command below and in the README types it.
cargo install --locked --path . --root /usr/local --target-dir target
export PATH=/usr/local/bin:$PATH
vxlab image list | grep -q '^debian-12 ' || vxlab image build debian-12
vxlab validate labs/two-vm.yaml
vxlab plan labs/two-vm.yaml
vxlab up labs/two-vm.yaml --timings
vxlab check two-vm
vxlab show vm-a fdb
vxlab capture vm-a --count 2
vxlab status
vxlab down two-vm
