#!/usr/bin/env bash
# Build localhost/chat-retrain-base:bookworm without a registry: debootstrap a minimal Debian bookworm from the
# mirror apt already uses and import it into podman. The host's CA bundle goes in too (/etc/ssl/host-ca-bundle.crt,
# appended to the system bundle by the Dockerfiles), so pip inside the image trusts the same (proxy) certificates
# as the host. Idempotent: an existing image is kept.
set -euo pipefail
image=${1:-localhost/chat-retrain-base:bookworm}
if podman image exists "$image"; then
    echo "$image exists"
    exit 0
fi
mirror=$( (grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true) \
    | grep -oE 'https?://[^ ]+/debian/?$' | head -1)
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/host-ca-bundle.crt"
rm -rf "$rootfs/var/cache/apt/archives/"*.deb
tar -C "$rootfs" -c . | podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$image"
