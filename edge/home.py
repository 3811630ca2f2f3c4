"""Where retina-edge keeps its state: one folder, ``$RETINA_EDGE_HOME`` or ``~/.retina-edge``.

    ledger.db           the results ledger (SQLite, WAL)
    engines/            TensorRT engines, keyed by everything that makes them non-portable
    timing/             TensorRT timing caches, one per TensorRT version
    calibration/        INT8 calibration caches
    heartbeat           touched by ``retina-edge run --watch`` while its scan loop is alive (a container's
                        healthcheck reads its age: docker/healthcheck.sh); removed when the watch ends

Nothing else in ``edge/`` builds these paths. A ``--cache-dir`` given on the
command line replaces ``engines/``, ``timing/`` and ``calibration/``' parent.
Folders are created when first written, never at import.
"""
import os

ENV = "RETINA_EDGE_HOME"
SAMPLES_ENV = "RETINA_EDGE_SAMPLES"


def home():
    return os.environ.get(ENV) or os.path.join(os.path.expanduser("~"), ".retina-edge")


def ledger_path():
    return os.path.join(home(), "ledger.db")


def cache_root(cache_dir=None):
    """The folder holding engines/, timing/ and calibration/."""
    return cache_dir or home()


def engine_dir(cache_dir=None):
    return os.path.join(cache_root(cache_dir), "engines")


def timing_cache_dir(cache_dir=None):
    return os.path.join(cache_root(cache_dir), "timing")


def calibration_dir(cache_dir=None):
    return os.path.join(cache_root(cache_dir), "calibration")


def heartbeat_path():
    return os.path.join(home(), "heartbeat")


def samples_dir():
    """The sample fundus images `selftest` and `profile` use by default: ``$RETINA_EDGE_SAMPLES`` (the
    containers set it: their package is installed without the repository) or a checkout's samples/fundus."""
    return os.environ.get(SAMPLES_ENV) or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples", "fundus")
