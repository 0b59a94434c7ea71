#!/usr/bin/env bash
# Runs scripts/test in a fresh Debian 12 (bookworm) chroot, to check that it sets up a machine
# by itself: debootstrap's minimal system, this tree's committed files (git archive HEAD), and
# the host's Rust toolchain and cargo cache bind-mounted (Rust is what the README asks for
# first). Arguments go to scripts/test. Needs root (chroot and mounts) and debootstrap; the
# chroot (with what scripts/test installed in it) is kept under target/fresh-debian/ between
# runs unless FRESH=1, which starts over.
#
#     sudo scripts/fresh-debian.sh --test upgrades --test browser
set -euo pipefail
cd "$(dirname "$0")/.."

root=$PWD/target/fresh-debian
if [ "${FRESH:-}" = 1 ]; then
    rm -rf "$root"
fi
if [ ! -x "$root/bin/sh" ]; then
    mkdir -p "$root"
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
    # As in Debian's container images: packages do not start services in the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod +x "$root/usr/sbin/policy-rc.d"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The host's own certificate authorities (a TLS-inspecting proxy's, say), so that the chroot
# reaches npm and PyPI as the host does; ca-certificates adds them when it is installed.
mkdir -p "$root/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
if [ -x "$root/usr/sbin/update-ca-certificates" ]; then
    chroot "$root" update-ca-certificates >/dev/null
fi
# The tree afresh; its target/ (the builds, the npm and llama-server fixtures) is kept, as a
# developer's would be.
mkdir -p "$root/src"
find "$root/src" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
git archive HEAD | tar -x -C "$root/src"

mounts=()
unmount() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -l "${mounts[$i]}" 2>/dev/null || true
    done
}
trap unmount EXIT
bind() {
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    mounts+=("$root$2")
}
mkdir -p "$root/proc" "$root/sys"
mount -t proc proc "$root/proc"
mounts+=("$root/proc")
bind /sys /sys
bind /dev /dev
bind /dev/pts /dev/pts
bind /dev/shm /dev/shm
bind "${RUSTUP_HOME:-$HOME/.rustup}" /opt/rustup
bind "${CARGO_HOME:-$HOME/.cargo}" /opt/cargo

chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI=1 \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo \
    PATH=/opt/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c 'cd /src && scripts/test "$@"' scripts/test "$@"
