"""Which bundles a station loads: the ``--model`` values of `retina-edge run`. Standard library at import.

Each ``--model`` is one of:

- ``NAME=DIR``: the bundle in DIR, named NAME in outputs and the ledger;
- ``DIR`` (or its bundle.json / model.onnx): the bundle in DIR, named by its manifest;
- a folder of bundle folders (no bundle.json of its own): every bundle in it, each named by its manifest.

No ``--model``: the shipped bundle. Two bundles of one name, or of one modality, are refused by the router
(``edge.lanes``): which bundle screens a frame must never be a guess.
"""
import os
import re

from edge.commands.common import bundle_dir

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
MANIFEST = "bundle.json"


class ModelSpecError(ValueError):
    """A --model value that names no bundle; the message says which and why."""


def model_specs(values):
    """[(name or None, bundle folder)] for the --model values (None or [] -> the shipped bundle)."""
    if not values:
        return [(None, bundle_dir(None))]
    specs = []
    for value in values:
        name, path = _split(value)
        folder = bundle_dir(path)
        if name is None and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, MANIFEST)):
            inner = sorted(os.path.join(folder, d) for d in os.listdir(folder)
                           if os.path.isfile(os.path.join(folder, d, MANIFEST)))
            if inner:
                specs.extend((None, d) for d in inner)
                continue
        specs.append((name, folder))
    return specs


def _split(value):
    """'oct=bundles/oct' -> ('oct', 'bundles/oct'); a path that exists as given wins over a split."""
    if "=" in value and not os.path.exists(value):
        name, path = value.split("=", 1)
        if not _NAME.match(name):
            raise ModelSpecError("--model {}: a name before '=' may hold letters, digits, '_', '-' and '.' "
                                 "only".format(value))
        if not path:
            raise ModelSpecError("--model {}: no bundle folder after '='".format(value))
        return name, path
    return None, value


def load_models(values, load_bundle):
    """[(name, Bundle)] for the --model values; ``load_bundle`` raises BundleError naming a bad bundle."""
    return [(name or bundle.manifest["name"], bundle)
            for name, bundle in ((n, load_bundle(d)) for n, d in model_specs(values))]
