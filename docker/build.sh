#!/bin/bash
# Build (and optionally push) a retina-edge image, tagged by project version and L4T release.
#
#   docker/build.sh nano|orin|train [--dry-run] [--cross] [--push REGISTRY]
#
#   nano   retina-edge:VERSION-l4t-r32.7.1   Jetson Nano, JetPack 4.6.1   docker/Dockerfile.l4t-r32
#   orin   retina-edge:VERSION-l4t-r36.4.0   Jetson Orin, JetPack 6.1     docker/Dockerfile.l4t-r36
#   train  retina-edge-train:VERSION         workstation (x86_64, CUDA)   docker/Dockerfile.train
#
# A Jetson image is built on a Jetson of the same L4T series (read from /etc/nv_tegra_release, or
# RETINA_EDGE_NV_TEGRA_RELEASE); anything else is refused unless --cross, which builds for linux/arm64
# with docker buildx under QEMU emulation (binfmt_misc) instead. --dry-run prints the exact docker commands
# and runs nothing. The Nano image needs the sha256 of the ONNX Runtime wheel: RETINA_EDGE_ORT_SHA256.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source-path=SCRIPTDIR source=../deploy/lib/l4t.sh
. "$ROOT/deploy/lib/l4t.sh"

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "docker/build.sh: $*" >&2
    exit 2
}

TARGET=""
DRY_RUN=0
CROSS=0
REGISTRY=""
while [ $# -gt 0 ]; do
    case "$1" in
        nano|orin|train) [ -z "$TARGET" ] || die "one target at a time (got $TARGET and $1)"; TARGET=$1 ;;
        --dry-run) DRY_RUN=1 ;;
        --cross) CROSS=1 ;;
        --push) [ $# -ge 2 ] || die "--push needs a registry (e.g. --push registry.example.org/clinic)"
                REGISTRY=${2%/}; shift ;;
        --push=*) REGISTRY=${1#--push=}; REGISTRY=${REGISTRY%/} ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
[ -n "$TARGET" ] || { usage >&2; die "name a target: nano, orin or train"; }

VERSION=$(project_version "$ROOT")
[ -n "$VERSION" ] || die "no version=\"...\" in $ROOT/setup.py"
REVISION=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
SOURCE=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || echo local)

case "$TARGET" in
    nano)  RELEASE=r32.7.1; DOCKERFILE=docker/Dockerfile.l4t-r32; IMAGE=$(image_name "$VERSION" "$RELEASE") ;;
    orin)  RELEASE=r36.4.0; DOCKERFILE=docker/Dockerfile.l4t-r36; IMAGE=$(image_name "$VERSION" "$RELEASE") ;;
    train) RELEASE="";      DOCKERFILE=docker/Dockerfile.train;   IMAGE="retina-edge-train:$VERSION" ;;
esac

# --- where it may be built ------------------------------------------------------------------------------------
if [ -n "$RELEASE" ] && [ "$CROSS" = 0 ]; then
    if ! HOST=$(l4t_release); then
        die "this machine is not a Jetson (no L4T release in ${RETINA_EDGE_NV_TEGRA_RELEASE:-/etc/nv_tegra_release}):" \
            "build the $TARGET image on a Jetson with L4T $(l4t_series "$RELEASE").x, or pass --cross to build" \
            "for linux/arm64 under QEMU emulation"
    fi
    if [ "$(l4t_series "$HOST")" != "$(l4t_series "$RELEASE")" ]; then
        die "this Jetson runs L4T $HOST but the $TARGET image is for L4T $RELEASE: build it on an" \
            "L4T $(l4t_series "$RELEASE").x Jetson, or pass --cross to build it under QEMU emulation" \
            "(this host runs the image for its own release: $(l4t_image_release "$HOST" || echo none))"
    fi
fi
if [ "$TARGET" = train ] && [ "$CROSS" = 1 ]; then
    die "--cross is for the Jetson images; the training image is built for the machine it runs on"
fi

# --- the command -----------------------------------------------------------------------------------------------
ARGS=(--file "$ROOT/$DOCKERFILE" --tag "$IMAGE"
      --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" --build-arg "SOURCE=$SOURCE"
      --label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
[ -z "$REGISTRY" ] || ARGS+=(--tag "$REGISTRY/$IMAGE")
if [ "$TARGET" = nano ]; then
    ARGS+=(--build-arg "ORT_WHEEL_SHA256=${RETINA_EDGE_ORT_SHA256:-}")
    if [ -z "${RETINA_EDGE_ORT_SHA256:-}" ]; then
        msg="RETINA_EDGE_ORT_SHA256 is not set: the Nano image pins the Jetson Zoo ONNX Runtime wheel by sha256 and no"
        msg="$msg published sha256 could be verified; download the wheel (URL in $DOCKERFILE), check it, and set it"
        [ "$DRY_RUN" = 1 ] || die "$msg"
        echo "docker/build.sh: warning: $msg (the build below would stop)" >&2
    fi
fi

ENV_PREFIX=()
if [ "$CROSS" = 1 ]; then
    # QEMU runs the image's arm64 programs: apt, pip, compilers. The Nano image's CUDA, cuDNN and TensorRT come
    # from the host only at run time, so it cross-builds, without pycuda (its build needs the host's CUDA
    # headers); the Orin image carries CUDA, so pycuda is compiled too (slowly).
    CMD=(docker buildx build --platform linux/arm64)
    [ "$TARGET" != nano ] || ARGS+=(--build-arg "WITH_PYCUDA=0")
    if [ -n "$REGISTRY" ]; then ARGS+=(--push); else ARGS+=(--load); fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        echo "docker/build.sh: warning: no qemu-aarch64 in binfmt_misc: first run" \
             "docker run --privileged --rm tonistiigi/binfmt --install arm64" >&2
    fi
elif [ "$TARGET" = nano ]; then
    # The legacy builder runs build steps with docker's default runtime: "nvidia" on the Nano (deploy/setup-jetson
    # sets it) mounts the host's CUDA, which pycuda's build needs. BuildKit does not use the default runtime.
    ENV_PREFIX=(env DOCKER_BUILDKIT=0)
    CMD=(docker build)
else
    CMD=(docker build)
fi
BUILD=("${ENV_PREFIX[@]}" "${CMD[@]}" "${ARGS[@]}" "$ROOT")

run() {
    printf '%q ' "$@" | sed 's/ $//'
    echo
    [ "$DRY_RUN" = 1 ] || "$@"
}

if [ "$DRY_RUN" = 0 ] && [ "$TARGET" = nano ] && [ "$CROSS" = 0 ]; then
    runtime=$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null || true)
    [ "$runtime" = nvidia ] || die "docker's default runtime is '${runtime:-unknown}', not nvidia: the pycuda stage" \
        "needs the host's CUDA during the build; run deploy/setup-jetson (or set \"default-runtime\": \"nvidia\"" \
        "in /etc/docker/daemon.json and restart docker)"
fi
run "${BUILD[@]}"
if [ -n "$REGISTRY" ] && [ "$CROSS" = 0 ]; then
    run docker push "$REGISTRY/$IMAGE"
fi
