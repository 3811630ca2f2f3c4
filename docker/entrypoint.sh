#!/bin/bash
# The containers' entrypoint: check what the image needs from the host, then exec the program, so that it
# becomes the container's main process and `docker stop`'s SIGTERM reaches it (retina-edge then stops after
# the frame in flight, flushes its outputs and exits 143).
#
#   IMAGE                      -> retina-edge --help       (the image's CMD)
#   IMAGE run /data/inbox ...  -> retina-edge run /data/inbox ...
#   IMAGE retina-edge ARGS     -> retina-edge ARGS
#   IMAGE bash | sh | python3 | retina-train ARGS  -> that program, unchecked
#
# Environment:
#   RETINA_EDGE_ENTRY            the program for verbs (retina-edge; retina-train in the training image)
#   RETINA_EDGE_IMAGE_L4T        the image's L4T release (set by the Dockerfile); r32.* checks the host's
#                                bind-mounted TensorRT, CUDA and cuDNN
#   RETINA_EDGE_HOME             the state folder (a volume) that must be writable
#   RETINA_EDGE_SKIP_HOST_CHECK  1: do not check the host libraries (ONNX Runtime on the CPU only)
#   RETINA_EDGE_ROOT             a prefix for the checked library paths (tests only)
set -euo pipefail

ENTRY=${RETINA_EDGE_ENTRY:-retina-edge}
ROOT=${RETINA_EDGE_ROOT:-}
STATE=${RETINA_EDGE_HOME:-/var/lib/retina-edge}

die() {
    echo "retina-edge container: $*" >&2
    exit 2
}

# On JetPack 4 (L4T r32) the NVIDIA container runtime mounts these from the host (its csv lists in
# /etc/nvidia-container-runtime/host-files-for-container.d/: tensorrt.csv, cudnn.csv, cuda.csv).
R32_LIBS="/usr/lib/aarch64-linux-gnu/libnvinfer.so.8 /usr/lib/aarch64-linux-gnu/libcudnn.so.8 /usr/local/cuda/lib64/libcudart.so.10.2"

check_host_libraries() {
    local lib missing=""
    case "${RETINA_EDGE_IMAGE_L4T:-}" in
        r32.*) ;;
        *) return 0 ;;  # JetPack 6 images carry CUDA, cuDNN and TensorRT; the training image needs none
    esac
    [ "${RETINA_EDGE_SKIP_HOST_CHECK:-0}" = 1 ] && return 0
    for lib in $R32_LIBS; do
        [ -e "$ROOT$lib" ] || missing="$missing $lib"
    done
    [ -z "$missing" ] || die "TensorRT/CUDA/cuDNN from the host are missing (${missing# }): run with" \
        "--runtime nvidia on a Jetson with JetPack 4.6 (L4T ${RETINA_EDGE_IMAGE_L4T%.*}.x); deploy/run does" \
        "(RETINA_EDGE_SKIP_HOST_CHECK=1 runs ONNX Runtime on the CPU without them)"
}

# The ledger, engines and caches live in $STATE: unwritable, every start would rebuild the engine for minutes
# and nothing could be recorded. A volume created by root on the host is the usual cause.
check_state_folder() {
    local probe owner
    mkdir -p "$STATE" 2>/dev/null || die "$STATE cannot be created by uid $(id -u): mount a volume there" \
        "owned by uid $(id -u) (on the host: sudo mkdir -p DIR && sudo chown $(id -u):$(id -g) DIR)"
    probe="$STATE/.write-test.$$"
    if ! ( : > "$probe" ) 2>/dev/null; then
        owner=$(stat -c %u "$STATE" 2>/dev/null || echo "?")
        if [ "$owner" = 0 ]; then
            die "$STATE is not writable by uid $(id -u): the volume is owned by root: on the host," \
                "sudo chown -R $(id -u):$(id -g) HOST_DIR (the folder mounted at $STATE)"
        fi
        die "$STATE is not writable by uid $(id -u) (owner uid $owner, mode $(stat -c %a "$STATE" 2>/dev/null)):" \
            "on the host, sudo chown -R $(id -u):$(id -g) HOST_DIR (the folder mounted at $STATE)"
    fi
    rm -f "$probe"
    # a heartbeat left by an earlier container is not this one's: docker/healthcheck.sh would call it stale
    rm -f "$STATE/heartbeat"
}

needs_checks() {
    case "${1:-}" in
        ""|-h|--help|help|--version) return 1 ;;
    esac
    return 0
}

case "${1:-}" in
    bash|sh|python|python3|retina-train)
        exec "$@" ;;
    retina-edge)
        shift
        ENTRY=retina-edge ;;
esac

if [ "$ENTRY" = retina-edge ] && needs_checks "${1:-}"; then
    check_host_libraries
    check_state_folder
fi
exec "$ENTRY" "$@"
