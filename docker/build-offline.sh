#!/usr/bin/env bash
# Builds the kernelbox sandbox image without pulling anything from a registry:
# debootstrap a Debian bookworm rootfs, provision it in a chroot, and `docker import` it.
# Usage: build-offline.sh [IMAGE_TAG]   (needs root, debootstrap and a Docker daemon)
set -euo pipefail

image=${1:-${KERNELBOX_IMAGE:-kernelbox-sandbox:latest}}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(tr -d '[:space:]' < "$here/IMAGE_VERSION")
mirror=${KERNELBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${KERNELBOX_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
started=$(date +%s)

step() { echo "==> [$1/5] $2 (+$(( $(date +%s) - started )) s)" >&2; }
fail() { echo "build-offline: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null || fail "debootstrap is not installed: run \`apt-get install debootstrap\`, then this again"
command -v docker >/dev/null || fail "the docker CLI is not installed"

work=$(mktemp -d /var/tmp/kernelbox-rootfs.XXXXXX)
rootfs=$work/rootfs
cleanup() {
    for mount in proc sys dev/pts dev; do
        if mountpoint -q "$rootfs/$mount" 2>/dev/null; then umount -l "$rootfs/$mount" || true; fi
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

step 1 "debootstrap --variant=minbase bookworm ($mirror)"
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >&2

step 2 "configuring package sources"
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security_mirror bookworm-security main
SOURCES
cp /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true

step 3 "installing python3, ipykernel, numpy, pandas, matplotlib, pillow, pip, nftables, dnsmasq, tini"
install -m 0755 "$here/provision.sh" "$rootfs/tmp/provision.sh"
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" /bin/sh /tmp/provision.sh >&2
umount "$rootfs/proc"
rm -f "$rootfs/tmp/provision.sh"
: > "$rootfs/etc/resolv.conf"

step 4 "importing the rootfs as $image"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/home/sandbox/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV HOME=/home/sandbox' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'USER sandbox' \
    --change 'WORKDIR /workspace' \
    --change 'ENTRYPOINT ["/usr/bin/tini", "--"]' \
    --change 'CMD ["sleep", "infinity"]' \
    --change "LABEL io.kernelbox.image-version=$version" \
    - "$image" >&2

step 5 "checking the image"
docker run --rm --cap-drop ALL --security-opt no-new-privileges "$image" \
    python3 -c "import ipykernel, numpy, pandas, matplotlib, PIL; print('python ok, ipykernel', ipykernel.__version__)" >&2

size=$(docker image inspect --format '{{.Size}}' "$image")
echo "==> built $image (image version $version, $((size / 1024 / 1024)) MiB) in $(( $(date +%s) - started )) s" >&2
