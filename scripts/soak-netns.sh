#!/usr/bin/env bash
# Soak test of the namespace driver: faults, races, load and hostile files, as a tester would
# run them, bounded in count and time. Prints one row per scenario:
#   trials  hangs (a vxlab outlived its watchdog)  leaks (anything left after `down`)
#   wrong exit codes  panics (a Rust panic in stderr, or exit 101)
# Details of every failed trial go to $SOAK_LOG (default: a file in the work directory, kept).
#
# Needs root. It creates namespaces, bridges and vxlan devices: on a shared machine run it in
# a private network and mount namespace (`unshare --net --mount` with its own /run/netns,
# /run/vxlab and /sys). There vxlab cannot raise the neighbour table or the backlog (the
# host's namespace holds them for every namespace; `up` says which `sysctl -w` to run), and
# /sys/kernel/rcu_expedited is the kernel's: run no other vxlab on the host meanwhile, or the
# two take each other's value for the original.
#
# Knobs (environment): VXLAB (binary; default: target/release/vxlab, built if missing),
# SOAK_KILLS (trials per signal and phase, default 10), SOAK_RACES (per race, 10),
# SOAK_BIG (100-guest cycles, 5), SOAK_BIG_GUESTS (100), SOAK_FUZZ (mutated labs, 200),
# SOAK_KILL_GUESTS (guests of the lab killed, 20), SOAK_WATCHDOG (seconds a vxlab may take,
# 120), SOAK_DEADLINE (seconds for the whole run, 1200; scenarios not reached are skipped),
# SOAK_SEED (random seed, default 14), SOAK_ONLY (some of: fuzz kill race big).
# The proof issue 14 asks for: SOAK_BIG=50 SOAK_KILLS=50 SOAK_DEADLINE=2400.
set -uo pipefail
set -m # background jobs get their own process group and keep SIGINT's default action
cd "$(dirname "$0")/.."

KILLS=${SOAK_KILLS:-10}
RACES=${SOAK_RACES:-10}
BIG=${SOAK_BIG:-5}
BIG_GUESTS=${SOAK_BIG_GUESTS:-100}
FUZZ=${SOAK_FUZZ:-200}
KILL_GUESTS=${SOAK_KILL_GUESTS:-20}
WATCHDOG=${SOAK_WATCHDOG:-120}
DEADLINE=$(($(date +%s) + ${SOAK_DEADLINE:-1200}))
RANDOM=${SOAK_SEED:-14}

[ "$(id -u)" = 0 ] || { echo "soak-netns: run as root" >&2; exit 77; }
if [ -z "${VXLAB:-}" ]; then
  cargo build --release -q || exit 70
  VXLAB=$PWD/target/release/vxlab
fi
work=$(mktemp -d /tmp/vxlab-soak.XXXXXX)
export VXLAB_STATE_DIR=$work/state
LOG=${SOAK_LOG:-$work/soak.log}
: > "$LOG"
cleanup() {
  # Whatever a failed trial left, so the next run starts clean.
  for l in $(ls "$VXLAB_STATE_DIR" 2>/dev/null); do "$VXLAB" down "$l" >/dev/null 2>&1; done
  find "$work" -mindepth 1 -maxdepth 1 ! -name soak.log -exec rm -rf {} +
}
trap cleanup EXIT

declare -A TRIALS HANGS LEAKS WRONG PANICS
ORDER=()
scenario() { ORDER+=("$1"); TRIALS[$1]=0; HANGS[$1]=0; LEAKS[$1]=0; WRONG[$1]=0; PANICS[$1]=0; }
note() { echo "[$1] $2" >> "$LOG"; }
time_left() { [ "$(date +%s)" -lt "$DEADLINE" ]; }

