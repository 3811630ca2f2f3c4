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
