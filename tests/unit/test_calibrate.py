"""training/calibration.py and `retina-train calibrate`: temperature scaling recovers a known T, the
threshold search reaches the asked sensitivity, the offsets search lifts the asked class, and the verb
end to end on real images with a tiny real model, whose recorded val figures the device reproduces."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="calibrating is workstation-only: needs onnx")

from conftest import LABELS, REPO_ROOT, Collect  # noqa: E402
from edge.backends import create_backend  # noqa: E402
from edge.io.sources import ImageFiles  # noqa: E402
from edge.io.uri import parse_input  # noqa: E402
from edge.pipeline import Pipeline  # noqa: E402
from edge.postprocess import Rule, softmax  # noqa: E402
from edge.preprocess import normalize, prepare  # noqa: E402
from edge.io.decode import read_image  # noqa: E402
from models.bundle import load_bundle, write_bundle, write_variants  # noqa: E402
from training import calibration as cal  # noqa: E402

pytestmark = pytest.mark.torch  # tests that import training/ are workstation tests (pytest.ini)


def synthetic(n=20000, true_temperature=2.5, seed=0):
    """Logits whose labels are drawn from softmax(logits / T): the NLL is minimised at T."""
    rng = np.random.RandomState(seed)
    calibrated = rng.normal(0, 2.0, size=(n, 4))
    probs = softmax(calibrated)
    targets = np.array([rng.choice(4, p=p) for p in probs])
    return calibrated * true_temperature, targets


@pytest.mark.parametrize("true_temperature", [0.6, 2.5])
def test_temperature_fit_recovers_a_known_temperature(true_temperature):
    logits, targets = synthetic(true_temperature=true_temperature)
    fitted = cal.fit_temperature(logits, targets)
    assert fitted == pytest.approx(true_temperature, rel=0.04)
    assert cal.nll(logits, targets, fitted) < cal.nll(logits, targets, 1.0)
    assert cal.ece(softmax(logits, fitted), targets) < 0.02 < cal.ece(softmax(logits), targets)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_a_temperature_applied_to_written_probabilities_equals_it_applied_to_the_logits(temperature):
    """CV writes probabilities at T = 1 and applies each fold's T afterwards: the same numbers."""
    logits, _ = synthetic(true_temperature=1.0)
    written = np.array([[float("{:.9g}".format(p)) for p in row] for row in softmax(logits)])
    assert np.allclose(cal.at_temperature(written, temperature), softmax(logits, temperature), atol=1e-6)
    per_row = cal.at_temperature(written[:2], np.array([[temperature], [1.0]]))
    assert np.allclose(per_row[1], written[1], atol=1e-8)


def test_temperature_on_the_search_bound_is_an_error():
    logits = np.tile([[5.0, 0.0, 0.0, 0.0]], (40, 1))
    with pytest.raises(ValueError, match="search bound"):
        cal.fit_temperature(logits, np.arange(40) % 4)  # confident and uninformative: T runs to the bound


def test_ece_of_a_known_case():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    targets = np.array([0, 1, 0, 0])
    # bin 0.9: confidence 0.9, accuracy 0.5; bin 0.6: confidence 0.6, accuracy 1.0 -> (2*0.4 + 2*0.4) / 4
    assert cal.ece(probs, targets) == pytest.approx(0.4)


@pytest.mark.parametrize("sensitivity", [0.8, 0.95, 0.99])
def test_threshold_search_reaches_the_asked_sensitivity_and_no_more_than_it_must(sensitivity):
    rng = np.random.RandomState(1)
    positive = rng.rand(500) < 0.7
    scores = np.clip(rng.normal(np.where(positive, 0.7, 0.3), 0.2), 0, 1)
    threshold, rests_on = cal.choose_threshold(scores, positive, sensitivity)
    assert rests_on == positive.sum()
    got = cal.rates(scores >= threshold, positive)
    assert got["sensitivity"] >= sensitivity
    # the next positive above the threshold would take the sensitivity below the target
    higher = np.min(scores[positive & (scores > threshold)])
    assert cal.rates(scores > higher, positive)["sensitivity"] < sensitivity
    interval = cal.bootstrap_interval(scores >= threshold, positive, count=300)
    low, high = interval["sensitivity_95"]
    assert low <= got["sensitivity"] <= high


def test_offsets_search_lifts_an_under_called_class_within_the_accuracy_limit():
    logits, targets = synthetic(n=3000, true_temperature=1.0, seed=2)
    logits[:, 2] -= 1.5  # glaucoma under-called
    rule = Rule(LABELS)
    offsets, record = cal.choose_offsets(logits, targets, rule, "normal", lift="glaucoma", bootstraps=50)
    assert offsets["normal"] == 0.0 and offsets["glaucoma"] >= 1.0
    before = cal.class_report(rule.decide(logits), targets, LABELS)
    after = cal.class_report(Rule(LABELS, offsets=offsets).decide(logits), targets, LABELS)
    assert after["recall"]["glaucoma"] > before["recall"]["glaucoma"] + 0.2
    assert after["accuracy"] >= before["accuracy"] - cal.MAX_ACCURACY_DROP
    assert record["lift"] == "glaucoma" and record["combinations"] == 17 ** 3


def test_offsets_search_for_balanced_accuracy_stays_near_zero_on_an_unbiased_model():
    logits, targets = synthetic(n=3000, true_temperature=1.0, seed=3)
    offsets, _ = cal.choose_offsets(logits, targets, Rule(LABELS), "normal", bootstraps=50)
    assert max(abs(v) for v in offsets.values()) <= 0.25


