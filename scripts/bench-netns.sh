#!/usr/bin/env bash
# Benchmark: `vxlab up` + `vxlab check` + `vxlab down` of N namespace guests, beside a plain
# shell script running the same ip commands (each source's pings side by side), N = 2 10 50.
# Prints the median of RUNS runs (default 3) for each, and the ratio. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SIZES=${SIZES:-"2 10 50"}
cargo build --release -q
VXLAB=$PWD/target/release/vxlab
work=$(mktemp -d)
export VXLAB_STATE_DIR=$work/state
trap 'rm -rf "$work"' EXIT

lab_file() { # N -> lab file with N guests in one vxlan
  local n=$1 f=$work/bench-$1.yaml
  {
    echo "name: bench-$n"; echo "driver: netns"
    echo "underlay: { bridge: vxbr-bench, subnet: 192.168.50.0/24 }"
    echo "guests:"
    for i in $(seq 0 $((n - 1))); do echo "  g$i: { address: 192.168.50.$((i + 2)) }"; done
    echo "vxlans:"; echo "  - { name: vxlan0, vni: 50, group: 239.1.1.50, port: 4789, addresses: {"
    for i in $(seq 0 $((n - 1))); do echo "      g$i: 10.50.0.$((i + 2))/24,"; done
    echo "    } }"
  } > "$f"
  echo "$f"
}

shell_lab() { # N: the same lab by hand, as an instructor's script would do it
  local n=$1 br=vxbr-shell i j
  local keys=(net.ipv4.neigh.default.gc_thresh2 net.ipv4.neigh.default.gc_thresh3) old=()
  for k in "${keys[@]}"; do old+=("$(sysctl -n "$k")"); done
  sysctl -qw net.ipv4.neigh.default.gc_thresh2=$((n * n * 4)) net.ipv4.neigh.default.gc_thresh3=$((n * n * 8))
  ip link add $br type bridge; ip addr add 192.168.51.1/24 dev $br; ip link set $br up
  for i in $(seq 0 $((n - 1))); do
    ip netns add bs-$i
    ip link add bsh$i type veth peer name eth0 netns bs-$i
    ip link set bsh$i master $br up
    ip -n bs-$i link set lo up
    ip -n bs-$i addr add 192.168.51.$((i + 2))/24 dev eth0
    ip -n bs-$i link set eth0 up
    ip -n bs-$i link add vxlan0 type vxlan id 51 group 239.1.1.51 dev eth0 dstport 4789
    ip -n bs-$i link set up vxlan0
    ip -n bs-$i addr add 10.51.0.$((i + 2))/24 dev vxlan0
  done
  local lost=0
  for i in $(seq 0 $((n - 1))); do
    for j in $(seq 0 $((n - 1))); do
      [ "$i" = "$j" ] || ip netns exec bs-$i ping -c 1 -W 1 -q 10.51.0.$((j + 2)) >/dev/null &
    done
    for p in $(jobs -p); do wait "$p" || lost=$((lost + 1)); done
  done
  for i in $(seq 0 $((n - 1))); do
    ip -n bs-$i -j -d link show >/dev/null
    ip -n bs-$i -j maddr show dev eth0 >/dev/null
    bridge -n bs-$i -j fdb show dev vxlan0 >/dev/null
  done
  for i in $(seq 0 $((n - 1))); do ip link del bsh$i; ip netns del bs-$i; done
  ip link del $br
  sysctl -qw "${keys[0]}=${old[0]}" "${keys[1]}=${old[1]}"
  [ "$lost" = 0 ] || echo "shell: $lost pings lost" >&2
}

vxlab_lab() { # file
  "$VXLAB" up "$1" >/dev/null
  "$VXLAB" check >/dev/null
  "$VXLAB" down >/dev/null 2>&1
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }

timed() { # command... -> seconds
  local t0 t1
  t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

printf '%-8s %12s %12s %8s\n' guests "vxlab (s)" "shell (s)" ratio
for n in $SIZES; do
  f=$(lab_file "$n")
  v=$(for _ in $(seq "$RUNS"); do timed vxlab_lab "$f"; done | median)
  s=$(for _ in $(seq "$RUNS"); do timed shell_lab "$n"; done | median)
  printf '%-8s %12.3f %12.3f %8.2f\n' "$n" "$v" "$s" "$(echo "$v / $s" | bc -l)"
done
