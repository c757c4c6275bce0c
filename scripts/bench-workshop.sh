#!/usr/bin/env bash
# Benchmark of workshop mode: N copies (default 30) of the seed lab on namespaces, brought up
# and checked with `vxlab up --count N`, each checked again with `vxlab check`, then removed
# with `vxlab down --all`. Prints the wall time of each phase, the median of RUNS runs
# (default 3). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
N=${N:-30}
cargo build --release -q
VXLAB=$PWD/target/release/vxlab
work=$(mktemp -d)
export VXLAB_STATE_DIR=$work/state
trap '"$VXLAB" down ws --all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
sed -e 's/^name: .*/name: ws/' -e 's/bridge: .*/bridge: vxbr-ws/' labs/two-netns.yaml > "$work/ws.yaml"

now() { date +%s.%N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
up=() check=() down=()
for _ in $(seq "$RUNS"); do
  t0=$(now)
  "$VXLAB" up "$work/ws.yaml" --count "$N" > "$work/up.txt"
  t1=$(now)
  for i in $(seq "$N"); do "$VXLAB" check "ws-$i" > /dev/null; done
  t2=$(now)
  "$VXLAB" down ws --all 2> /dev/null
  t3=$(now)
  up+=("$(echo "$t1 - $t0" | bc)") check+=("$(echo "$t2 - $t1" | bc)") down+=("$(echo "$t3 - $t2" | bc)")
  [ "$(grep -c 'checks passed' "$work/up.txt")" = "$N" ] || { cat "$work/up.txt"; exit 1; }
done
printf '%d copies of the seed lab (%d guests), median of %d runs:\n' "$N" $((2 * N)) "$RUNS"
printf '  up + checks (--count %d)   %6.2f s\n' "$N" "$(printf '%s\n' "${up[@]}" | median)"
printf '  check, each copy in turn   %6.2f s\n' "$(printf '%s\n' "${check[@]}" | median)"
printf '  down --all                 %6.2f s\n' "$(printf '%s\n' "${down[@]}" | median)"