# vxlab runs under timeout(1), the watchdog: exit 124 means it outlived $WATCHDOG seconds
# (and was killed). No shell subshell watches it: one killed before it resets its traps would
# run the script's EXIT trap.
CODE=0
start_vxlab() { # OUT ARGS... -> PID (of the watchdog, in the background)
  local out=$1; shift
  timeout -k 5 "$WATCHDOG" "$VXLAB" "$@" > "$out.out" 2> "$out.err" &
  PID=$!
}
signal_vxlab() { # SIGNAL PID: to the vxlab under watchdog PID
  local child
  child=$(pgrep -P "$2")
  [ -n "$child" ] && kill -"$1" "$child" 2>/dev/null
}
wait_vxlab() { # PID -> CODE (the shell's "Killed" notices go nowhere: the table counts them)
  { wait "$1"; } 2>/dev/null
  CODE=$?
}
run_vxlab() { local out=$1; shift; start_vxlab "$out" "$@"; wait_vxlab "$PID"; }

# judge SCENARIO OUT WHAT EXPECTED...: counts a hang, a panic or an exit code not expected.
judge() {
  local s=$1 out=$2 what=$3; shift 3
  if [ "$CODE" = 124 ]; then HANGS[$s]=$((HANGS[$s] + 1)); note "$s" "$what hung"; return; fi
  if [ "$CODE" = 101 ] || grep -q "panicked at" "$out.err" 2>/dev/null; then
    PANICS[$s]=$((PANICS[$s] + 1)); note "$s" "$what panicked: $(grep -m1 panicked "$out.err")"
  fi
  local ok
  for ok in "$@"; do [ "$CODE" = "$ok" ] && return; done
  WRONG[$s]=$((WRONG[$s] + 1)); note "$s" "$what exited $CODE: $(tail -n 3 "$out.err" | tr '\n' ' ')"
}

# lab FILE N NAME NET [ring]: a lab of N guests in one vxlan on 192.168.NET.0/24; `ring`
# checks one ping per guest instead of the full mesh (a 100-guest mesh needs more
# neighbour-table room than a private network namespace can be given).
lab() {
  local f=$1 n=$2 name=$3 net=$4 checks=${5:-mesh} bridge=${6:-vxbr-$3} i
  {
    echo "name: $name"; echo "driver: netns"
    echo "underlay: { bridge: $bridge, subnet: 192.168.$net.0/24 }"
    echo "guests:"
    for i in $(seq 0 $((n - 1))); do echo "  g$i: { address: 192.168.$net.$((i + 2)) }"; done
    echo "vxlans:"; echo "  - { name: vxlan0, vni: 42, group: 239.1.1.42, addresses: {"
    for i in $(seq 0 $((n - 1))); do echo "      g$i: 10.$net.0.$((i + 2))/24,"; done
    echo "    } }"
    if [ "$checks" = ring ]; then
      echo "checks:"
      for i in $(seq 0 $((n - 1))); do
        echo "  - ping: { from: g$i, to: 10.$net.0.$(((i + 1) % n + 2)) }"
      done
    fi
  } > "$f"
}

# leftovers NAME FILE: what of lab NAME (its plan read from FILE) is still on the host.
leftovers() {
  local name=$1 file=$2
  {
    ls /run/netns 2>/dev/null | grep -F "vxlab-$name." | sed 's/^/namespace /'
    "$VXLAB" plan --json "$file" 2>/dev/null | python3 -c '
import json, os, sys
p = json.load(sys.stdin)
for link in [p["bridge"]] + [g["host_link"] for g in p["guests"]]:
    if os.path.exists("/sys/class/net/" + link):
        print("link", link)'
    [ -e "$VXLAB_STATE_DIR/$name" ] && echo "state $VXLAB_STATE_DIR/$name"
    # The fence around the lab's bridge: rules marked with its name.
    { iptables-save; ip6tables-save; } 2>/dev/null | grep -F -- "\"vxlab: $name\"" | sed 's/^/rule /'
  } | tr '\n' ' '
}
count_leak() { # SCENARIO NAME FILE WHAT [OUT: the last vxlab's output files]
  local left
  left=$(leftovers "$2" "$3")
  if [ -n "$left" ]; then
    LEAKS[$1]=$((LEAKS[$1] + 1)); note "$1" "$4 left: $left"
    # What was left, and what the last vxlab said: enough to tell one leak from another.
    { ls -la "$VXLAB_STATE_DIR/$2" 2>&1; [ -n "${5:-}" ] && cat "$5.err"; } | sed 's/^/    /' >> "$LOG"
  fi
}

