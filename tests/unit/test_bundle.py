"""models/bundle.py: writing, reading and refusing model bundles (Python 3.6, no torch).

The bundle code only hashes model.onnx, so most tests use arbitrary bytes as the model.
"""
import hashlib
import json
import os

import pytest

from models.bundle import (MANIFEST_NAME, ONNX_NAME, SCHEMA, SCHEMA_VERSION, BundleError, load_bundle,
                           sha256_file, validate_manifest, variant_file_name, write_bundle, write_variants)

MODEL_BYTES = b"not really ONNX, but the bundle only hashes it\x00\x01\x02"


def _write(tmp_path, manifest, data=MODEL_BYTES):
    return write_bundle(str(tmp_path / "b"), data, manifest)


def _rewrite_manifest(bundle, edit):
    """Edit the bundle.json on disk with ``edit(manifest)``; returns the manifest path."""
    path = os.path.join(bundle.root, MANIFEST_NAME)
    with open(path) as f:
        manifest = json.load(f)
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)
    return path


def _delete(manifest, dotted):
    parts = dotted.split(".")
    node = manifest
    for part in parts[:-1]:
        node = node[part]
    del node[parts[-1]]


def _set(manifest, dotted, value):
    parts = dotted.split(".")
    node = manifest
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def test_round_trip_keeps_manifest_and_model(tmp_path, valid_manifest):
    written = _write(tmp_path, valid_manifest)
    loaded = load_bundle(written.root)

    assert loaded.manifest == written.manifest
    assert loaded.manifest["schema"] == SCHEMA
    assert loaded.manifest["schema_version"] == SCHEMA_VERSION
    assert loaded.manifest["model"]["file"] == ONNX_NAME
    assert loaded.manifest["model"]["sha256"] == hashlib.sha256(MODEL_BYTES).hexdigest()
    assert loaded.manifest["preprocess"] == valid_manifest["preprocess"]
    assert loaded.manifest["provenance"] == valid_manifest["provenance"]
    with open(loaded.onnx_path, "rb") as f:
        assert f.read() == MODEL_BYTES
    assert sha256_file(loaded.onnx_path) == hashlib.sha256(MODEL_BYTES).hexdigest()
    assert loaded.labels == ["cataract", "diabetic_retinopathy", "glaucoma", "normal"]
    assert loaded.input_name == "input"
    assert loaded.input_shape == (1, 3, 32, 32)
    assert loaded.output_names == ["logits"]
    assert loaded.temperature == 1.0
    # nothing but the two bundle files is left behind (no .tmp files)
    assert sorted(os.listdir(loaded.root)) == sorted([MANIFEST_NAME, ONNX_NAME])


def test_write_does_not_change_the_callers_manifest(tmp_path, valid_manifest, make_manifest):
    _write(tmp_path, valid_manifest)
    assert valid_manifest == make_manifest()
    assert "sha256" not in valid_manifest["model"]


def test_rewriting_a_bundle_replaces_model_and_hash(tmp_path, valid_manifest):
    _write(tmp_path, valid_manifest, b"first model")
    second = _write(tmp_path, valid_manifest, b"second model")
    assert load_bundle(second.root).manifest["model"]["sha256"] == hashlib.sha256(b"second model").hexdigest()


def test_tampered_model_is_refused_naming_file_and_sha256(tmp_path, valid_manifest):
    bundle = _write(tmp_path, valid_manifest)
    with open(bundle.onnx_path, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.root)
    message = str(info.value)
    assert "sha256" in message
    assert ONNX_NAME in message
    assert bundle.onnx_path in message
    # the check can be skipped explicitly, and then the same bundle loads
    assert load_bundle(bundle.root, verify_sha256=False).labels == bundle.labels


def test_missing_model_file_is_refused(tmp_path, valid_manifest):
    bundle = _write(tmp_path, valid_manifest)
    os.remove(bundle.onnx_path)
    with pytest.raises(BundleError, match="model.file is missing"):
        load_bundle(bundle.root)


