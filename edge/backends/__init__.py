"""Inference backends, chosen by name through a registry.

A backend is built from a bundle and options (``precision``, ``threads``,
``cache_dir``, ``batch``, ``workspace_mb``, ``log``; for TensorRT also ``calibration``
and ``force_int8``: a backend ignores the options that are not its own) and offers:

    make_preprocessor()  the preprocessor that feeds it: the NumPy/OpenCV
                         reference (host arrays) for ONNX Runtime, the CUDA
                         kernel writing into its own input buffer for TensorRT
    infer(x)             x is what that preprocessor's ``collate`` returned:
                         a host NCHW array, or the device batch it owns;
                         returns the logits as a host float32 array (N, classes)
    last_times_ms()      device stage times of the last ``infer`` from CUDA
                         events ({} on the CPU: the pipeline's clocks suffice)
    describe(), close(); attributes ``name``, ``precision`` (what runs),
                         ``max_batch``

A backend module may define ``available() -> (bool, reason)``; ``auto`` asks
TensorRT first and falls back to ONNX Runtime, saying which and why.
"""
import importlib

# name -> (module, class); imported only when chosen, so a missing runtime fails only its own backend
BACKENDS = {
    "onnxruntime": ("edge.backends.ort", "OrtBackend"),
    "tensorrt": ("edge.backends.tensorrt", "TensorRTBackend"),
}
# what `auto` tries, in order
AUTO_ORDER = ("tensorrt", "onnxruntime")
CHOICES = ("auto", "tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8", "best")

# what a user should install when a backend's package is missing
INSTALL_HINTS = {
    "tensorrt": "TensorRT comes with JetPack on a Jetson (python3-libnvinfer); on a desktop `pip install tensorrt`",
    "onnxruntime": "`pip install onnxruntime` (on JetPack 4.6 the onnxruntime_gpu wheel from the Jetson Zoo)",
}


class BackendError(RuntimeError):
    """A backend that cannot be built here; the message says which and why, in one line."""


def _module(name):
    if name not in BACKENDS:
        known = ", ".join(c for c in CHOICES if c == "auto" or c in BACKENDS)
        later = [c for c in CHOICES if c != "auto" and c not in BACKENDS]
        raise BackendError("unknown backend {!r}; available: {}{}".format(
            name, known, "" if not later else " ({} is not in this build)".format(", ".join(later))))
    module_name, _ = BACKENDS[name]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        hint = INSTALL_HINTS.get(name, "")
        raise BackendError("backend {!r} is not installed here ({}){}".format(
            name, exc, "; " + hint if hint else ""))


def availability(name):
    """(usable, reason) for backend ``name``, without building it."""
    if name not in BACKENDS:
        return False, "not in this build"
    try:
        module = _module(name)
    except BackendError as exc:
        return False, str(exc)
    probe = getattr(module, "available", None)
    return probe() if probe else (True, "{} imports".format(name))


def choose_backend(requested):
    """(name, reason): ``auto`` becomes the first usable of AUTO_ORDER; others are taken as asked."""
    if requested != "auto":
        if requested not in CHOICES:
            raise BackendError("unknown backend {!r}; choose one of {}".format(requested, ", ".join(CHOICES)))
        return requested, "asked for"
    reasons = []
    for name in AUTO_ORDER:
        ok, reason = availability(name)
        if ok:
            return name, "; ".join(["auto chose {}: {}".format(name, reason)] + reasons)
        reasons.append("{} not usable: {}".format(name, reason))
    raise BackendError("no backend can run here: " + "; ".join(reasons))


def create_backend(name, bundle, **options):
    """Build backend ``name`` (not ``auto``: see choose_backend) for ``bundle``."""
    module = _module(name)
    probe = getattr(module, "available", None)
    if probe is not None:
        ok, reason = probe()
        if not ok:
            raise BackendError("backend {!r} cannot run here: {}".format(name, reason))
    precision = options.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise BackendError("unknown precision {!r}; choose one of {}".format(precision, ", ".join(PRECISIONS)))
    return getattr(module, BACKENDS[name][1])(bundle, **options)
