#!/bin/sh
# Builds iproute2 from source, one stage per run: `sh build.sh STAGE`, where STAGE is deps,
# unpack, configure, make, install or verify. Rendered by vxlab for one source; every value is
# shell-quoted by the renderer. Everything happens in the build directory; the result is
# DIR/prefix/sbin/ip and DIR/prefix/sbin/bridge, and DIR/done once the new ip knows vxlan.
set -eu
exec 2>&1
dir={{ dir | sh }}
subdirs={{ subdirs | sh }}
cd "$dir"
have() { command -v "$1" >/dev/null 2>&1; }

case "$1" in
deps)
  # Only what is missing is installed: a guest without a route to a mirror still builds
  # when its image has the tools.
  missing=""
  essential=""
  have cc || have gcc || { missing="$missing cc"; essential="$essential cc"; }
  for t in make tar{% if git %} git{% endif %}; do
    have "$t" || { missing="$missing $t"; essential="$essential $t"; }
  done
  for t in pkg-config bison flex; do have "$t" || missing="$missing $t"; done
  if have pkg-config; then
    pkg-config --exists libmnl || missing="$missing libmnl"
    pkg-config --exists libelf || missing="$missing libelf"
  fi
  [ -e /usr/include/db_185.h ] || missing="$missing db_185.h"
  if [ -z "$missing" ]; then
    echo "all build dependencies are present"
    exit 0
  fi
  echo "missing:$missing"
  ok=no
  if have apt-get; then
    export DEBIAN_FRONTEND=noninteractive
    pkgs={{ apt | join(sep=" ") | sh }}{% if git %}" git"{% endif %}
    # shellcheck disable=SC2086
    # Another apt may hold the lock (parallel builds on one host): wait for it.
    lock="-o DPkg::Lock::Timeout=300"
    { apt-get $lock install -y -q --no-install-recommends $pkgs ||
      { apt-get $lock update -q && apt-get $lock install -y -q --no-install-recommends $pkgs; }; } && ok=yes
  elif have dnf; then
    pkgs={{ dnf | join(sep=" ") | sh }}{% if git %}" git"{% endif %}
    # shellcheck disable=SC2086
    dnf install -y $pkgs && ok=yes
  elif have yum; then
    pkgs={{ yum | join(sep=" ") | sh }}{% if git %}" git"{% endif %}
    # shellcheck disable=SC2086
    yum install -y $pkgs && ok=yes
  fi
  [ "$ok" = yes ] && exit 0
  if [ -n "$essential" ]; then
    echo "no package manager could install:$essential"
    exit 1
  fi
  echo "could not install:$missing; building without them (vxlab needs only ip and bridge)"
  ;;
unpack)
  rm -rf src
{%- if git %}
  git clone --depth 1{% if reference %} --branch {{ reference | sh }}{% endif %} -- {{ git | sh }} src
{%- else %}
  mkdir src
  tar -xf {{ tarball | sh }} -C src --strip-components=1
{%- endif %}
  ls src
  ;;
configure)
  cd src
  ./configure
  ;;
make)
  cd src
  make -j"$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)" SUBDIRS="$subdirs"{% if cflags %} CCOPTS={{ cflags | sh }}{% endif %}
  ;;
install)
  cd src
  rm -rf "$dir/prefix"
  make install DESTDIR="$dir/prefix" SUBDIRS="$subdirs"{% if cflags %} CCOPTS={{ cflags | sh }}{% endif %}
  ls -l "$dir/prefix/sbin/ip" "$dir/prefix/sbin/bridge"
  ;;
verify)
  "$dir/prefix/sbin/ip" -V
  if ! "$dir/prefix/sbin/ip" link help 2>&1 | grep -qw vxlan; then
    echo "the new ip does not know type vxlan"
    exit 1
  fi
  touch "$dir/done"
  ;;
*)
  echo "unknown stage $1"
  exit 2
  ;;
esac
