"""The model bundle: the one thing that crosses from workstation to device.

A bundle is a folder holding ``model.onnx`` and ``bundle.json``. The manifest
says everything the device needs to reproduce evaluation-time preprocessing
and read the outputs. Reading a bundle validates it; a bundle that does not
match its manifest is refused with a message naming the file and the field.

Optional precision variants (``retina-train quantize``) sit beside the fp32
model and are listed under ``"variants"``: ``{"int8": {"file":
"model.int8.onnx", "sha256": ..., "kind": "qdq-int8", "calibration": {...},
"agreement": {...}}, "fp16": {...}}``. Each is validated like the main model;
bundles without variants are complete bundles.

Optional decision fields (``retina-train calibrate``) sit in ``"postprocess"``
beside the fitted ``temperature``: ``"decision": {"rule": "logit_offsets",
"offsets": {class: number}}`` (the label is argmax(logits / T + offset)),
``"referral": {"negative": [class, ...], "threshold": p}`` (refer when
1 - P(negative classes) >= p) and ``"calibration"``, the free-form record of
how they were chosen. Bundles without them label by argmax and give no referral.

The optional ``"explain"`` object (``retina-train explain --bundle``) names the
model the device runs for ``retina-edge run --explain``: ``{"method": "cam",
"file": "model.cam.onnx", "sha256": ..., "feature_output": "features",
"classifier": {"file": "classifier.json", "sha256": ...}, "source_sha256": the
model.sha256 it was made from, "parity": {...}}``. ``model.cam.onnx`` is
model.onnx with the last feature map (before global pooling) as a second
output; ``classifier.json`` holds the final layer's ``weight`` [classes, C] and
``bias`` [classes] (and the ``labels`` its rows are in). An explain object made from another model.onnx is refused.

The ``preprocess`` section's vocabulary (``colour_order`` RGB/BGR/GREY with
``input.shape[1]`` 3/3/1 and as many ``mean``/``std`` values; ``roi.kind``
fundus_disc/retina_band/centre/none with their parameters and defaults in
``ROI_DEFAULTS``; ``resize.interpolation``) lives in ``models/preprocess_spec.py``,
whose docstring gives each rule exactly; this module re-exports its constants.

Standard library and Python 3.6 only: both ``training`` and ``edge`` import it.
"""
import hashlib
import json
import os

# the preprocessing vocabulary (colour orders, ROI kinds and their parameters, interpolations): defined in
# models/preprocess_spec.py, whose docstring documents it, and re-exported here
from models.preprocess_spec import (CHANNELS, COLOUR_ORDERS, INTERPOLATIONS, ROI_DEFAULTS, ROI_KINDS,  # noqa: F401
                                    PreprocessError, channels, check_preprocess, describe, roi_parameters)

SCHEMA = "retina-edge/bundle"
SCHEMA_VERSION = 1
MANIFEST_NAME = "bundle.json"
ONNX_NAME = "model.onnx"

LAYOUTS = ("NCHW",)
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
# each entry of the optional "variants" object; "calibration" and "agreement" are free-form records
_VARIANT_FIELDS = (("file", str), ("sha256", str), ("kind", str))


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
    if m["input"]["layout"] not in LAYOUTS:
        raise bad("input.layout", "must be one of {}".format(LAYOUTS))
    if m["input"]["dtype"] != "float32":
        raise bad("input.dtype", "must be float32")
    pre = m["preprocess"]
    try:
        check_preprocess(pre, input_channels=shape[1])
    except PreprocessError as exc:
        raise bad(exc.field, exc.problem)
    if list(pre["resize"]["size"]) != list(shape[2:]):
        raise bad("preprocess.resize.size", "{} does not match input.shape H, W {}".format(
            pre["resize"]["size"], shape[2:]))
    outputs = m["outputs"]
    if not outputs or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise bad("outputs", "must be a non-empty list of {name: ...} objects")
    if m["postprocess"]["temperature"] <= 0:
        raise bad("postprocess.temperature", "must be positive")
    if len(m["model"]["sha256"]) != 64:
        raise bad("model.sha256", "must be 64 hex digits")
    if m.get("modality", DEFAULT_MODALITY) not in MODALITIES:
        raise bad("modality", "is {!r}; must be one of {}".format(m.get("modality"), MODALITIES))
    _check_variants(m, bad)
    _check_decision(m, bad)
    _check_explain(m, bad)


def _is_sha256(text):
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())


def _check_variants(m, bad):
    """``variants`` is optional; each entry names a plain file in the bundle folder and its sha256."""
    if "variants" not in m:
        return
    variants = m["variants"]
    if not isinstance(variants, dict):
        raise bad("variants", "must be an object of precision -> {file, sha256, kind}")
    files = set([m["model"]["file"]])
    for precision, entry in sorted(variants.items()):
        field = "variants." + precision
        if precision == "fp32" or not precision:
            raise bad(field, "is not a variant name (fp32 is model.file)")
        if not isinstance(entry, dict):
            raise bad(field, "must be an object with file, sha256 and kind")
        for key, types in _VARIANT_FIELDS:
            if key not in entry:
                raise bad(field + "." + key, "is missing")
            if not isinstance(entry[key], types):
                raise bad(field + "." + key, "has type {}".format(type(entry[key]).__name__))
        _check_file_and_sha256(entry, field, files, bad, "another model")


