#!/bin/sh
# Build a Python base image from Debian packages, for machines that cannot pull python:3.11-slim
# (no registry access, air-gapped build hosts, this project's CI):
#   debootstrap --variant=minbase bookworm + python3 + python3-venv  ->  docker import
# Then build mirror's image on it:  docker build --build-arg BASE=mirror-base:local ...
#
# usage: scripts/build-base-image.sh [CACHE_DIR] [TAG]
#   CACHE_DIR  keeps the rootfs tarball between runs (default ${TMPDIR:-/tmp}/mirror-base);
#              debootstrap runs only when it is missing
#   TAG        image name (default mirror-base:local)
# env: DOCKER       docker command line, e.g. "docker -H unix:///run/x.sock" (default docker)
#      DEBIAN_MIRROR  Debian archive (default: the first one apt is configured with)
#      SUITE        Debian suite (default bookworm: python3 is 3.11, as mirror requires)
# Needs root (debootstrap) and the debootstrap package.
set -eu

cache=${1:-${TMPDIR:-/tmp}/mirror-base}
tag=${2:-mirror-base:local}
suite=${SUITE:-bookworm}
docker=${DOCKER:-docker}

apt_mirror() {
  # deb822 sources (URIs:) or one-line sources (deb URL suite ...); skip the security archive.
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    url=$(awk '/^URIs:/ && !/security/ {print $2; exit} /^deb / && !/security/ {print $2; exit}' "$f")
    [ -n "$url" ] && { echo "$url"; return; }
  done
  echo http://deb.debian.org/debian
}

tarball="$cache/rootfs-$suite-python3.tar"
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  mirror=${DEBIAN_MIRROR:-$(apt_mirror)}
  rootfs="$cache/rootfs.$$"
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap --variant=minbase $suite from $mirror (a few minutes)" >&2
  debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$rootfs" "$mirror" >&2
  # What a runtime image never needs: package lists, caches, docs, man pages, translations.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
         "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
  tar --numeric-owner -C "$rootfs" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* \
      -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
  trap - EXIT
fi
# shellcheck disable=SC2086  # $docker is a command line on purpose
$docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tarball" "$tag" >&2
echo "$tag"
