#!/usr/bin/env bash
# Builds the kernelbox server image without pulling anything: the sandbox image (a Debian rootfs
# already built offline by `kernelbox image build --offline`) as the base, with this checkout's
# kernelbox binary and the host's docker CLI added by one `docker commit`.
# Usage: docker/server/build-offline.sh [TAG]     (default kernelbox-server:latest)
#   KERNELBOX_BIN    the binary to ship (default target/release/kernelbox)
#   KERNELBOX_IMAGE  the sandbox image to build on (default kernelbox-sandbox:latest)
set -euo pipefail

tag=${1:-kernelbox-server:latest}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${KERNELBOX_BIN:-$here/../../target/release/kernelbox}
base=${KERNELBOX_IMAGE:-kernelbox-sandbox:latest}
started=$(date +%s)

fail() { echo "server/build-offline: $*" >&2; exit 1; }
step() { echo "==> [$1/3] $2 (+$(( $(date +%s) - started )) s)" >&2; }

[ -x "$bin" ] || fail "no kernelbox binary at $bin: run \`cargo build --release\` first (or set KERNELBOX_BIN)"
docker_cli=$(command -v docker) || fail "the docker CLI is not installed"
docker image inspect "$base" >/dev/null 2>&1 \
    || fail "the base image $base is missing: run \`$bin image build --offline --image $base\` first"

stage=$(mktemp -d)
container=
cleanup() {
    [ -z "$container" ] || docker rm -f "$container" >/dev/null 2>&1 || true
    rm -rf "$stage"
}
trap cleanup EXIT

step 1 "staging $bin and $docker_cli"
cp "$bin" "$stage/kernelbox"
cp "$docker_cli" "$stage/docker"
# Debug symbols are most of a debug build's size.
if command -v strip >/dev/null; then strip "$stage/kernelbox" "$stage/docker" 2>/dev/null || true; fi

step 2 "adding them to $base"
container=$(docker create "$base")
docker cp "$stage/kernelbox" "$container:/usr/local/bin/kernelbox"
docker cp "$stage/docker" "$container:/usr/local/bin/docker"
docker commit \
    --change 'USER root' \
    --change 'ENV HOME=/root' \
    --change 'ENV KERNELBOX_HOST=0.0.0.0' \
    --change 'WORKDIR /' \
    --change 'EXPOSE 8000' \
    --change 'ENTRYPOINT ["/usr/bin/tini", "--", "kernelbox"]' \
    --change 'CMD ["serve"]' \
    --change 'LABEL io.kernelbox.server=true' \
    "$container" "$tag" >/dev/null

step 3 "built $tag"