# Who holds lab NAME's lock, from /proc/locks.
lock_holders() {
  local ino pid
  ino=$(stat -c %i "$VXLAB_STATE_DIR/$1/lock" 2>/dev/null) || return
  for pid in $(awk -v i=":$ino\$" '$6 ~ i {print $5}' /proc/locks); do
    printf '%s(%s) ' "$pid" "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)"
  done
}

# A random delay in seconds, up to MS milliseconds.
delay() { local ms=$((RANDOM * 32768 + RANDOM)); ms=$((ms % ($1 + 1))); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---- kill -9, SIGINT and SIGTERM during up and during down ----
kill_trials() { # SIGNAL PHASE
  local sig=$1 phase=$2 s="kill -$1 during $2" f=$work/kill.yaml name=sk net=201 t signo
  signo=$sig; [[ $sig =~ ^[0-9]+$ ]] || signo=$(kill -l "$sig")
  scenario "$s"
  lab "$f" "$KILL_GUESTS" $name $net
  # How long up and down take here: the signal lands anywhere in that time, or just after.
  local t0 t1 t2 span
  t0=$(now_ms); run_vxlab "$work/k" up "$f"; t1=$(now_ms)
  run_vxlab "$work/k" down $name; t2=$(now_ms)
  if [ "$phase" = up ]; then span=$(((t1 - t0) * 6 / 5)); else span=$(((t2 - t1) * 6 / 5)); fi
  for t in $(seq "$KILLS"); do
    time_left || break
    TRIALS[$s]=$((TRIALS[$s] + 1))
    if [ "$phase" = down ]; then
      run_vxlab "$work/k" up "$f"; judge "$s" "$work/k" "up before the kill" 0
      start_vxlab "$work/k" down $name
    else
      start_vxlab "$work/k" up "$f"
    fi
    local d
    d=$(delay "$span")
    sleep "$d"
    signal_vxlab "$sig" "$PID"
    wait_vxlab "$PID"
    note "$s" "trial $t: signal after $d s, exit $CODE"
    # Finished before the signal (0, or 1 for a failed check), or stopped by it: 128 + the
    # signal when it died of it (KILL; INT and TERM during down, or before up's handler was
    # in place), 130 when up stopped between steps (INT, TERM: the status vxlab documents).
    local stopped=""
    [ "$sig" != 9 ] && stopped=130
    judge "$s" "$work/k" "the interrupted $phase" 0 1 $((128 + signo)) $stopped
    run_vxlab "$work/k" down $name; judge "$s" "$work/k" "down after the kill" 0
    [ "$CODE" = 75 ] && note "$s" "trial $t: the lock's holders: $(lock_holders "$name")"
    count_leak "$s" $name "$f" "trial $t" "$work/k"
  done
}

# ---- two ups at once on one bridge, or on one subnet ----
race_trials() { # KIND
  local kind=$1 s="two ups at once, same $1" fa=$work/ra.yaml fb=$work/rb.yaml t pa pb ca cb
  scenario "$s"
  if [ "$kind" = bridge ]; then
    lab "$fa" 2 ra 202 mesh vxbr-race; lab "$fb" 2 rb 203 mesh vxbr-race
  else
    lab "$fa" 2 ra 204; lab "$fb" 2 rb 204
  fi
  for t in $(seq "$RACES"); do
    time_left || break
    TRIALS[$s]=$((TRIALS[$s] + 1))
    start_vxlab "$work/ra" up "$fa"; pa=$PID
    start_vxlab "$work/rb" up "$fb"; pb=$PID
    wait_vxlab "$pa"; ca=$CODE; judge "$s" "$work/ra" "up ra" 0 65 70
    wait_vxlab "$pb"; cb=$CODE; judge "$s" "$work/rb" "up rb" 0 65 70
    if [ "$ca" = 0 ] && [ "$cb" = 0 ]; then
      WRONG[$s]=$((WRONG[$s] + 1)); note "$s" "trial $t: both labs came up on one $kind"
    fi
    # Taking the loser down must leave the winner whole.
    local win=ra lose=rb
    [ "$cb" = 0 ] && [ "$ca" != 0 ] && { win=rb; lose=ra; }
    run_vxlab "$work/d" down $lose; judge "$s" "$work/d" "down $lose" 0
    if [ "$ca" = 0 ] || [ "$cb" = 0 ]; then
      run_vxlab "$work/c" check $win; judge "$s" "$work/c" "check $win after down $lose" 0
    fi
    run_vxlab "$work/d" down $win; judge "$s" "$work/d" "down $win" 0
    count_leak "$s" ra "$fa" "trial $t"; count_leak "$s" rb "$fb" "trial $t"
  done
}

# ---- 100-guest up/check/down cycles under the watchdog ----
big_trials() {
  local s="$BIG_GUESTS-guest up/check/down" f=$work/big.yaml t
  scenario "$s"
  lab "$f" "$BIG_GUESTS" big 205 ring
  for t in $(seq "$BIG"); do
    time_left || break
    TRIALS[$s]=$((TRIALS[$s] + 1))
    local t0 t1 t2 t3
    t0=$(date +%s.%N)
    run_vxlab "$work/b" up "$f"; judge "$s" "$work/b" "up" 0
    t1=$(date +%s.%N)
    run_vxlab "$work/b" check big; judge "$s" "$work/b" "check" 0
    t2=$(date +%s.%N)
    run_vxlab "$work/b" down big; judge "$s" "$work/b" "down" 0
    t3=$(date +%s.%N)
    note "$s" "$(printf 'cycle %d: up %.2f s, check %.2f s, down %.2f s' "$t" \
      "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)")"
    count_leak "$s" big "$f" "cycle $t"
  done
}