def test_missing_folder_and_missing_manifest_are_refused(tmp_path):
    with pytest.raises(BundleError, match="no such directory"):
        load_bundle(str(tmp_path / "nowhere"))
    os.makedirs(str(tmp_path / "empty"))
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(str(tmp_path / "empty"))


def test_invalid_json_is_refused_naming_the_manifest(tmp_path, valid_manifest):
    bundle = _write(tmp_path, valid_manifest)
    path = os.path.join(bundle.root, MANIFEST_NAME)
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.root)
    assert path in str(info.value)
    assert "not valid JSON" in str(info.value)


@pytest.mark.parametrize("field", [
    "preprocess.mean", "preprocess.std", "preprocess.resize.size", "preprocess.roi.kind", "input.shape",
    "input.name", "labels", "outputs", "postprocess.temperature", "provenance.commit", "model.opset",
    "metrics", "name",
])
def test_missing_field_is_refused_naming_the_dotted_field(tmp_path, valid_manifest, field):
    bundle = _write(tmp_path, valid_manifest)
    path = _rewrite_manifest(bundle, lambda m: _delete(m, field))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.root)
    assert "missing field '{}'".format(field) in str(info.value)
    assert path in str(info.value)


def test_missing_field_is_refused_before_anything_is_written(tmp_path, valid_manifest):
    del valid_manifest["preprocess"]["mean"]
    root = tmp_path / "never"
    with pytest.raises(BundleError, match=r"missing field 'preprocess\.mean'"):
        write_bundle(str(root), MODEL_BYTES, valid_manifest)
    assert not root.exists()


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unknown_schema_version_is_refused(tmp_path, valid_manifest, version):
    bundle = _write(tmp_path, valid_manifest)
    _rewrite_manifest(bundle, lambda m: m.__setitem__("schema_version", version))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.root)
    assert "schema_version" in str(info.value)


def test_wrong_schema_name_is_refused(valid_manifest):
    valid_manifest["schema"] = "someone-else/bundle"
    with pytest.raises(BundleError, match="'schema'"):
        validate_manifest(valid_manifest)


def test_manifest_must_be_an_object():
    with pytest.raises(BundleError, match="JSON object"):
        validate_manifest(["not", "an", "object"])


@pytest.mark.parametrize("field, value", [
    ("labels", "normal"),
    ("input.shape", "1x3x32x32"),
    ("input.name", 0),
    ("preprocess.scale", "0.0039"),
    ("preprocess.scale", True),
    ("preprocess.mean", 0.5),
    ("model.opset", 13.0),
    ("model.opset", True),
    ("postprocess.temperature", None),
    ("provenance.commands", "python -m training teacher"),
    ("preprocess", []),
])
def test_wrong_type_is_refused_naming_field_and_type(tmp_path, valid_manifest, field, value):
    bundle = _write(tmp_path, valid_manifest)
    _rewrite_manifest(bundle, lambda m: _set(m, field, value))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.root)
    assert "field '{}' has type {}".format(field, type(value).__name__) in str(info.value)


def test_resize_size_must_match_input_shape(tmp_path, valid_manifest, make_manifest):
    valid_manifest["preprocess"]["resize"]["size"] = [64, 64]
    with pytest.raises(BundleError) as info:
        _write(tmp_path, valid_manifest)
    assert "preprocess.resize.size" in str(info.value)
    assert "does not match input.shape" in str(info.value)
    # and the same when the file on disk is edited after writing
    good = _write(tmp_path, make_manifest())
    _rewrite_manifest(good, lambda m: _set(m, "preprocess.resize.size", [32, 31]))
    with pytest.raises(BundleError, match=r"preprocess\.resize\.size"):
        load_bundle(good.root)


