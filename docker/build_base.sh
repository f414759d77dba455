#!/bin/sh
# Build a Debian bookworm base image without any registry: debootstrap a minimal root file system
# from the Debian mirror apt already uses, then `docker import` it.
#   sh docker/build_base.sh [IMAGE_NAME]        (default local/debian:bookworm; no-op if it exists)
# Docker Hub is not reachable here, so `FROM debian:bookworm` cannot be pulled; the Dockerfile's
# BASE_IMAGE build argument takes this image instead.
set -eu

NAME=${1:-local/debian:bookworm}
SUITE=${SUITE:-bookworm}

if docker image inspect "$NAME" >/dev/null 2>&1; then
    echo "base image $NAME already exists"
    exit 0
fi

# The first Debian (not security) mirror in apt's sources: deb822 "URIs:" lines or one-line "deb URL ...".
debian_mirror() {
    for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$file" ] || continue
        awk '/^[[:space:]]*URIs:/ { for (i = 2; i <= NF; i++) print $i }
             /^[[:space:]]*deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }' "$file"
    done | grep -v -e security -e nodesource -e google | grep '/debian/\?$' | head -n 1
}
MIRROR=${MIRROR:-$(debian_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get install -y debootstrap >/dev/null || { apt-get update >/dev/null && apt-get install -y debootstrap >/dev/null; }
fi

ROOTFS=$(mktemp -d /tmp/rootfs-XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT INT TERM
echo "debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -n 20 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import - "$NAME" >/dev/null
echo "built base image $NAME"