# --- the verb, end to end --------------------------------------------------------------------------------

def colour_centroid_model(features, targets, sharpness):
    """A real ONNX classifier trained here: nearest class-mean of the normalized mean colour,
    logits_k = s * (2 f.mu_k - |mu_k|^2)."""
    from onnx import TensorProto, helper
    means = np.stack([features[targets == k].mean(axis=0) for k in range(len(LABELS))])
    weights = (2 * sharpness * means.T).astype(np.float32)
    bias = (-sharpness * (means ** 2).sum(axis=1)).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["input"], ["colour"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["colour", "w"], ["scores"]),
             helper.make_node("Add", ["scores", "b"], ["logits"])]
    graph = helper.make_graph(nodes, "colour4", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel()),
                               helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _train_features(rows, bundle_or_manifest):
    spec = getattr(bundle_or_manifest, "preprocess", None) or bundle_or_manifest["preprocess"]
    train = [r for r in rows if r[3] == "train"]
    images = np.stack([prepare(read_image(r[0]), spec) for r in train])
    return normalize(images, spec).mean(axis=(2, 3)), np.array([LABELS.index(r[1]) for r in train])


@pytest.fixture
def colour_bundle(tmp_path, fundus_dir, make_manifest):
    """A bundle around a colour classifier fitted on real images, and its split CSV (train/val/test)."""
    rows = []
    for label in LABELS:
        names = sorted(os.listdir(os.path.join(fundus_dir, label)))[:40]
        for i, name in enumerate(names):
            split = "train" if i < 16 else "val" if i < 32 else "test"
            rows.append((os.path.join(fundus_dir, label, name), label, "{}-{}".format(label, i), split))
    split_csv = str(tmp_path / "split.csv")
    with open(split_csv, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "group", "split")] + rows)
    manifest = make_manifest()
    features, targets = _train_features(rows, manifest)
    bundle = write_bundle(str(tmp_path / "bundle"), colour_centroid_model(features, targets, 4.0), manifest)
    return bundle, split_csv, rows


def _screen(bundle, paths, folder, precision="fp32"):
    collect = Collect()
    Pipeline(bundle, create_backend("onnxruntime", bundle, precision=precision), [collect]).run(
        ImageFiles(parse_input(folder), paths=paths))
    assert [r.status for r in collect.results] == ["ok"] * len(paths)
    return collect.results


def test_calibrate_verb_end_to_end_and_the_device_reproduces_its_val_figures(colour_bundle, tmp_path,
                                                                              subprocess_env):
    bundle, split_csv, rows = colour_bundle
    # a stand-in "variant": the same classifier with sharper logits has fp32's argmax everywhere, but
    # offsets on calibrated logits can move its labels: the verb records the agreement at the rule
    sharper = colour_centroid_model(*_train_features(rows, bundle), sharpness=12.0)
    write_variants(bundle.root, {"fp16": (sharper, {"kind": "fp16"})})
    proc = subprocess.Popen([sys.executable, "-m", "training", "calibrate", "--bundle", bundle.root, "--data",
                             split_csv, "--report-test", "--cache-dir", ""], cwd=REPO_ROOT, env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert b"temperature" in out and b"refer at P(refer) >=" in out
    calibrated = load_bundle(bundle.root)
    post = calibrated.manifest["postprocess"]
    record = post["calibration"]
    assert record["split"] == "val" and record["images"] == 64 and record["test"]["images"] == 32
    assert "retina-train calibrate --bundle" in record["command"]
    assert post["temperature"] == record["temperature"]["fitted"] != 1.0
    assert set(post["decision"]["offsets"]) == set(LABELS) and post["decision"]["offsets"]["normal"] == 0.0
    assert post["referral"]["negative"] == ["normal"] and 0 <= post["referral"]["threshold"] <= 1
    assert post["referral"]["val"]["sensitivity"] >= 0.95 and post["referral"]["val"]["referable"] == 48
    assert record["temperature"]["after"]["nll"] <= record["temperature"]["before"]["nll"]
    with open(os.path.join(bundle.root, "MODEL_CARD.md")) as f:
        card = f.read()
    assert "Calibration and decision" in card and "test, once (32)" in card

    val = [r for r in rows if r[3] == "val"]
    results = _screen(calibrated, [r[0] for r in val], str(tmp_path))
    variant = _screen(calibrated, [r[0] for r in val], str(tmp_path), "fp16")
    agreement = record["variants"]["fp16"]
    assert agreement["argmax_agreement"] == 1.0 and record["variants_test"]["fp16"]["images"] == 32
    assert agreement["rule_label_disagreements"] == sum(a.label != b.label for a, b in zip(results, variant))
    assert agreement["refer_disagreements"] == sum(a.refer != b.refer for a, b in zip(results, variant))
    matrix = np.zeros((4, 4), dtype=int)
    for r, row in zip(results, val):
        matrix[LABELS.index(row[1]), LABELS.index(r.label)] += 1
    assert matrix.tolist() == record["val"]["rule"]["confusion_matrix"]
    referral = record["val"]["referral"]
    assert sum(r.refer for r in results) == referral["referred"]
    assert sum(not r.refer for r, row in zip(results, val) if row[1] != "normal") == referral["missed"]


def test_calibrate_refuses_a_class_the_bundle_does_not_have(colour_bundle):
    from training import calibrate
    bundle, split_csv, _ = colour_bundle
    with pytest.raises(ValueError, match="--negative 'healthy' is not one of the bundle's labels"):
        calibrate.calibrate_bundle(bundle.root, split_csv, negative=["healthy"], log=lambda *a: None)
