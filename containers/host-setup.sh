#!/usr/bin/env bash
# A container engine for `make images` and `make test-containers` on a machine without Docker, as root: podman
# (rootful) with runc, buildah and debootstrap from apt, and the settings podman needs on this kind of machine:
# runc as the runtime (crun fails on its hybrid cgroups) and default ulimits the engine may set (without them:
# "error setting rlimit type 7: operation not permitted"). Idempotent: what is there already is kept.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "make container-host: needs root (apt-get, rootful podman); run it as root or with sudo" >&2
    exit 1
fi
missing=()
for tool in podman runc buildah debootstrap; do
    command -v "$tool" > /dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq podman runc buildah debootstrap > /dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq podman runc buildah debootstrap > /dev/null; }
fi
# A drop-in of its own (podman merges /etc/containers/containers.conf.d/*.conf over the system file): nothing else
# in the host's configuration is rewritten.
conf=/etc/containers/containers.conf.d/50-chat-retrain.conf
mkdir -p "$(dirname "$conf")"
cat > "$conf" <<'CONF'
# make container-host (containers/host-setup.sh)
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
podman info --format '{{.Host.OCIRuntime.Name}} {{.Version.Version}}'
