#!/usr/bin/env bash
# Benchmark: a class of the seed lab on two hosts against the same class on this machine.
#
# There is one machine, so the two hosts are simulated as the multi-host test does it: an sshd
# this script starts on 127.0.0.1 and one on 127.0.0.2 (own config, host keys and a root key
# made here, nothing of the machine's own sshd), listed as h1 and h2 with
# qemu+ssh://root@127.0.0.X:PORT/system URIs. vxlab treats them as two hosts: every libvirt
# call goes over that host's connection, its host-side work over its SSH connection, and each
# guest's SSH through a direct-tcpip channel of that host's sshd. Both "hosts" share this
# machine's cores, so the figures show what the remote path costs, not what two machines gain.
#
# Each run, alternating: `vxlab up --count COPIES` here, then `vxlab up --count COPIES --hosts`
# (one copy a host when COPIES=2), each timed from start to every copy up and checked, then
# `down --all` (timed too). RUNS runs (default 3); medians printed with the ratio.
# Needs root, libvirtd, sshd (openssh-server), and vxlab's debian-12 image.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
COPIES=${COPIES:-2}
POOL=${POOL:-10.177.44.0/22}
cargo build --release -q
VXLAB=$PWD/target/release/vxlab
"$VXLAB" image list | grep -q '^debian-12 ' || "$VXLAB" image build debian-12 >&2
work=$(mktemp -d); chmod 755 "$work"
export VXLAB_STATE_DIR=$work/state
pids=()
cleanup() {
  "$VXLAB" down bench-hosts --all >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
port=$(python3 -c 'import socket
for p in range(2222, 2300):
    try:
        for a in ("127.0.0.1", "127.0.0.2"):
            s = socket.socket(); s.bind((a, p)); s.close()
        print(p); break
    except OSError: pass')

ssh-keygen -q -t ed25519 -N '' -f "$work/client"
mkdir -p /run/sshd
: > "$work/known_hosts"
inventory=$work/hosts.yaml
echo "hosts:" > "$inventory"
for i in 1 2; do
  d=$work/h$i; mkdir -p "$d"
  ssh-keygen -q -t ed25519 -N '' -f "$d/host"
  cp "$work/client.pub" "$d/authorized_keys"
  cat > "$d/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.$i
HostKey $d/host
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $d/sshd.pid
MaxStartups 100
LogLevel DEBUG1
SetEnv HOME=$d
EOF
  /usr/sbin/sshd -D -f "$d/sshd_config" -E "$d/sshd.log" & pids+=($!)
  echo "[127.0.0.$i]:$port $(cut -d' ' -f1,2 "$d/host.pub")" >> "$work/known_hosts"
  echo "  - name: h$i
    uri: qemu+ssh://root@127.0.0.$i:$port/system?keyfile=$work/client&known_hosts=$work/known_hosts&no_verify=1" >> "$inventory"
done
# Ready when each sshd says it listens (tail -F follows the log as it is written).
for i in 1 2; do
  (set +o pipefail; timeout 10 tail -F "$work/h$i/sshd.log" 2>/dev/null |
    grep -q -m1 "Server listening on 127.0.0.$i port $port") || { cat "$work/h$i/sshd.log"; exit 1; }
done

lab=$work/bench-hosts.yaml
sed -e 's/^name: two-vm/name: bench-hosts/' labs/two-vm.yaml > "$lab"
"$VXLAB" hosts prepare "$inventory" >&2

declare -A up down
for r in $(seq "$RUNS"); do
  for where in here hosts; do
    args=(up "$lab" --count "$COPIES" --pool "$POOL")
    [ "$where" = hosts ] && args+=(--hosts "$inventory")
    t0=$(now)
    "$VXLAB" "${args[@]}" > "$work/out" 2> "$work/err" || { cat "$work/err"; exit 1; }
    t1=$(now)
    "$VXLAB" down bench-hosts --all > /dev/null 2>&1
    t2=$(now)
    u=$(echo "$t1 - $t0" | bc); d=$(echo "$t2 - $t1" | bc)
    up[$where]+="$u "; down[$where]+="$d "
    printf 'run %s %-5s up+check %6.1f s  down %5.1f s  (load %s)\n' "$r" "$where" "$u" "$d" \
      "$(cut -d' ' -f1 /proc/loadavg)"
  done
done
med() { tr ' ' '\n' <<< "$1" | grep . | median; }
uh=$(med "${up[here]}"); ur=$(med "${up[hosts]}")
dh=$(med "${down[here]}"); dr=$(med "${down[hosts]}")
echo
printf '%-36s %10s %10s\n' "$COPIES copies of the seed lab ($((COPIES * 2)) VMs)" "up+check" "down"
printf '%-36s %9.1fs %9.1fs\n' "this machine" "$uh" "$dh"
printf '%-36s %9.1fs %9.1fs\n' "two hosts (qemu+ssh, loopback)" "$ur" "$dr"
printf 'ratio two hosts / this machine: up+check %.2f, down %.2f (medians of %s runs)\n' \
  "$(echo "$ur / $uh" | bc -l)" "$(echo "$dr / $dh" | bc -l)" "$RUNS"
logins=$(cat "$work"/h?/sshd.log | grep -c 'remote software version libssh2' || true)
echo "vxlab's own SSH logins to the two hosts: $logins; one a host for each vxlab command" \
  "(hosts prepare, and up and down in each of $RUNS runs) makes $((2 * (1 + 2 * RUNS)))"
