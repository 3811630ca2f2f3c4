# shellcheck shell=bash
# Sourced by deploy/run, deploy/setup-jetson and docker/build.sh: the one place in the shell scripts that reads
# a Jetson's L4T release and names the container image for it. (edge/device_info.py reads the same file in Python.)
#
# /etc/nv_tegra_release, first line, as L4T writes it (JetPack 4.6.1 and JetPack 6.1):
#   # R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022
#   # R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024
# RETINA_EDGE_NV_TEGRA_RELEASE points elsewhere for tests and dry runs.

# The L4T releases we build images for; a host runs the image of its own series (rMAJOR.MINOR).
RETINA_EDGE_L4T_IMAGES="r32.7.1 r36.4.0"

# l4t_release [FILE] -> "r32.7.1" on stdout; prints nothing and returns 1 when FILE is missing or not L4T's.
l4t_release() {
    local file=${1:-${RETINA_EDGE_NV_TEGRA_RELEASE:-/etc/nv_tegra_release}}
    local release
    [ -r "$file" ] || return 1
    release=$(sed -n 's/^# R\([0-9][0-9]*\) (release), REVISION: \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/r\1.\2.\3/p' \
        "$file" | head -n 1)
    [ -n "$release" ] || return 1
    echo "$release"
}

# l4t_series r32.7.1 -> r32.7
l4t_series() {
    echo "$1" | cut -d. -f1,2
}

# l4t_image_release HOST_RELEASE -> the release of our image for that host's series (r32.7.3 -> r32.7.1);
# returns 1 when we build none for it.
l4t_image_release() {
    local series release
    series=$(l4t_series "$1")
    for release in $RETINA_EDGE_L4T_IMAGES; do
        if [ "$(l4t_series "$release")" = "$series" ]; then
            echo "$release"
            return 0
        fi
    done
    return 1
}

# project_version [REPO_ROOT] -> "0.1.0", from setup.py's version="..."
project_version() {
    local root=${1:-.}
    sed -n 's/^ *version="\([^"]*\)".*/\1/p' "$root/setup.py" | head -n 1
}

# image_name VERSION RELEASE -> retina-edge:0.1.0-l4t-r32.7.1
image_name() {
    echo "retina-edge:$1-l4t-$2"
}

# --- added for deploy/run and deploy/setup-jetson ---

# l4t_jetpack RELEASE -> the JetPack release that ships it, as NVIDIA names it: "JetPack 4.6.1" for r32.7.1,
# "JetPack 6.1" for r36.4.0; other releases by series ("JetPack 5.x" for r35.*), which is all a message needs.
# (JetPack 4.6.1 = L4T 32.7.1 and JetPack 6.1 = L4T 36.4.0: NVIDIA's JetPack release notes.)
l4t_jetpack() {
    case "$1" in
        r32.7.1) echo "JetPack 4.6.1" ;;
        r36.4.0) echo "JetPack 6.1" ;;
        r32.*) echo "JetPack 4.x" ;;
        r35.*) echo "JetPack 5.x" ;;
        r36.*) echo "JetPack 6.x" ;;
        *) echo "an unknown JetPack" ;;
    esac
}

# l4t_board RELEASE -> the boards our image for that release is for (for messages).
l4t_board() {
    case "$1" in
        r32.*) echo "Jetson Nano" ;;
        r36.*) echo "Jetson Orin" ;;
        *) echo "Jetson" ;;
    esac
}

# l4t_build_target RELEASE -> the docker/build.sh argument that builds the image for it (nano|orin).
l4t_build_target() {
    case "$1" in
        r32.*) echo "nano" ;;
        r36.*) echo "orin" ;;
        *) return 1 ;;
    esac
}

# image_release IMAGE -> "r32.7.1" from a tag ending in -l4t-r32.7.1 (a registry prefix is fine);
# returns 1 when the tag does not say.
image_release() {
    local release
    release=$(echo "$1" | sed -n 's/.*-l4t-\(r[0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\)$/\1/p')
    [ -n "$release" ] || return 1
    echo "$release"
}

# l4t_images_line -> "JetPack 4.6.1 (L4T r32.7.1, Jetson Nano) and JetPack 6.1 (L4T r36.4.0, Jetson Orin)"
l4t_images_line() {
    local release line=""
    for release in $RETINA_EDGE_L4T_IMAGES; do
        [ -z "$line" ] || line="$line and "
        line="$line$(l4t_jetpack "$release") (L4T $release, $(l4t_board "$release"))"
    done
    echo "$line"
}
