"""Inference backends, chosen by name. Each takes a bundle and maps an NCHW float32 batch to outputs.

The TensorRT backend plugs in here (``tensorrt``) when it lands; nothing else
in the pipeline changes.
"""
import importlib

# name -> (module, class); imported only when chosen, so a missing runtime fails only its own backend
BACKENDS = {
    "onnxruntime": ("edge.backends.ort", "OrtBackend"),
}


class BackendError(RuntimeError):
    """A backend that cannot be built here; the message says which and why."""


def create_backend(name, bundle, **options):
    if name not in BACKENDS:
        raise BackendError("unknown backend {!r}; available: {}".format(name, ", ".join(sorted(BACKENDS))))
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError("backend {!r} needs a package that is not installed: {}".format(name, exc))
    return getattr(module, class_name)(bundle, **options)