@pytest.mark.parametrize("field, value, problem", [
    ("labels", [], "non-empty"),
    ("labels", ["normal", "normal", "glaucoma", "cataract"], "duplicate"),
    ("labels", ["normal", ""], "non-empty"),
    ("input.shape", [1, 3, 32], "four positive integers"),
    ("input.shape", [1, 3, 0, 32], "four positive integers"),
    ("input.shape", [1, 1, 32, 32], "3 channels"),
    ("input.layout", "NHWC", "must be one of"),
    ("input.dtype", "float16", "float32"),
    ("preprocess.colour_order", "RGBA", "must be one of"),
    ("preprocess.roi.kind", "optic_cup", "must be one of"),
    ("preprocess.resize.interpolation", "lanczos", "must be one of"),
    ("preprocess.mean", [0.5, 0.5], "three numbers"),
    ("preprocess.std", [0.2, "x", 0.2], "three numbers"),
    ("preprocess.std", [0.2, 0.0, 0.2], "positive"),
    ("outputs", [], "non-empty list"),
    ("outputs", [{"shape": [1, 4]}], "non-empty list"),
    ("postprocess.temperature", 0, "positive"),
])
def test_bad_values_are_refused_naming_the_field(valid_manifest, field, value, problem):
    _set(valid_manifest, field, value)
    valid_manifest["model"]["file"] = ONNX_NAME
    valid_manifest["model"]["sha256"] = "0" * 64
    with pytest.raises(BundleError) as info:
        validate_manifest(valid_manifest, where="somewhere/bundle.json")
    message = str(info.value)
    assert message.startswith("somewhere/bundle.json: field '{}'".format(field))
    assert problem in message


def test_sha256_must_be_64_hex_digits(tmp_path, valid_manifest):
    bundle = _write(tmp_path, valid_manifest)
    _rewrite_manifest(bundle, lambda m: _set(m, "model.sha256", "abc"))
    with pytest.raises(BundleError, match=r"model\.sha256"):
        load_bundle(bundle.root, verify_sha256=False)


def test_a_valid_manifest_passes_unchanged(valid_manifest, make_manifest):
    valid_manifest["model"]["file"] = ONNX_NAME
    valid_manifest["model"]["sha256"] = "f" * 64
    expected = make_manifest()
    expected["model"].update(file=ONNX_NAME, sha256="f" * 64)
    assert validate_manifest(valid_manifest) == expected


# ---- precision variants (models/bundle.py "variants"; made by `retina-train quantize`)

VARIANT_BYTES = {"int8": b"an int8 Q/DQ model, as far as the bundle cares", "fp16": b"a float16 model"}


def _with_variants(tmp_path, manifest):
    bundle = _write(tmp_path, manifest)
    entries = {p: (data, {"kind": "qdq-int8" if p == "int8" else "fp16", "agreement": {"top1_agreement": 1.0}})
               for p, data in VARIANT_BYTES.items()}
    return write_variants(bundle.root, entries)


def test_variants_are_written_hashed_and_listed(tmp_path, valid_manifest):
    bundle = _with_variants(tmp_path, valid_manifest)
    loaded = load_bundle(bundle.root)
    assert loaded.precisions == ["fp32", "fp16", "int8"]
    for precision, data in VARIANT_BYTES.items():
        entry = loaded.manifest["variants"][precision]
        assert entry["file"] == variant_file_name(precision) == "model.{}.onnx".format(precision)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["agreement"] == {"top1_agreement": 1.0}
        with open(loaded.model_path(precision), "rb") as f:
            assert f.read() == data
    assert loaded.model_path("fp32") == loaded.onnx_path
    with open(loaded.onnx_path, "rb") as f:
        assert f.read() == MODEL_BYTES  # the fp32 model is left as it was
    assert not [n for n in os.listdir(loaded.root) if n.endswith(".tmp")]


def test_a_variant_can_be_replaced_and_the_other_is_kept(tmp_path, valid_manifest):
    bundle = _with_variants(tmp_path, valid_manifest)
    again = write_variants(bundle.root, {"int8": (b"better int8", {"kind": "qdq-int8"})})
    assert again.manifest["variants"]["int8"]["sha256"] == hashlib.sha256(b"better int8").hexdigest()
    assert again.manifest["variants"]["fp16"] == bundle.manifest["variants"]["fp16"]


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_tampered_variant_is_refused_naming_file_and_field(tmp_path, valid_manifest, precision):
    bundle = _with_variants(tmp_path, valid_manifest)
    path = bundle.model_path(precision)
    with open(path, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.root)
    message = str(info.value)
    assert path in message
    assert "variants.{}.sha256".format(precision) in message
    assert load_bundle(bundle.root, verify_sha256=False).precisions == ["fp32", "fp16", "int8"]


