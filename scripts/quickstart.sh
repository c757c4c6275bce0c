#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu host: install, build, bring the seed lab up on network
# namespaces, check it, show its status, and take it down again. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
cargo build --release
vxlab=target/release/vxlab
$vxlab validate labs/two-netns.yaml
$vxlab plan labs/two-netns.yaml
$vxlab up labs/two-netns.yaml
$vxlab check
$vxlab status
$vxlab down
