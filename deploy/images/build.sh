#!/usr/bin/env bash
# Local stand-ins for the official base images, built from Debian's packages, for machines that reach
# no container registry (the official images cannot be pulled there). Run by `make images`.
#
#   deploy/images/build.sh            build what is missing, then write deploy/images/local.env
#   deploy/images/build.sh --force    rebuild every stand-in
#
# The stand-ins have names of their own (never an official image's name), all under sluice-local/:
#
#   sluice-local/debian:bookworm            debootstrap --variant=minbase bookworm, docker import
#   sluice-local/python:3.11                Debian's python3.11 + venv + pip, ca-certificates
#   sluice-local/rabbitmq:3.10-management   Debian's rabbitmq-server, management plugin enabled
#   sluice-local/redis:7                    Debian's redis-server
#   sluice-local/prometheus:2               Debian's prometheus (and promtool)
#
# deploy/images/local.env then names them in SLUICE_PYTHON_IMAGE, SLUICE_RABBITMQ_IMAGE,
# SLUICE_REDIS_IMAGE and SLUICE_PROMETHEUS_IMAGE, so that
#   docker-compose --env-file deploy/images/local.env up -d --build
# and the test fixtures (SLUICE_TEST_BROKERS=containers) use them. Users with a registry never need
# this: the compose file and the fixtures default to the official images.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
force=0
[ "${1:-}" = "--force" ] && force=1

MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
BASE=sluice-local/debian:bookworm
PYTHON=sluice-local/python:3.11
RABBITMQ=sluice-local/rabbitmq:3.10-management
REDIS=sluice-local/redis:7
PROMETHEUS=sluice-local/prometheus:2

say() { printf 'images: %s\n' "$*" >&2; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker engine answers (start it: dockerd &, as root)"

have() { [ "$force" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }

start=$(date +%s)

if have "$BASE"; then
  say "$BASE: present"
else
  command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
  root="$(mktemp -d /tmp/sluice-rootfs.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  say "$BASE: debootstrap --variant=minbase $SUITE from $MIRROR"
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >/tmp/sluice-debootstrap.log 2>&1 \
    || die "debootstrap failed: see /tmp/sluice-debootstrap.log"
  # apt inside the image: the same mirror, no recommends, no caches kept
  printf 'deb %s %s main\ndeb %s %s-updates main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" >"$root/etc/apt/sources.list"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/90sluice"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$root"
  trap - EXIT
fi

build() {  # build NAME DOCKERFILE-DIR
  if have "$1"; then
    say "$1: present"
    return
  fi
  say "$1: building"
  docker build -q --build-arg "BASE=$BASE" -t "$1" "$here/$2" >/dev/null || die "building $1 failed"
}

build "$PYTHON" python
build "$RABBITMQ" rabbitmq
build "$REDIS" redis
build "$PROMETHEUS" prometheus

cat >"$here/local.env" <<EOF
# written by deploy/images/build.sh (make images): local stand-ins for the official images
SLUICE_PYTHON_IMAGE=$PYTHON
SLUICE_RABBITMQ_IMAGE=$RABBITMQ
SLUICE_REDIS_IMAGE=$REDIS
SLUICE_PROMETHEUS_IMAGE=$PROMETHEUS
EOF
say "wrote $here/local.env in $(($(date +%s) - start)) s"