EXPLAIN_METHODS = ("cam",)


def _check_file_entry(entry, field, files, bad):
    """An object {file, sha256} naming a plain file in the bundle folder that no other entry uses."""
    if not isinstance(entry, dict):
        raise bad(field, "must be an object with file and sha256")
    for key in ("file", "sha256"):
        if not isinstance(entry.get(key), str):
            raise bad(field + "." + key, "is missing" if key not in entry else "has type {}".format(
                type(entry[key]).__name__))
    _check_file_and_sha256(entry, field, files, bad, "another file of the bundle")


def _check_file_and_sha256(entry, field, files, bad, other):
    """``entry["file"]`` a plain file name in the bundle folder not in ``files`` (then added), and a sha256."""
    name = entry["file"]
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise bad(field + ".file", "must be a file name inside the bundle folder, not {!r}".format(name))
    if name in files:
        raise bad(field + ".file", "{!r} is already used by {}".format(name, other))
    files.add(name)
    if not _is_sha256(entry["sha256"]):
        raise bad(field + ".sha256", "must be 64 hex digits")


def _check_explain(m, bad):
    """The optional ``explain`` object: the feature-map model and the classifier weights (see the docstring)."""
    if "explain" not in m:
        return
    explain = m["explain"]
    if not isinstance(explain, dict):
        raise bad("explain", "must be an object {method, file, sha256, feature_output, classifier, source_sha256}")
    if explain.get("method") not in EXPLAIN_METHODS:
        raise bad("explain.method", "is {!r}; must be one of {}".format(explain.get("method"), EXPLAIN_METHODS))
    files = set([m["model"]["file"]] + [v["file"] for v in m.get("variants", {}).values()])
    _check_file_entry(explain, "explain", files, bad)
    _check_file_entry(explain.get("classifier"), "explain.classifier", files, bad)
    feature = explain.get("feature_output")
    if not isinstance(feature, str) or not feature or feature in [o["name"] for o in m["outputs"]]:
        raise bad("explain.feature_output", "must name the feature-map output, not {!r}".format(feature))
    if explain.get("source_sha256") != m["model"]["sha256"]:
        raise bad("explain.source_sha256", "is not model.sha256: the feature-map model was made from another "
                                           "model.onnx; remake it with `retina-train explain --bundle`")


DECISION_RULES = ("logit_offsets",)


def _is_finite(v):
    return _is_number(v) and v == v and abs(v) != float("inf")


def _check_decision(m, bad):
    """The optional ``postprocess.decision``, ``postprocess.referral`` and ``postprocess.calibration``."""
    post, labels = m["postprocess"], m["labels"]
    if "decision" in post:
        decision = post["decision"]
        if not isinstance(decision, dict):
            raise bad("postprocess.decision", "must be an object {rule, offsets}")
        if decision.get("rule") not in DECISION_RULES:
            raise bad("postprocess.decision.rule", "is {!r}; must be one of {}".format(decision.get("rule"),
                                                                                   DECISION_RULES))
        offsets = decision.get("offsets")
        if not isinstance(offsets, dict):
            raise bad("postprocess.decision.offsets", "must be an object of class name -> number")
        for name, value in sorted(offsets.items()):
            if name not in labels:
                raise bad("postprocess.decision.offsets", "names {!r}, not one of the labels {}".format(name, labels))
            if not _is_finite(value):
                raise bad("postprocess.decision.offsets." + name, "must be a finite number, not {!r}".format(value))
    if "referral" in post:
        referral = post["referral"]
        if not isinstance(referral, dict):
            raise bad("postprocess.referral", "must be an object {negative, threshold}")
        negative = referral.get("negative")
        if not isinstance(negative, list) or not negative:
            raise bad("postprocess.referral.negative", "must be a non-empty list of the classes not referred")
        for name in negative:
            if name not in labels:
                raise bad("postprocess.referral.negative", "names {!r}, not one of the labels {}".format(name, labels))
        if len(set(negative)) >= len(labels):
            raise bad("postprocess.referral.negative", "lists every label: nothing could be referred")
        threshold = referral.get("threshold")
        if not _is_finite(threshold) or not 0.0 <= threshold <= 1.0:
            raise bad("postprocess.referral.threshold", "must be a probability in [0, 1], not {!r}".format(threshold))
    if "calibration" in post and not isinstance(post["calibration"], dict):
        raise bad("postprocess.calibration", "must be an object (the record of how the fields were chosen)")


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
    def variants(self):
        """precision -> the manifest's variant entry (file, sha256, kind, calibration, agreement)."""
        return dict(self.manifest.get("variants", {}))

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
    def explain(self):
        """The manifest's ``explain`` entry (feature-map model, classifier weights), or None."""
        explain = self.manifest.get("explain")
        return dict(explain) if explain else None

    def explain_path(self, key=None):
        """The feature-map model (``key`` None) or the classifier weights (``key`` "classifier")."""
        explain = self.manifest["explain"]
        return os.path.join(self.root, (explain[key] if key else explain)["file"])

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

    @property
    def decision_offsets(self):
        """class -> additive offset on the calibrated logits, or None (label = argmax)."""
        decision = self.manifest["postprocess"].get("decision")
        return dict(decision["offsets"]) if decision else None

    @property
    def referral(self):
        """The referral operating point {negative, threshold, ...}, or None (no refer value)."""
        referral = self.manifest["postprocess"].get("referral")
        return dict(referral) if referral else None

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
    models = [("model", bundle.onnx_path, manifest["model"])]
    models += [("variants." + p, bundle.model_path(p), v) for p, v in sorted(bundle.variants.items())]
    if bundle.explain:
        models += [("explain", bundle.explain_path(), bundle.explain),
                   ("explain.classifier", bundle.explain_path("classifier"), bundle.explain["classifier"])]
    for field, path, entry in models:
        if not os.path.isfile(path):
            raise BundleError("{}: model file named in {}.file is missing".format(path, field))
        if verify_sha256:
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise BundleError("{}: sha256 mismatch: manifest {}.sha256 is {}, file has {}".format(
                    path, field, entry["sha256"], actual))
    return bundle