# ---- validate on mutated labs and special files ----
fuzz_trials() {
  local s="fuzz: mutated labs, special files" dir=$work/fuzz f WATCHDOG=10
  scenario "$s"
  mkdir -p "$dir"
  python3 - "$dir" "$FUZZ" "${SOAK_SEED:-14}" labs/*.yaml <<'PY'
import os, random, re, sys
out, count, seed, labs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
rng = random.Random(seed)
texts = [open(p, "rb").read() for p in labs]
values = [b"[1, 2]", b"{a: 1}", b'"42"', b"42", b"true", b"~", b"", b"-1", b"0x10",
          b"99999999999999999999999999", b"1e400", b"-9223372036854775809", b".nan",
          b"*undefined", b"!!binary aGk=", b"'\xff'", b"- x", b"|\n  text"]
def mutate(t):
    kind = rng.choice(["truncate", "swap", "huge", "alias", "deep", "bytes", "indent", "dup"])
    lines = t.split(b"\n")
    i = rng.randrange(len(lines))
    if kind == "truncate":
        return t[: rng.randrange(len(t) + 1)]
    if kind in ("swap", "huge"):
        m = re.match(rb"(\s*-?\s*[\w-]+:\s*)(.*)", lines[i])
        if m:
            v = rng.choice(values if kind == "swap" else values[9:13])
            lines[i] = m.group(1) + v
        return b"\n".join(lines)
    if kind == "alias":
        n = rng.randrange(2, 12)
        laughs = [b"x0: &x0 [a, a, a, a, a, a, a, a, a, a]"] + [
            b"x%d: &x%d [%s]" % (k, k, b", ".join([b"*x%d" % (k - 1)] * 10)) for k in range(1, n)]
        return t + b"\n" + b"\n".join(laughs) + b"\n"
    if kind == "deep":
        d = rng.choice([17, 40, 1000, 100000])
        style = rng.choice(["flow", "block", "map"])
        if style == "flow":
            deep = b"x: " + b"[" * d + b"]" * d
        elif style == "block":
            deep = b"x:\n" + b"- " * d + b"1"
        else:
            deep = b"x: " + b"{a: " * d + b"1" + b"}" * d
        return t + b"\n" + deep + b"\n"
    if kind == "bytes":
        p = rng.randrange(len(t) + 1)
        return t[:p] + bytes([rng.choice([0xff, 0xc3, 0x80, 0x00, 0xfe, 0xed])]) + t[p:]
    if kind == "indent":
        lines[i] = b" " * rng.randrange(1, 4) + lines[i]
        return b"\n".join(lines)
    lines.insert(i, lines[i])
    return b"\n".join(lines)
for k in range(count):
    with open(os.path.join(out, "m%04d.yaml" % k), "wb") as f:
        f.write(mutate(rng.choice(texts)))
PY
  mkfifo "$dir/fifo.yaml"
  ln -s /dev/zero "$dir/zero-link.yaml"
  mkdir "$dir/dir.yaml"
  : > "$dir/empty.yaml"
  head -c $((2 << 20)) /dev/zero | tr '\0' '#' > "$dir/huge.yaml"
  for f in "$dir"/* /dev/zero /dev/urandom; do
    time_left || break
    TRIALS[$s]=$((TRIALS[$s] + 1))
    # Memory is capped: a lab file must never make vxlab read without bound.
    ( ulimit -v 1048576; exec timeout -k 5 "$WATCHDOG" "$VXLAB" validate "$f" ) \
      > "$work/f.out" 2> "$work/f.err" &
    wait_vxlab $!
    judge "$s" "$work/f" "validate $(basename "$f")" 0 65
  done
  # `up` refuses special files the same way, before touching anything.
  for f in "$dir/fifo.yaml" /dev/zero; do
    TRIALS[$s]=$((TRIALS[$s] + 1))
    run_vxlab "$work/f" up "$f"; judge "$s" "$work/f" "up $(basename "$f")" 65
  done
}

# The host settings labs raise, and the one down lowers while it deletes links: each must be
# back to what it was before the soak once every lab is down, however they were stopped.
host_settings() {
  local k
  for k in net.ipv4.neigh.default.gc_thresh{1,2,3} net.ipv6.neigh.default.gc_thresh{1,2,3} \
    net.core.netdev_max_backlog; do
    printf '%s=%s ' "$k" "$(sysctl -n "$k" 2>/dev/null)"
  done
  printf 'rcu_expedited=%s ' "$(cat /sys/kernel/rcu_expedited 2>/dev/null)"
  # What vxlab still records as raised for a lab, or as to be restored.
  python3 - <<'PY'
import json
try:
    r = json.load(open("/run/vxlab/neighbours.json"))
except (OSError, ValueError):
    r = {}
claims = sorted(r.get("claims", {}))
if claims:
    print("claims=" + ",".join(claims), end=" ")
PY
  [ -e /run/vxlab/rcu_expedited.previous ] && printf 'rcu_expedited.previous '
}

# SOAK_ONLY picks scenarios by word: fuzz kill race big (default: all).
only() { [ -z "${SOAK_ONLY:-}" ] || [[ " $SOAK_ONLY " == *" $1 "* ]]; }
started=$(date +%s)
before_settings=$(host_settings)
only fuzz && fuzz_trials
if only kill; then
  for sig in 9 INT TERM; do for phase in up down; do kill_trials $sig $phase; done; done
fi
only race && { race_trials bridge; race_trials subnet; }
only big && big_trials

s="host settings restored at the end"
scenario "$s"
after_settings=$(host_settings)
if ! sysctl -n net.ipv4.neigh.default.gc_thresh3 >/dev/null 2>&1; then
  # In a private network namespace the host's tables cannot be read: nothing is proved, and
  # the row says so with 0 trials rather than passing on two empty readings.
  TRIALS[$s]=0
  note "$s" "not measured: this network namespace cannot read the host's neighbour tables"
elif [ "$after_settings" != "$before_settings" ]; then
  TRIALS[$s]=1
  LEAKS[$s]=1
  note "$s" "before: $before_settings"
  note "$s" "after:  $after_settings"
else
  TRIALS[$s]=1
fi

printf '\n%-36s %7s %6s %6s %11s %7s\n' scenario trials hangs leaks "wrong exit" panics
for s in "${ORDER[@]}"; do
  printf '%-36s %7d %6d %6d %11d %7d\n' "$s" "${TRIALS[$s]}" "${HANGS[$s]}" "${LEAKS[$s]}" \
    "${WRONG[$s]}" "${PANICS[$s]}"
done
printf '\n%d s; details: %s\n' $(($(date +%s) - started)) "$LOG"
bad=0
for s in "${ORDER[@]}"; do
  bad=$((bad + HANGS[$s] + LEAKS[$s] + WRONG[$s] + PANICS[$s]))
done
[ "$bad" = 0 ]
