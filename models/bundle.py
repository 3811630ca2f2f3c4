"""The model bundle: the one thing that crosses from workstation to device.

A bundle is a folder holding ``model.onnx`` and ``bundle.json``. The manifest
says everything the device needs to reproduce evaluation-time preprocessing
and read the outputs. Reading a bundle validates it; a bundle that does not
match its manifest is refused with a message naming the file and the field.

Standard library and Python 3.6 only: both ``training`` and ``edge`` import it.
"""
import hashlib
import json
import os

SCHEMA = "retina-edge/bundle"
SCHEMA_VERSION = 1
MANIFEST_NAME = "bundle.json"
ONNX_NAME = "model.onnx"

COLOUR_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW",)
ROI_KINDS = ("fundus_disc", "none")
INTERPOLATIONS = ("area", "linear", "cubic", "nearest")
# what the model was trained on (optional field "modality"; bundles without it are fundus models)
MODALITIES = ("fundus", "oct")
DEFAULT_MODALITY = "fundus"

# (dotted field, type or tuple of types); a field is required unless listed in OPTIONAL
_FIELDS = (
    ("schema", str),
    ("schema_version", int),
    ("name", str),
    ("labels", list),
    ("model", dict),
    ("model.file", str),
    ("model.sha256", str),
    ("model.opset", int),
    ("model.architecture", str),
    ("input", dict),
    ("input.name", str),
    ("input.shape", list),
    ("input.dtype", str),
    ("input.layout", str),
    ("outputs", list),
    ("preprocess", dict),
    ("preprocess.colour_order", str),
    ("preprocess.roi", dict),
    ("preprocess.roi.kind", str),
    ("preprocess.resize", dict),
    ("preprocess.resize.size", list),
    ("preprocess.resize.interpolation", str),
    ("preprocess.scale", (int, float)),
    ("preprocess.mean", list),
    ("preprocess.std", list),
    ("postprocess", dict),
    ("postprocess.activation", str),
    ("postprocess.temperature", (int, float)),
    ("provenance", dict),
    ("provenance.commands", list),
    ("provenance.data", dict),
    ("provenance.commit", str),
    ("metrics", dict),
)


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the problem."""


def sha256_file(path, chunk_bytes=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def _lookup(manifest, dotted):
    node = manifest
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate_manifest(manifest, where="bundle.json"):
    """Raise BundleError naming the first problem found; return the manifest."""
    if not isinstance(manifest, dict):
        raise BundleError("{}: manifest must be a JSON object".format(where))
    if manifest.get("schema") != SCHEMA:
        raise BundleError("{}: field 'schema' is {!r}, expected {!r}".format(
            where, manifest.get("schema"), SCHEMA))
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError("{}: unknown schema_version {!r}; this reader knows version {}".format(
            where, version, SCHEMA_VERSION))
    for dotted, types in _FIELDS:
        found, value = _lookup(manifest, dotted)
        if not found:
            raise BundleError("{}: missing field '{}'".format(where, dotted))
        if isinstance(value, bool) or not isinstance(value, types):
            raise BundleError("{}: field '{}' has type {}".format(where, dotted, type(value).__name__))
    _check_values(manifest, where)
    return manifest


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_values(m, where):
    def bad(field, problem):
        return BundleError("{}: field '{}' {}".format(where, field, problem))

    labels = m["labels"]
    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise bad("labels", "must be a non-empty list of class names")
    if len(set(labels)) != len(labels):
        raise bad("labels", "has duplicate names")
    shape = m["input"]["shape"]
    if len(shape) != 4 or not all(_is_number(d) and isinstance(d, int) and d > 0 for d in shape):
        raise bad("input.shape", "must be four positive integers [N, C, H, W]")
    if shape[1] != 3:
        raise bad("input.shape", "must have 3 channels, has {}".format(shape[1]))
    if m["input"]["layout"] not in LAYOUTS:
        raise bad("input.layout", "must be one of {}".format(LAYOUTS))
    if m["input"]["dtype"] != "float32":
        raise bad("input.dtype", "must be float32")
    pre = m["preprocess"]
    if pre["colour_order"] not in COLOUR_ORDERS:
        raise bad("preprocess.colour_order", "must be one of {}".format(COLOUR_ORDERS))
    if pre["roi"]["kind"] not in ROI_KINDS:
        raise bad("preprocess.roi.kind", "must be one of {}".format(ROI_KINDS))
    if pre["resize"]["interpolation"] not in INTERPOLATIONS:
        raise bad("preprocess.resize.interpolation", "must be one of {}".format(INTERPOLATIONS))
    if list(pre["resize"]["size"]) != list(shape[2:]):
        raise bad("preprocess.resize.size", "{} does not match input.shape H, W {}".format(
            pre["resize"]["size"], shape[2:]))
    for key in ("mean", "std"):
        values = pre[key]
        if len(values) != 3 or not all(_is_number(v) for v in values):
            raise bad("preprocess." + key, "must be three numbers")
    if any(v <= 0 for v in pre["std"]):
        raise bad("preprocess.std", "must be positive")
    outputs = m["outputs"]
    if not outputs or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise bad("outputs", "must be a non-empty list of {name: ...} objects")
    if m["postprocess"]["temperature"] <= 0:
        raise bad("postprocess.temperature", "must be positive")
    if len(m["model"]["sha256"]) != 64:
        raise bad("model.sha256", "must be 64 hex digits")
    if m.get("modality", DEFAULT_MODALITY) not in MODALITIES:
        raise bad("modality", "is {!r}; must be one of {}".format(m.get("modality"), MODALITIES))


class Bundle(object):
    """A validated bundle on disk. ``manifest`` is the parsed bundle.json."""

    def __init__(self, root, manifest):
        self.root = root
        self.manifest = manifest

    @property
    def labels(self):
        return list(self.manifest["labels"])

    @property
    def onnx_path(self):
        return os.path.join(self.root, self.manifest["model"]["file"])

    @property
    def precisions(self):
        """Precisions this bundle carries a model for: fp32 always, plus its variants (e.g. int8, fp16)."""
        return ["fp32"] + sorted(self.manifest.get("variants", {}))

    def model_path(self, precision="fp32"):
        """The ONNX file for ``precision``: model.onnx for fp32, else the variant's file."""
        if precision == "fp32":
            return self.onnx_path
        variant = self.manifest.get("variants", {}).get(precision)
        if not variant:
            raise BundleError("{}: this bundle has no {} variant (it has {}); make one with "
                              "`retina-train quantize`".format(self.root, precision, ", ".join(self.precisions)))
        return os.path.join(self.root, variant["file"])

    @property
    def modality(self):
        """The kind of image the model screens (fundus, oct); fundus for bundles that do not say."""
        return self.manifest.get("modality", DEFAULT_MODALITY)

    @property
    def input_name(self):
        return self.manifest["input"]["name"]

    @property
    def input_shape(self):
        return tuple(self.manifest["input"]["shape"])

    @property
    def output_names(self):
        return [o["name"] for o in self.manifest["outputs"]]

    @property
    def preprocess(self):
        return self.manifest["preprocess"]

    @property
    def temperature(self):
        return float(self.manifest["postprocess"]["temperature"])

    def __repr__(self):
        return "Bundle({!r}, name={!r}, labels={})".format(self.root, self.manifest["name"], self.labels)


