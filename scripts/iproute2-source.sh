#!/usr/bin/env bash
# Downloads Debian's iproute2 source package into DIR (default: the current directory) from
# the mirror apt already uses, without touching the host's apt configuration: a private
# sources list with a deb-src entry for that mirror, private package lists. Prints the path
# of the upstream release tarball (iproute2_<version>.orig.tar.*), which is what a lab's
# `iproute2: source:` takes.
set -euo pipefail
dir=$(realpath "${1:-.}")
mkdir -p "$dir"
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  # The first stanza that lists the suite.
  mirror=$(awk -v s="$suite" '
    /^$/ { u=""; ok=0 }
    /^URIs:/ { u=$2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok=1 }
    ok && u != "" { print u; exit }' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -e /etc/apt/sources.list ]; then
  mirror=$(awk -v s="$suite" '$1 == "deb" && $3 == s { print $2; exit }' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || { echo "no Debian mirror for $suite in apt's sources" >&2; exit 1; }
apt_dir="$dir/.apt"
mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial" "$apt_dir/cache"
cat > "$apt_dir/parts/src.sources" <<SRC
Types: deb-src
URIs: $mirror
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/parts"
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
      -o "APT::Sandbox::User=root")
if ! ls "$dir"/iproute2_*.orig.tar.* >/dev/null 2>&1; then
  apt-get "${opts[@]}" -q update >&2
  (cd "$dir" && apt-get "${opts[@]}" -q source --download-only iproute2 >&2)
fi
ls "$dir"/iproute2_*.orig.tar.* | head -n 1
