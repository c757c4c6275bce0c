#!/usr/bin/env bash
# Benchmark of the class server: N copies (default 30) of the seed lab on namespaces, `vxlab
# serve`, and a client that behaves like N open student pages with one terminal each (the
# page's event stream and a websocket terminal per copy, tests/class_bench.rs). Prints the
# latency from a command typed in a guest's terminal to the change on that copy's page, the
# server's CPU while idle and while students type (SECONDS each, default 10), and its memory.
# PAGES=browser opens the pages for real instead: one tab per copy in one headless Chromium
# (Debian's chromium and chromium-driver), the latency running from a change in a guest to
# the moment its tab shows it, and Chromium's memory too.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-30}
PAGES=${PAGES:-client}
case $PAGES in
  client) bench=thirty_students_type_while_the_server_follows ;;
  browser) bench=thirty_student_pages_in_a_real_browser ;;
  *) echo "bench-class: PAGES is client or browser" >&2; exit 64 ;;
esac
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-10}
cargo build --release -q
cargo test --release --no-run -q --test class_bench 2>/dev/null
VXLAB=$PWD/target/release/vxlab
work=$(mktemp -d)
export VXLAB_STATE_DIR=$work/state
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  "$VXLAB" down cb --all >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
sed -e 's/^name: .*/name: cb/' -e 's/bridge: .*/bridge: vxbr-cb/' labs/two-netns.yaml > "$work/cb.yaml"
"$VXLAB" up "$work/cb.yaml" --count "$N" > "$work/up.txt"
[ "$(grep -c 'checks passed' "$work/up.txt")" = "$N" ] || { cat "$work/up.txt"; exit 1; }

"$VXLAB" serve --listen 127.0.0.1:0 > "$work/serve.txt" 2> "$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q '^instructor: ' "$work/serve.txt" && break; sleep 0.1; done
url=$(sed -n 's/^instructor: //p' "$work/serve.txt")
[ -n "$url" ] || { cat "$work/serve.err"; exit 1; }
base=${url%%/t/*}
"$VXLAB" sheet cb --format csv --url "$base" > "$work/sheet.csv"

echo "$N copies of the seed lab ($((2 * N)) guests) served by vxlab serve (pid $server):"
ran=0
BENCH_SHEET=$(cat "$work/sheet.csv") BENCH_PID=$server BENCH_SECONDS=$SECONDS_PER_PHASE \
  cargo test --release -q --test class_bench -- --ignored --exact "$bench" --nocapture \
  > "$work/bench.out" 2> "$work/bench.err" || ran=$?
grep -v -e '^running' -e '^test ' -e '^$' -e 'test result' -e '^\.$' -e '^failures:' \
  -e "^    $bench" "$work/bench.out" || true
if [ "$ran" != 0 ]; then
  grep -A12 'panicked' "$work/bench.err" >&2 || cat "$work/bench.err" >&2
  exit 1
fi
