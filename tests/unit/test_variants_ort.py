"""Precision variants through ONNX Runtime (Python 3.6 + onnxruntime 1.10 and 3.11 + 1.31 alike, no onnx).

A tiny bundle carries tests/data/tiny4.int8.onnx and tiny4.fp16.onnx (made by training/quantize.py from
tiny4.onnx: tests/data/make_tiny_onnx.py); the shipped bundle carries the real ones, whose recorded
agreement with fp32 on the val split is reproduced here on the real images.
"""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, TESTS_DIR
from edge.backends import BackendError, create_backend
from edge.backends.ort import session_options
from edge.io.decode import read_image
from edge.preprocess import preprocess
from models.bundle import default_bundle_dir, load_bundle, write_variants

SAMPLES = os.path.join(REPO_ROOT, "samples", "fundus")
PRECISIONS = ("int8", "fp16")


@pytest.fixture
def variant_bundle(tiny_bundle):
    made = {}
    for precision in PRECISIONS:
        with open(os.path.join(TESTS_DIR, "data", "tiny4.{}.onnx".format(precision)), "rb") as f:
            made[precision] = (f.read(), {"kind": "qdq-int8" if precision == "int8" else "fp16"})
    return write_variants(tiny_bundle.root, made)


def _inputs(bundle, fundus_dir, count=8):
    names = sorted(os.listdir(os.path.join(fundus_dir, "normal")))[:count]
    return np.concatenate([preprocess(read_image(os.path.join(fundus_dir, "normal", n)), bundle.preprocess)
                           for n in names])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_variant_runs_through_onnxruntime_and_tracks_fp32(variant_bundle, fundus_dir, precision):
    x = _inputs(variant_bundle, fundus_dir)
    fp32 = create_backend("onnxruntime", variant_bundle, precision="fp32")
    backend = create_backend("onnxruntime", variant_bundle, precision=precision)
    assert backend.precision == precision and precision in backend.describe()
    assert backend.model_path == variant_bundle.model_path(precision) != fp32.model_path
    assert backend.model_path.endswith("model.{}.onnx".format(precision))
    reference, got = fp32.infer(x), backend.infer(x)
    assert got.dtype == np.float32 and got.shape == reference.shape == (len(x), 4)
    assert not np.array_equal(got, reference)  # a different network really ran ...
    assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()  # ... computing the same thing
    pre = backend.make_preprocessor()
    assert pre.prepare(read_image(os.path.join(fundus_dir, "normal", "3417_left.jpg"))).dtype == np.float32


def test_int8_is_evaluated_as_written_not_by_saturating_cpu_kernels():
    options = session_options("int8")
    getter = getattr(options, "get_session_config_entry", None)
    if getter is None:
        pytest.skip("this onnxruntime cannot read session config entries back")
    assert getter("session.disable_quant_qdq") == "1"
    for options in (session_options("fp32"), session_options("int8", fused_int8=True)):
        try:
            assert options.get_session_config_entry("session.disable_quant_qdq") != "1"
        except RuntimeError:  # onnxruntime's answer for an entry that was never set
            pass


def test_a_precision_the_bundle_lacks_is_one_clear_line(tiny_bundle):
    with pytest.raises(BackendError) as info:
        create_backend("onnxruntime", tiny_bundle, precision="int8")
    message = str(info.value)
    assert "no int8 variant" in message and "retina-train quantize" in message and "\n" not in message


# --- the shipped bundle -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return load_bundle(default_bundle_dir())  # verifies model.onnx and both variants' sha256


def _val_paths(bundle, fundus_dir):
    with open(os.path.join(bundle.root, "split.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
    return [os.path.join(fundus_dir, r["path"]) for r in rows], [bundle.labels.index(r["label"]) for r in rows]


def _logits(bundle, precision, batch):
    backend = create_backend("onnxruntime", bundle, precision=precision)
    return np.concatenate([backend.infer(x) for x in batch])


def test_shipped_variants_record_how_they_were_made(shipped):
    assert shipped.precisions == ["fp32", "fp16", "int8"]
    int8, fp16 = shipped.variants["int8"], shipped.variants["fp16"]
    assert int8["kind"] == "qdq-int8" and fp16["kind"] == "fp16"
    assert int8["calibration"]["split"] == "train" and int8["calibration"]["images"] > 0
    assert int8["quantization"]["zero_points"] == 0
    for entry in (int8, fp16):
        assert entry["agreement"]["split"] == "val"
    # the target this variant was made to: >= 99 % top-1 agreement, accuracy within 0.5 points of fp32
    a = int8["agreement"]
    assert a["top1_agreement"] >= 0.99
    assert abs(a["accuracy"] - a["fp32_accuracy"]) <= 0.005


@pytest.mark.parametrize("precision", PRECISIONS)
def test_shipped_variant_agreement_is_reproduced_on_the_val_split(shipped, fundus_dir, precision):
    paths, targets = _val_paths(shipped, fundus_dir)
    recorded = shipped.variants[precision]["agreement"]
    assert recorded["images"] == len(paths)
    batch = [preprocess(read_image(p), shipped.preprocess) for p in paths]
    reference, got = _logits(shipped, "fp32", batch), _logits(shipped, precision, batch)
    same = int(np.sum(reference.argmax(1) == got.argmax(1)))
    assert abs(same - recorded["top1_agreement"] * len(paths)) <= 1, (same, recorded)
    correct = int(np.sum(got.argmax(1) == np.asarray(targets)))
    assert abs(correct - recorded["accuracy"] * len(paths)) <= 1, (correct, recorded)


def test_shipped_int8_agrees_with_fp32_on_the_samples(shipped):
    paths = sorted(os.path.join(d, n) for d, _, files in os.walk(SAMPLES) for n in files)
    assert len(paths) == 12
    batch = [preprocess(read_image(p), shipped.preprocess) for p in paths]
    reference, got = _logits(shipped, "fp32", batch), _logits(shipped, "int8", batch)
    assert np.array_equal(reference.argmax(1), got.argmax(1))


def test_run_with_precision_int8_screens_the_samples(tmp_path, subprocess_env):
    results = str(tmp_path / "int8.csv")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", SAMPLES, "--backend", "onnxruntime",
                             "--precision", "int8", "--results", results], cwd=REPO_ROOT, env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert b"int8" in out + err
    with open(results) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