def test_missing_variant_file_is_refused(tmp_path, valid_manifest):
    bundle = _with_variants(tmp_path, valid_manifest)
    os.remove(bundle.model_path("int8"))
    with pytest.raises(BundleError, match=r"variants\.int8\.file is missing"):
        load_bundle(bundle.root)


def test_bundle_without_variants_loads_and_offers_fp32_only(tmp_path, valid_manifest):
    bundle = load_bundle(_write(tmp_path, valid_manifest).root)
    assert "variants" not in bundle.manifest
    assert bundle.precisions == ["fp32"] and bundle.variants == {}
    with pytest.raises(BundleError, match="no int8 variant"):
        bundle.model_path("int8")


@pytest.mark.parametrize("edit, field, problem", [
    (lambda v: v.__setitem__("int8", "model.int8.onnx"), "variants.int8", "must be an object"),
    (lambda v: v["int8"].pop("sha256"), "variants.int8.sha256", "is missing"),
    (lambda v: v["int8"].pop("kind"), "variants.int8.kind", "is missing"),
    (lambda v: v["int8"].__setitem__("sha256", "xyz"), "variants.int8.sha256", "64 hex digits"),
    (lambda v: v["int8"].__setitem__("file", "../model.int8.onnx"), "variants.int8.file", "inside the bundle"),
    (lambda v: v["int8"].__setitem__("file", "model.onnx"), "variants.int8.file", "already used"),
    (lambda v: v["fp16"].__setitem__("file", "model.int8.onnx"), "variants.int8.file", "already used"),
    (lambda v: v.__setitem__("fp32", dict(v["int8"], file="other.onnx")), "variants.fp32", "not a variant name"),
])
def test_bad_variant_entries_are_refused_naming_the_field(tmp_path, valid_manifest, edit, field, problem):
    bundle = _with_variants(tmp_path, valid_manifest)
    path = _rewrite_manifest(bundle, lambda m: edit(m["variants"]))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.root)
    message = str(info.value)
    assert message.startswith(path)
    assert "'{}'".format(field) in message
    assert problem in message