def _write_atomically(path, data):
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def _write_manifest(root, manifest):
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    _write_atomically(os.path.join(root, MANIFEST_NAME), text.encode("utf-8"))


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
    _write_atomically(os.path.join(root, ONNX_NAME), onnx_bytes)
    _write_manifest(root, manifest)
    return load_bundle(root)


def variant_file_name(precision):
    """Where a variant lives in the bundle folder: model.int8.onnx, model.fp16.onnx."""
    return "model.{}.onnx".format(precision)


def write_variants(root, variants):
    """Add or replace precision variants of the bundle in ``root``; model.onnx is left untouched.

    ``variants`` maps precision -> (onnx bytes, entry); the entry's ``file`` and
    ``sha256`` are filled in. The bundle is verified first, the variant files
    are written before the manifest that names them, and the manifest last.
    """
    bundle = load_bundle(root)
    manifest = json.loads(json.dumps(bundle.manifest))
    listed = manifest.setdefault("variants", {})
    for precision, (data, entry) in sorted(variants.items()):
        entry = json.loads(json.dumps(entry))
        entry["file"] = variant_file_name(precision)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        listed[precision] = entry
    validate_manifest(manifest, where=os.path.join(root, MANIFEST_NAME))
    for precision, (data, _) in sorted(variants.items()):
        _write_atomically(os.path.join(root, listed[precision]["file"]), data)
    _write_manifest(root, manifest)
    return load_bundle(root)


def write_postprocess(root, postprocess):
    """Replace the bundle's ``postprocess`` section (temperature, decision, referral, calibration record).

    The models are verified first and left untouched; the new manifest is
    validated before it is written, atomically.
    """
    bundle = load_bundle(root)
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["postprocess"] = json.loads(json.dumps(postprocess))
    validate_manifest(manifest, where=os.path.join(root, MANIFEST_NAME))
    _write_manifest(root, manifest)
    return load_bundle(root)


def write_explain(root, model_bytes, classifier_bytes, entry, model_name="model.cam.onnx",
                  classifier_name="classifier.json"):
    """Add or replace the bundle's ``explain`` files and entry; the other models are left untouched.

    ``entry`` gets ``file``/``sha256``, ``classifier.file``/``classifier.sha256``
    and ``source_sha256`` filled in; the files are written before the manifest
    that names them, and the manifest last.
    """
    bundle = load_bundle(root)
    manifest = json.loads(json.dumps(bundle.manifest))
    entry = json.loads(json.dumps(entry))
    entry.update(file=model_name, sha256=hashlib.sha256(model_bytes).hexdigest(),
                 source_sha256=manifest["model"]["sha256"])
    entry["classifier"] = dict(entry.get("classifier", {}), file=classifier_name,
                               sha256=hashlib.sha256(classifier_bytes).hexdigest())
    manifest["explain"] = entry
    validate_manifest(manifest, where=os.path.join(root, MANIFEST_NAME))
    _write_atomically(os.path.join(root, model_name), model_bytes)
    _write_atomically(os.path.join(root, classifier_name), classifier_bytes)
    _write_manifest(root, manifest)
    return load_bundle(root)


def default_bundle_dir():
    """The bundle that ships inside the ``models`` package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "default")
