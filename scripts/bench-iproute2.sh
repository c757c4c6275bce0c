#!/usr/bin/env bash
# Benchmark of iproute2 builds on the namespace driver: `vxlab up` of the seed lab without a
# build, with `build: always` from Debian's iproute2 source into an empty cache (a real
# build on the host), and again with the build reused. Prints each wall time and the build's
# stage times from the log. Needs root and network access to the Debian mirror apt uses.
# (On libvirt guests the same stages run in each guest over SSH; the libvirt test's logs,
# <state>/<lab>/iproute2-<guest>.log, carry the per-stage times.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
VXLAB=$PWD/target/release/vxlab
work=$(mktemp -d)
export VXLAB_STATE_DIR=$work/state VXLAB_CACHE_DIR=$work/cache
trap '"$VXLAB" down bip >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
tarball=$(bash scripts/iproute2-source.sh "$work/src")
sed -e 's/^name: .*/name: bip/' -e 's/bridge: .*/bridge: vxbr-bip/' -e 's/192.168.10./192.168.70./' labs/two-netns.yaml > "$work/plain.yaml"
{ cat "$work/plain.yaml"; printf 'iproute2:\n  build: always\n  source: %s\n' "$tarball"; } > "$work/build.yaml"

now() { date +%s.%N; }
timed() { local t0; t0=$(now); "$@" > /dev/null; echo "$(now) - $t0" | bc; }
plain=$(timed "$VXLAB" up "$work/plain.yaml"); "$VXLAB" down bip 2> /dev/null
cold=$(timed "$VXLAB" up "$work/build.yaml")
cat "$work/state/bip/iproute2-vm-"*.log > "$work/cold.log"; "$VXLAB" down bip 2> /dev/null
warm=$(timed "$VXLAB" up "$work/build.yaml"); "$VXLAB" down bip 2> /dev/null
printf 'seed lab on namespaces, iproute2 from %s:\n' "$(basename "$tarball")"
printf '  up, no build                 %6.2f s\n' "$plain"
printf '  up, build: always (cold)     %6.2f s\n' "$cold"
printf '  up, build: always (reused)   %6.2f s\n' "$warm"
echo "  stages of the cold build (host, $(nproc) cores):"
grep -h '^== ' "$work/cold.log" | sed -n 's/^== \([a-z]*\) (exit \([0-9]*\),.*took \([0-9.]*\) s)/    \1: \3 s (exit \2)/p'