def test_variants_are_not_written_into_a_bundle_that_does_not_verify(tmp_path, valid_manifest):
    bundle = _write(tmp_path, valid_manifest)
    with open(bundle.onnx_path, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        write_variants(bundle.root, {"int8": (b"x", {"kind": "qdq-int8"})})
    assert not os.path.exists(os.path.join(bundle.root, "model.int8.onnx"))


# --- the preprocessing vocabulary (models/preprocess_spec.py) -----------------------------------------

def _grey(manifest):
    manifest["input"]["shape"][1] = 1
    manifest["preprocess"].update(colour_order="GREY", mean=[0.2], std=[0.3])
    return manifest


@pytest.mark.parametrize("edit, field, problem", [
    (lambda m: _set(m, "preprocess.roi", {"kind": "retina_band", "threshold": 300}), "preprocess.roi.threshold",
     "number in [0, 255]"),
    (lambda m: _set(m, "preprocess.roi", {"kind": "retina_band", "margin": -0.1}), "preprocess.roi.margin",
     "number in [0, 1]"),
    (lambda m: _set(m, "preprocess.roi", {"kind": "retina_band", "margin": "wide"}), "preprocess.roi.margin",
     "number"),
    (lambda m: _set(m, "preprocess.roi", {"kind": "centre", "fraction": 0}), "preprocess.roi.fraction", "(0, 1]"),
    (lambda m: _set(m, "preprocess.roi", {"kind": "centre", "fraction": 1.5}), "preprocess.roi.fraction", "(0, 1]"),
    (lambda m: _set(m, "preprocess.roi", {"kind": "centre", "threshold": 10}), "preprocess.roi.threshold",
     "not a parameter of roi kind 'centre' (it takes fraction)"),
    (lambda m: _set(m, "preprocess.roi", {"kind": "fundus_disc", "margin": 0.1}), "preprocess.roi.margin",
     "not a parameter"),
    (lambda m: _set(m, "preprocess.roi", {"kind": "none", "pad": "circle"}), "preprocess.roi.pad", "square"),
    (lambda m: _set(m, "preprocess.roi", {"kind": "optic_cup"}), "preprocess.roi.kind", "retina_band"),
    (lambda m: _set(m, "preprocess.colour_order", "GREY"), "input.shape", "1 channel for colour_order GREY, has 3"),
    (lambda m: _set(_grey(m), "input.shape", [1, 3, 32, 32]), "input.shape", "1 channel for colour_order GREY"),
    (lambda m: _set(_grey(m), "preprocess.mean", [0.5, 0.5, 0.5]), "preprocess.mean", "one number for colour_order GREY"),
    (lambda m: _set(_grey(m), "preprocess.std", [0.0]), "preprocess.std", "positive"),
    (lambda m: _set(m, "input.shape", [1, 1, 32, 32]), "input.shape", "3 channels for colour_order RGB"),
])
def test_preprocess_vocabulary_errors_name_the_field(valid_manifest, edit, field, problem):
    edit(valid_manifest)
    valid_manifest["model"].update(file=ONNX_NAME, sha256="0" * 64)
    with pytest.raises(BundleError) as info:
        validate_manifest(valid_manifest, where="w/bundle.json")
    assert str(info.value).startswith("w/bundle.json: field '{}'".format(field)), str(info.value)
    assert problem in str(info.value)


@pytest.mark.parametrize("roi", [
    {"kind": "retina_band"}, {"kind": "retina_band", "threshold": 12.5, "margin": 0, "pad": "square"},
    {"kind": "centre", "fraction": 0.75}, {"kind": "centre"}, {"kind": "none"},
    {"kind": "none", "threshold": 10, "pad": "square"},        # written before the parameters were checked
    {"kind": "fundus_disc"},
])
def test_new_roi_kinds_and_grey_bundles_round_trip(tmp_path, valid_manifest, roi):
    valid_manifest["preprocess"]["roi"] = roi
    _grey(valid_manifest)
    bundle = _write(tmp_path, valid_manifest)
    assert bundle.preprocess["roi"] == roi and bundle.input_shape[1] == 1


def test_roi_parameters_fill_the_documented_defaults():
    from models.bundle import COLOUR_ORDERS, INTERPOLATIONS, ROI_DEFAULTS, ROI_KINDS, roi_parameters
    assert ROI_KINDS == ("fundus_disc", "retina_band", "centre", "none") and set(ROI_DEFAULTS) == set(ROI_KINDS)
    assert COLOUR_ORDERS == ("RGB", "BGR", "GREY") and "area" in INTERPOLATIONS
    assert roi_parameters({"kind": "fundus_disc"}) == {"kind": "fundus_disc", "threshold": 10, "pad": "square"}
    assert roi_parameters({"kind": "retina_band", "margin": 0.25}) == {
        "kind": "retina_band", "threshold": 20, "margin": 0.25, "pad": "square"}
    assert roi_parameters({"kind": "centre"})["fraction"] == 1.0


def test_the_preprocessing_rule_in_words():
    from models.bundle import describe
    spec = {"colour_order": "GREY", "roi": {"kind": "retina_band", "threshold": 25}, "scale": 1.0 / 255.0,
            "resize": {"size": [224, 224], "interpolation": "area"}, "mean": [0.2], "std": [0.3]}
    text = describe(spec)
    assert "retina-band crop" in text and "exceeds 25" in text and "0.1 of the band" in text
    assert "one grey channel" in text and "scale 1/255" in text and "[224, 224] (area)" in text
    spec.update(colour_order="BGR", roi={"kind": "centre", "fraction": 0.8})
    assert "centred square crop (0.8 of the shorter side)" in describe(spec) and "BGR order" in describe(spec)
