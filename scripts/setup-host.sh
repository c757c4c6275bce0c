#!/usr/bin/env bash
# Installs what vxlab needs on a Debian/Ubuntu host (run as root): iproute2 and ping for the
# labs, the C libraries the virt and ssh2 crates link against, bc for the benchmark script.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  iproute2 iputils-ping tcpdump bc pkg-config libvirt-dev libssh2-1-dev libssl-dev
