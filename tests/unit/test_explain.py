"""Class activation maps on the device (edge/explain.py) and the bundle's ``explain`` entry.

Real ONNX Runtime sessions on tests/data/tiny4.cam.onnx (tiny4.onnx with its
8 x 16 x 16 feature map as a second output, made by training/export.py) and
real photographs; the TensorRT part runs over tests/unit/trtfakes.
"""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT, TESTS_DIR
from edge.explain import (CAM_KEY, CamBackend, ExplainUnavailable, ExplainingPipeline, cam_on_image,
                          class_activation_map, crop_box, explaining_backend, load_classifier, normalized)
from edge.io.decode import read_image
from edge.io.sources import list_images
from edge.preprocess import HostPreprocessor, prepare, preprocess
from models.bundle import BundleError, load_bundle, validate_manifest, write_explain

SAMPLES = os.path.join(REPO_ROOT, "samples", "fundus")
TINY_CAM = os.path.join(TESTS_DIR, "data", "tiny4.cam.onnx")
TINY_CLASSIFIER = os.path.join(TESTS_DIR, "data", "tiny4.classifier.json")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def cam_bundle(tiny_bundle):
    """The tiny bundle with its feature-map model and classifier weights, as `retina-train explain --bundle`
    writes them."""
    return write_explain(tiny_bundle.root, _read(TINY_CAM), _read(TINY_CLASSIFIER),
                         {"method": "cam", "feature_output": "features"})


def _sample_batch(spec, count=4):
    return np.concatenate([preprocess(read_image(p), spec) for p in list_images(SAMPLES)[:count]])


# -- the map itself ------------------------------------------------------------------------------------------

def test_cam_equals_the_hand_computation_and_averages_into_the_logit(cam_bundle):
    backend = explaining_backend("onnxruntime", cam_bundle)
    batch = _sample_batch(cam_bundle.preprocess)
    logits = backend.infer(batch)
    features = backend.take_features()
    weight, bias = load_classifier(cam_bundle)
    assert features.shape == (4, 8, 16, 16) and weight.shape == (4, 8)
    for n in range(len(batch)):
        for k in range(4):
            cam = class_activation_map(features[n], weight, k)
            by_hand = np.zeros((16, 16))
            for c in range(8):
                by_hand += float(weight[k, c]) * features[n, c].astype(np.float64)
            assert np.allclose(cam, by_hand, atol=1e-5)
            # the network's logit is the map's mean plus the bias: the weights file is the network's
            assert abs(cam.mean() + bias[k] - logits[n, k]) < 1e-5
    assert backend.take_features() is None  # taken once


def test_the_feature_map_output_leaves_the_logits_unchanged(cam_bundle):
    from edge.backends.ort import OrtBackend
    batch = _sample_batch(cam_bundle.preprocess, count=12)
    plain = OrtBackend(cam_bundle).infer(batch)
    explaining = explaining_backend("onnxruntime", cam_bundle).infer(batch)
    assert np.abs(plain - explaining).max() <= 1e-5


def test_normalized_spans_zero_to_one_and_a_flat_map_is_zero():
    cam = np.array([[1.0, 3.0], [2.0, 5.0]], np.float32)
    assert normalized(cam).min() == 0.0 and normalized(cam).max() == 1.0
    assert not normalized(np.full((3, 3), 7.0, np.float32)).any()


# -- back onto the photograph --------------------------------------------------------------------------------