def load_bundle(root, verify_sha256=True):
    """Read and validate the bundle in folder ``root``."""
    manifest_path = os.path.join(root, MANIFEST_NAME)
    if not os.path.isdir(root):
        raise BundleError("{}: not a bundle folder (no such directory)".format(root))
    if not os.path.isfile(manifest_path):
        raise BundleError("{}: no {} in bundle folder".format(root, MANIFEST_NAME))
    try:
        with open(manifest_path, "r") as f:
            manifest = json.load(f)
    except ValueError as exc:
        raise BundleError("{}: not valid JSON ({})".format(manifest_path, exc))
    validate_manifest(manifest, where=manifest_path)
    bundle = Bundle(root, manifest)
    if not os.path.isfile(bundle.onnx_path):
        raise BundleError("{}: model file named in model.file is missing".format(bundle.onnx_path))
    if verify_sha256:
        actual = sha256_file(bundle.onnx_path)
        expected = manifest["model"]["sha256"]
        if actual != expected:
            raise BundleError("{}: sha256 mismatch: manifest model.sha256 is {}, file has {}".format(
                bundle.onnx_path, expected, actual))
    return bundle


def write_bundle(root, onnx_bytes, manifest):
    """Write ``model.onnx`` and ``bundle.json`` into ``root``; fills in model.file and model.sha256.

    The manifest is validated before anything is written, and the manifest is
    written last, so a half-written bundle is never readable as a whole one.
    """
    manifest = json.loads(json.dumps(manifest))  # deep copy, and proves it is JSON-able
    manifest.setdefault("schema", SCHEMA)
    manifest.setdefault("schema_version", SCHEMA_VERSION)
    manifest.setdefault("model", {})
    manifest["model"]["file"] = ONNX_NAME
    manifest["model"]["sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
    validate_manifest(manifest, where=os.path.join(root, MANIFEST_NAME))
    if not os.path.isdir(root):
        os.makedirs(root)
    onnx_path = os.path.join(root, ONNX_NAME)
    with open(onnx_path + ".tmp", "wb") as f:
        f.write(onnx_bytes)
    os.replace(onnx_path + ".tmp", onnx_path)
    manifest_path = os.path.join(root, MANIFEST_NAME)
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(manifest_path + ".tmp", manifest_path)
    return load_bundle(root)


def default_bundle_dir():
    """The bundle that ships inside the ``models`` package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "default")
