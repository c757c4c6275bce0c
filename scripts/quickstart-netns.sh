#!/usr/bin/env bash
# The one-minute path on a fresh Debian/Ubuntu host, as root: no VM, no image. Installs vxlab
# on PATH, brings the seed lab up on network namespaces, checks it, shows what a student must
# see (the FDB explained, the first ARP request flooded to 239.1.1.1 on the wire, the rest
# unicast), walks it stage by stage, shows VNI isolation on the wire, and takes it all down.
set -euo pipefail
cd "$(dirname "$0")/.."
# Rust is not installed here: vxlab builds with the cargo on PATH, Rust 1.85 or newer
# (Cargo.toml's rust-version); said before anything is installed.
have=$(rustc --version 2>/dev/null | cut -d' ' -f2) || have=
if [ -z "$have" ] || [ "$(printf '%s\n' 1.85.0 "${have%%-*}" | sort -V | head -n1)" != 1.85.0 ]; then
  echo "$0: vxlab needs Rust 1.85 or newer on PATH (found: ${have:-none}); the README's quick start says how to get it (rustup)" >&2
  exit 69
fi
bash scripts/setup-host.sh --netns
cargo install --locked --path . --root /usr/local --target-dir target
export PATH=/usr/local/bin:$PATH
vxlab validate labs/two-netns.yaml
vxlab plan labs/two-netns.yaml
vxlab up labs/two-netns.yaml
vxlab show vm-a fdb
vxlab capture vm-a --count 2
vxlab down two-netns
vxlab walk --no-pause labs/two-netns.yaml
vxlab down two-netns
vxlab up labs/two-vni.yaml
vxlab capture vm-a --to 192.168.43.3 --count 2
vxlab down two-vni
