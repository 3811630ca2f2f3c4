#!/bin/bash
# The images' HEALTHCHECK. Honest for an unattended watched folder: while `retina-edge run --watch` runs, its
# scan loop touches $RETINA_EDGE_HOME/heartbeat at most every 10 s (after each scan of a folder that is there,
# and as each file is taken); the file is removed when the watch ends and by the entrypoint at start.
#   heartbeat present, younger than the limit  -> healthy: files that arrive are being screened
#   heartbeat present, older                   -> unhealthy: the loop is stuck (the pipeline takes no frames)
#                                                 or the watched folder is gone (an unmounted share)
#   no heartbeat (not watching, or still building the engine) -> healthy if the program imports
#
# Environment: RETINA_EDGE_HOME, RETINA_EDGE_HEARTBEAT_MAX_AGE_S (default 60),
# RETINA_EDGE_PYTHON (default python3), RETINA_EDGE_ENTRY (retina-train: check training's import instead).
set -uo pipefail

STATE=${RETINA_EDGE_HOME:-/var/lib/retina-edge}
MAX_AGE_S=${RETINA_EDGE_HEARTBEAT_MAX_AGE_S:-60}
PYTHON=${RETINA_EDGE_PYTHON:-python3}
HEARTBEAT=$STATE/heartbeat

if [ -e "$HEARTBEAT" ]; then
    if ! beat_s=$(stat -c %Y "$HEARTBEAT" 2>/dev/null); then
        echo "unhealthy: $HEARTBEAT cannot be read"
        exit 1
    fi
    age_s=$(( $(date +%s) - beat_s ))
    if [ "$age_s" -gt "$MAX_AGE_S" ]; then
        echo "unhealthy: the watched-folder loop last went round ${age_s} s ago (limit ${MAX_AGE_S} s):" \
             "it is stuck, or the watched folder is gone; see docker logs"
        exit 1
    fi
    echo "healthy: the watched-folder loop went round ${age_s} s ago"
    exit 0
fi

case "${RETINA_EDGE_ENTRY:-retina-edge}" in
    retina-train) module=training.cli ;;
    *) module=edge.cli ;;
esac
if ! out=$("$PYTHON" -c "import $module" 2>&1); then
    echo "unhealthy: $module does not import: $(echo "$out" | tail -n 1)"
    exit 1
fi
echo "healthy: $module imports (no watch running)"
exit 0
