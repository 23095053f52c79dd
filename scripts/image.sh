#!/usr/bin/env bash
# Builds the five service images with podman from binaries already built on this host, on a
# minimal base assembled here: what gcr.io/distroless/cc-debian12:nonroot holds that the
# binaries use (glibc, libgcc, CA certificates, a nonroot user 65532, /tmp), nothing else.
#
#   scripts/image.sh [release|debug] [TAG]     (default: release, tag 0.1.0)
#
# Where a registry is reachable, the Dockerfile builds the same images from source on the real
# distroless base; both share images/runtime.Containerfile's runtime stage. No network is needed
# here: the base is `podman import`ed from a directory, and nothing is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${1:-release}"
TAG="${2:-0.1.0}"
BIN="target/$PROFILE"
BASE="localhost/ordermesh/base-cc:local"
SERVICES=(order inventory payment shipping notification)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if ! command -v podman >/dev/null; then
  echo "error: podman is not installed (apt-get install podman runc)" >&2
  exit 1
fi
for s in "${SERVICES[@]}" ""; do
  bin="$BIN/ordermesh${s:+-$s}"
  if [ ! -x "$bin" ]; then
    echo "error: $bin is missing: build it first (make build-release, or make build for debug)" >&2
    exit 1
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The base, rebuilt when the host's libraries or certificates change (their digest is its label).
libs=$(ldd "$BIN/ordermesh-order" "$BIN/ordermesh" | awk '/=> \//{print $3} /^\s*\/lib/{print $1}' | sort -u)
certs=/etc/ssl/certs/ca-certificates.crt
digest=$( (for f in $libs $certs; do sha256sum "$(readlink -f "$f")"; done) | sha256sum | cut -c1-16)
if [ "$(podman image inspect --format '{{ index .Labels "ordermesh.base.digest" }}' "$BASE" 2>/dev/null)" != "$digest" ]; then
  log "assembling $BASE (glibc, libgcc, CA certificates, user 65532)"
  root="$work/rootfs"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot" "$root/usr/local/bin"
  chmod 1777 "$root/tmp"
  for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cp -L "$certs" "$root$certs"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  chown 65532:65532 "$root/home/nonroot"
  tar -C "$root" -c . | podman import --change 'LABEL ordermesh.base.digest='"$digest" \
    --change 'USER 65532:65532' - "$BASE" >/dev/null
fi

# One small build context per image: the binaries and the runtime stage, nothing else.
cp images/runtime.Containerfile "$work/Containerfile"
cp "$BIN/ordermesh" "$work/ordermesh"
for s in "${SERVICES[@]}"; do
  log "podman build ordermesh/$s:$TAG ($PROFILE binaries)"
  cp "$BIN/ordermesh-$s" "$work/service"
  podman build --quiet --runtime runc -f "$work/Containerfile" \
    --build-arg RUNTIME_IMAGE="$BASE" --build-arg SERVICE="$s" \
    -t "localhost/ordermesh/$s:$TAG" "$work" >/dev/null
done
podman images --filter reference='localhost/ordermesh/*' --format '{{.Repository}}:{{.Tag}} {{.Size}}' >&2