SPEC = {"colour_order": "RGB", "roi": {"kind": "fundus_disc", "threshold": 10},
        "resize": {"size": [224, 224], "interpolation": "area"}, "scale": 1.0 / 255.0,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _photograph(marker_xy):
    """600 x 900 black frame, a grey 'disc' x 200..800, y 50..560 (wider than tall: padded top and bottom),
    and a white 5 x 5 marker centred on ``marker_xy``."""
    rgb = np.zeros((600, 900, 3), np.uint8)
    rgb[50:560, 200:800] = 110
    x, y = marker_xy
    rgb[y - 2:y + 3, x - 2:x + 3] = 255
    return rgb


@pytest.mark.parametrize("marker_xy", [(650, 150), (260, 520), (500, 300)])
def test_a_peak_at_the_markers_network_pixel_lands_on_the_marker_in_the_photograph(marker_xy):
    rgb = _photograph(marker_xy)
    box = crop_box(rgb, SPEC["roi"])
    assert box == (200, 50, 800, 560)
    net_input = prepare(rgb, SPEC).astype(np.int32).sum(axis=2)  # the real preprocessing: crop, pad, resize
    v, u = np.unravel_index(np.argmax(net_input), net_input.shape)
    cam = np.zeros((224, 224), np.float32)
    cam[v, u] = 1.0
    heat = cam_on_image(cam, rgb.shape, box)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    pixel = 600.0 / 224  # one network pixel on the photograph
    assert abs(x - marker_xy[0]) <= pixel + 1 and abs(y - marker_xy[1]) <= pixel + 1
    # drawn at half size, the peak is at half the place
    half = cam_on_image(cam, rgb.shape, box, (300, 450))
    y2, x2 = np.unravel_index(np.argmax(half), half.shape)
    assert abs(x2 - marker_xy[0] / 2.0) <= pixel / 2 + 1 and abs(y2 - marker_xy[1] / 2.0) <= pixel / 2 + 1


def test_a_coarse_cell_maps_onto_its_part_of_the_crop_and_nothing_outside_it():
    rgb = _photograph((500, 300))
    box = crop_box(rgb, SPEC["roi"])
    cam = np.zeros((7, 7), np.float32)
    cam[1, 5] = 1.0  # row 1, column 5 of the 7 x 7 grid over the 600 x 600 square (45 px of padding on top)
    heat = cam_on_image(cam, rgb.shape, box)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    cell = 600.0 / 7
    assert abs(x - (200 + 5.5 * cell)) <= 2 and abs(y - (50 - 45 + 1.5 * cell)) <= 2
    assert not heat[:50].any() and not heat[560:].any() and not heat[:, :200].any() and not heat[:, 800:].any()


# -- the run ---------------------------------------------------------------------------------------------------

def test_the_pipeline_leaves_each_ok_frames_map_for_its_rule_label(cam_bundle):
    from conftest import Collect
    from edge.io.sources import open_source
    collect = Collect()
    backend = explaining_backend("onnxruntime", cam_bundle)
    pipeline = ExplainingPipeline(cam_bundle, backend, [collect], workers=0)
    pipeline.run(open_source(SAMPLES))
    weight, _ = load_classifier(cam_bundle)
    assert len(collect.frames) == 12
    for frame, result in zip(collect.frames, collect.results):
        assert result.status == "ok" and frame.meta[CAM_KEY]["label"] == result.label
        x = HostPreprocessor(cam_bundle.preprocess).prepare(frame.image)
        _, features = backend.inner.session.run(["logits", "features"], {"input": x})
        expected = class_activation_map(features[0], weight, cam_bundle.labels.index(result.label))
        assert np.allclose(frame.meta[CAM_KEY]["map"], expected, atol=1e-5)


def test_tensorrt_and_low_precisions_say_in_one_line_why_there_are_no_maps(cam_bundle, tiny_bundle):
    for name, options in (("tensorrt", {}), ("onnxruntime", {"precision": "int8"})):
        with pytest.raises(ExplainUnavailable) as info:
            explaining_backend(name, cam_bundle, **options)
        assert "\n" not in str(info.value) and "screening goes on" in str(info.value)


def files_under(folder):
    """Every image file under ``folder`` (list_images skips a folder retina-edge wrote into)."""
    return sorted(os.path.join(d, n) for d, _, names in os.walk(folder) for n in names
                  if n.endswith((".jpg", ".jpeg", ".png")))


def run_edge(args, env, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run"] + args, cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def test_cli_explain_writes_a_heat_map_beside_each_annotated_image(tmp_path, cam_bundle, subprocess_env):
    out = tmp_path / "annotated"
    code, stdout, err = run_edge([SAMPLES, "--model", cam_bundle.root, "-o", str(out) + "/", "--explain",
                                  "--headless", "--quiet"], subprocess_env, str(tmp_path))
    assert code == 0, err
    annotated = [p for p in files_under(str(out)) if not p.endswith(".cam.jpg")]
    cams = [p for p in files_under(str(out)) if p.endswith(".cam.jpg")]
    assert len(annotated) == 12 and len(cams) == 12
    for image, cam in zip(annotated, cams):
        assert os.path.splitext(image)[0] + ".cam.jpg" == cam
        assert read_image(cam).shape == read_image(image).shape
        assert not np.array_equal(read_image(cam), read_image(image))


def test_cli_explain_with_a_bundle_without_the_output_says_so_in_one_line_and_screens(
        tmp_path, tiny_bundle, subprocess_env):
    out = tmp_path / "annotated"
    code, stdout, err = run_edge([SAMPLES, "--model", tiny_bundle.root, "-o", str(out) + "/", "--explain",
                                  "--headless"], subprocess_env, str(tmp_path))
    assert code == 0, err
    lines = [line for line in (stdout + err).splitlines() if "feature-map output" in line]
    assert len(lines) == 1 and "retina-train explain --bundle {}".format(tiny_bundle.root) in lines[0]
    written = files_under(str(out))
    assert len(written) == 12 and not [p for p in written if p.endswith(".cam.jpg")]


def test_cli_explain_without_an_annotated_images_output_is_a_usage_error(tmp_path, cam_bundle, subprocess_env):
    code, stdout, err = run_edge([SAMPLES, "--model", cam_bundle.root, "--explain", "--headless"],
                                 subprocess_env, str(tmp_path))
    assert code == 2 and "-o DIR/" in err


# -- the bundle field ------------------------------------------------------------------------------------------

def _explained_manifest(cam_bundle):
    with open(os.path.join(cam_bundle.root, "bundle.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("change, field", [
    (lambda e: e.update(method="gradcam"), "explain.method"),
    (lambda e: e.update(file="../model.cam.onnx"), "explain.file"),
    (lambda e: e.update(file="model.onnx"), "explain.file"),
    (lambda e: e["classifier"].update(file="model.cam.onnx"), "explain.classifier.file"),
    (lambda e: e.update(sha256="abc"), "explain.sha256"),
    (lambda e: e["classifier"].pop("sha256"), "explain.classifier.sha256"),
    (lambda e: e.update(feature_output="logits"), "explain.feature_output"),
    (lambda e: e.update(source_sha256="0" * 64), "explain.source_sha256"),
    (lambda e: e.pop("classifier"), "explain.classifier"),
])
def test_bad_explain_entries_are_refused_naming_the_field(cam_bundle, change, field):
    manifest = _explained_manifest(cam_bundle)
    change(manifest["explain"])
    with pytest.raises(BundleError) as info:
        validate_manifest(manifest)
    assert "'{}'".format(field) in str(info.value)


def test_a_changed_or_missing_explain_file_is_refused_on_load(cam_bundle):
    with open(cam_bundle.explain_path("classifier"), "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="explain.classifier.sha256"):
        load_bundle(cam_bundle.root)
    os.remove(cam_bundle.explain_path())
    with pytest.raises(BundleError, match="explain.file is missing"):
        load_bundle(cam_bundle.root)


def test_a_bundle_without_explain_has_none(tiny_bundle):
    assert tiny_bundle.explain is None


# -- TensorRT: the runner keeps a second engine output apart from the logits -----------------------------------

def test_tensorrt_binds_and_copies_a_second_output_and_still_returns_the_logits(tiny_bundle, tmp_path):
    from trtfakes.helpers import ORIN, make_backend
    from trtfakes.tensorrt_fake_engine import fake_logits
    network = {"inputs": [("input", (-1, 3, 32, 32))],
               "outputs": [("logits", (-1, 4)), ("features", (-1, 8, 16, 16))]}
    backend, trt, cuda, _ = make_backend(tiny_bundle, tmp_path, gpu=ORIN, batch=2, network=network)
    assert [t.name for t in backend.outputs] == ["logits", "features"]
    x = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    logits = backend.infer(x)
    assert logits.shape == (2, 4) and np.allclose(logits, fake_logits(x), atol=1e-6)
    backend.close()


def test_a_classifier_file_for_other_labels_is_refused(cam_bundle):
    path = cam_bundle.explain_path("classifier")
    with open(path) as f:
        data = json.load(f)
    data["labels"] = list(reversed(data["labels"]))
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="do not fit the bundle's labels"):
        load_classifier(cam_bundle)


# -- the shipped bundle: model.onnx, its variants and calibration untouched; the feature-map model beside them --

def test_the_default_bundles_feature_map_model_gives_model_onnxs_logits_on_real_images():
    from edge.backends.ort import OrtBackend
    from models.bundle import default_bundle_dir
    bundle = load_bundle(default_bundle_dir())
    assert bundle.explain["source_sha256"] == bundle.manifest["model"]["sha256"]
    assert bundle.explain["file"] not in [bundle.manifest["model"]["file"]] + [
        v["file"] for v in bundle.variants.values()]
    batch = _sample_batch(bundle.preprocess, count=12)
    plain = OrtBackend(bundle).infer(batch)
    backend = explaining_backend("onnxruntime", bundle)
    assert np.abs(backend.infer(batch) - plain).max() <= 1e-5
    features = backend.take_features()
    weight, bias = load_classifier(bundle)
    assert features.shape == (12, 1280, 7, 7)
    rebuilt = features.astype(np.float64).mean(axis=(2, 3)).dot(weight.T.astype(np.float64)) + bias
    assert np.abs(rebuilt - plain).max() <= 1e-4


def test_the_heat_map_is_placed_on_the_crop_of_the_bundles_own_roi_rule():
    from edge.preprocess import roi_box
    from synthetic import bscan
    grey = bscan(rows=200, cols=300, seed=3)
    rgb = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    band = {"kind": "retina_band", "threshold": 20, "margin": 0.1}
    box = crop_box(rgb, band)
    assert box == roi_box(rgb, band) and box[0] == 0 and box[2] == 300  # full width, only the band's rows
    assert 0 < box[1] < box[3] < 200
    assert crop_box(rgb, {"kind": "centre", "fraction": 0.5}) == (100, 50, 200, 150)
    assert crop_box(rgb, {"kind": "none"}) == (0, 0, 300, 200)
