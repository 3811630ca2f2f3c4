"""`retina-train report` and the metrics behind it: hand-checked ROC-AUC, confusion matrix and per-class
figures, bootstrap intervals (around the estimate, narrower with more data, wider when images come in
groups), a CV predictions file's per-fold mean +/- sd and KD gain, and the bundle path end to end on real
images with a tiny real model, whose figures the device pipeline reproduces."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the report is workstation-only: needs onnx")

from conftest import LABELS, REPO_ROOT, Collect  # noqa: E402
from edge.backends import create_backend  # noqa: E402
from edge.io.sources import ImageFiles  # noqa: E402
from edge.io.uri import parse_input  # noqa: E402
from edge.pipeline import Pipeline  # noqa: E402
from models.bundle import load_bundle, write_postprocess  # noqa: E402
from training import calibration as cal, metrics, report  # noqa: E402

pytestmark = pytest.mark.torch  # tests that import training/ are workstation tests (pytest.ini)


# --- metrics by hand -----------------------------------------------------------------------------------------

def test_roc_auc_by_hand_with_and_without_ties():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats one of two, 0.8 both -> 3 of 4 pairs
    assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a positive tied with a negative counts one half: (0.5 + 1 + 1 + 1) / 4
    assert metrics.roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert metrics.roc_auc([0.3, 0.6], [1, 1]) is None  # no negatives: undefined, not 0 or 1
    fpr, tpr = metrics.roc_curve([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1])
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(0.875)  # trapezoids = the AUC


def hand_evaluation():
    # truth:     cat cat dr  dr  gl  no
    # predicted: cat dr  dr  dr  cat no  (argmax of these probabilities)
    probs = np.array([[.7, .1, .1, .1], [.2, .5, .2, .1], [.1, .8, .05, .05], [.1, .6, .2, .1],
                      [.4, .1, .3, .2], [.1, .1, .1, .7]])
    return report.Evaluation(LABELS, ["cataract/{}_left.jpg".format(i) for i in range(6)], [0, 0, 1, 1, 2, 3],
                             None, probs, negative=("normal",))


def test_confusion_matrix_per_class_and_auc_match_a_hand_example():
    f = report.figures(hand_evaluation(), bootstraps=0, breakdown=False)
    label = f["label"]
    assert label["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]
    assert label["accuracy"] == pytest.approx(4 / 6)
    assert label["per_class"]["cataract"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert label["per_class"]["diabetic_retinopathy"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert label["per_class"]["glaucoma"]["recall"] == 0.0
    assert label["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    # P(cataract): positives .7 .2 against .1 .1 .4 .1 -> .7 beats 4, .2 beats 3 -> 7 / 8
    assert f["auc"]["cataract"] == pytest.approx(7 / 8)
    # refer = not normal: P(refer) = .3 for the normal image, >= .6 for every other -> perfect ranking
    assert f["referral_auc"] == 1.0 and "referral" not in f  # no operating point given: no sensitivity claimed


def synthetic(n, seed=0, accuracy=0.8):
    rng = np.random.RandomState(seed)
    truth = rng.randint(0, 4, n)
    predicted = np.where(rng.rand(n) < accuracy, truth, rng.randint(0, 4, n))
    return truth, predicted


def width(pair):
    return pair[1] - pair[0]


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_data():
    widths = []
    for n in (100, 2500):
        truth, predicted = synthetic(n)
        point = metrics.classification_report(truth, predicted, LABELS)
        got = metrics.classification_intervals(truth, predicted, LABELS, metrics.bootstrap_weights(n, 500, seed=1))
        for key in ("accuracy", "balanced_accuracy"):
            assert got[key][0] <= point[key] <= got[key][1]
        for l in LABELS:
            for key in ("precision", "recall", "f1"):
                low, high = got["per_class"][l][key]
                assert low <= point["per_class"][l][key] <= high
        widths.append(width(got["accuracy"]))
    assert widths[1] < widths[0] / 3  # about 1/sqrt(25) = 1/5 as wide


def test_group_bootstrap_treats_copies_as_one_image():
    truth, predicted = synthetic(200, seed=3)
    copies = 5  # every image five times over, as augmented copies of one source image
    t, p, groups = np.repeat(truth, copies), np.repeat(predicted, copies), np.repeat(np.arange(200), copies)
    by_image = metrics.classification_intervals(t, p, LABELS, metrics.bootstrap_weights(len(t), 500, seed=2))
    by_group = metrics.classification_intervals(t, p, LABELS, metrics.bootstrap_weights(len(t), 500, 2, groups))
    alone = metrics.classification_intervals(truth, predicted, LABELS, metrics.bootstrap_weights(200, 500, seed=2))
    assert width(by_image["accuracy"]) < 0.6 * width(by_group["accuracy"])  # copies faked certainty
    assert width(by_group["accuracy"]) == pytest.approx(width(alone["accuracy"]), rel=0.25)


def test_binary_rates_and_mean_sd():
    flagged, positive = np.array([1, 1, 0, 1, 0, 0], bool), np.array([1, 1, 1, 0, 0, 0], bool)
    r = metrics.binary_rates(flagged, positive, metrics.bootstrap_weights(6, 300))
    assert (r["sensitivity"], r["specificity"], r["missed"], r["false_alarms"]) == (2 / 3, 2 / 3, 1, 1)
    assert r["sensitivity_95"][0] <= 2 / 3 <= r["sensitivity_95"][1]
    assert metrics.mean_sd([0.8, 0.9, None, 1.0]) == pytest.approx({"mean": 0.9, "sd": 0.1, "n": 3})


# --- a CV predictions file -----------------------------------------------------------------------------------

def one_hot_row(path, label, fold, model, predicted, group):
    p = [0.04] * 4
    p[LABELS.index(predicted)] = 0.88
    return [path, label, group, fold, model] + ["{:.2f}".format(v) for v in p]


def write_predictions(path, right):
    """``right[model][fold]`` = how many of the fold's 8 images (2 per class) the model gets right."""
    rows = []
    for model, folds in right.items():
        for fold, k in enumerate(folds):
            for i in range(8):
                label = LABELS[i % 4]
                predicted = label if i < k else LABELS[(i + 1) % 4]
                rows.append(one_hot_row("{}/f{}_{}.jpg".format(label, fold, i), label, str(fold), model, predicted,
                                        "g{}-{}".format(fold, i // 2)))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "group", "fold", "model"] + ["p_" + l for l in LABELS]] + rows)


def test_predictions_file_gives_per_fold_mean_sd_and_kd_gain(tmp_path, subprocess_env):
    path = str(tmp_path / "predictions.csv")
    right = {"student": [8, 6, 7], "labels_only": [6, 6, 4], "teacher": [8, 7, 7]}
    write_predictions(path, right)
    out = str(tmp_path / "cv-report")
    proc = subprocess.Popen([sys.executable, "-m", "training", "report", "--predictions", path, "--out", out,
                             "--bootstraps", "200"], cwd=REPO_ROOT, env=subprocess_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    with open(os.path.join(out, "report.json")) as f:
        cv = json.load(f)["cv"]
    for model, folds in right.items():
        acc = np.array(folds) / 8.0
        got = cv["models"][model]["mean_sd"]["accuracy"]
        assert got == pytest.approx({"mean": acc.mean(), "sd": acc.std(ddof=1), "n": 3})
        assert [cv["models"][model]["headline"][str(i)]["accuracy"] for i in range(3)] == pytest.approx(list(acc))
        assert cv["models"][model]["pooled"]["images"] == 24
    gain = (np.array(right["student"]) - np.array(right["labels_only"])) / 8.0
    assert [cv["kd_gain"]["folds"][str(i)]["accuracy"] for i in range(3)] == pytest.approx(list(gain))
    assert cv["kd_gain"]["mean_sd"]["accuracy"] == pytest.approx({"mean": gain.mean(), "sd": gain.std(ddof=1), "n": 3})
    # teacher and student differ exactly where one of them is wrong: |8-8|, |6-7|, |7-7| images
    assert [cv["teacher_student"][str(i)]["disagreements"] for i in range(3)] == [0, 1, 0]
    with open(os.path.join(out, "report.md")) as f:
        md = f.read()
    assert "## KD gain" in md and "Weakest class" in md and "mean ± sd" in md
    for name in ("folds.png", "student_confusion.png", "labels_only_reliability.png", "teacher_roc.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000


def test_predictions_with_an_image_root_break_down_by_image_size(tmp_path, fundus_dir):
    rows = []
    for label in LABELS:
        for i, name in enumerate(sorted(os.listdir(os.path.join(fundus_dir, label)))[:6]):
            rows.append(one_hot_row(label + "/" + name, label, str(i % 2), "student", label, label + name))
    path = str(tmp_path / "predictions.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "group", "fold", "model"] + ["p_" + l for l in LABELS]] + rows)
    record, _ = report.predictions_report(path, bootstraps=50, data=fundus_dir)
    pooled = record["cv"]["models"]["student"]["pooled"]
    assert sum(part["images"] for part in pooled["by_size"].values()) == 24
    assert all("x" in size for size in pooled["by_size"])
    with pytest.raises(FileNotFoundError, match="image missing"):
        report.predictions_report(path, bootstraps=50, data=str(tmp_path))


def test_a_fold_temperature_column_calibrates_the_figures_and_keeps_the_written_ones_as_before(tmp_path):
    labels = ["glaucoma", "normal"]
    rng = np.random.RandomState(0)
    rows = []
    for fold, temperature in (("0", 2.0), ("1", 0.5)):
        for i in range(40):
            z = rng.normal(0, 3, 2)
            p = np.exp(z) / np.exp(z).sum()
            rows.append(["f{}_{}.jpg".format(fold, i), labels[i % 2], "g{}".format(i), fold, "student",
                         str(temperature)] + ["{:.9g}".format(v) for v in p])
    path = str(tmp_path / "predictions.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "group", "fold", "model", "temperature", "p_glaucoma",
                                  "p_normal"]] + rows)
    _, models = report.read_predictions(path)
    for fold, temperature in (("0", 2.0), ("1", 0.5)):
        ev = models["student"][fold]
        assert np.allclose(ev.probs, cal.at_temperature(ev.raw_probs, temperature))
        assert not np.allclose(ev.probs, ev.raw_probs)
    pooled = report.pooled(models["student"])
    assert pooled.raw_probs is not None and len(pooled.raw_probs) == 80


def test_a_bad_predictions_file_names_the_file_and_line(tmp_path):
    path = str(tmp_path / "bad.csv")
    with open(path, "w") as f:
        f.write("path,label,group,fold,model," + ",".join("p_" + l for l in LABELS) + "\n")
        f.write("a.jpg,normal,g,0,student,0.5,0.5,0.5,0.5\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: the probabilities must be >= 0 and sum to 1"):
        report.read_predictions(path)


# --- a bundle, end to end --------------------------------------------------------------------------------------

@pytest.fixture
def tiny_split(tmp_path, tiny_bundle, fundus_dir):
    """The tiny bundle with a temperature, offsets and a referral point, and a split CSV of real images."""
    rows = []
    for label in LABELS:
        names = sorted(os.listdir(os.path.join(fundus_dir, label)))[:10]
        for i, name in enumerate(names):
            rows.append((os.path.join(fundus_dir, label, name), label, "{}-{}".format(label, i // 2),
                         "train" if i < 2 else "val"))
    split_csv = str(tmp_path / "split.csv")
    with open(split_csv, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "group", "split")] + rows)
    post = dict(tiny_bundle.manifest["postprocess"], temperature=1.7,
                decision={"rule": "logit_offsets", "offsets": {"glaucoma": 0.3}},
                referral={"negative": ["normal"], "threshold": 0.5, "score": "1 - P(normal)"})
    return write_postprocess(tiny_bundle.root, post), split_csv, [r for r in rows if r[3] == "val"]


def test_bundle_report_end_to_end_matches_the_device(tiny_split, tmp_path, subprocess_env):
    bundle, split_csv, val = tiny_split
    out = os.path.join(bundle.root, "report", "val")
    proc = subprocess.Popen([sys.executable, "-m", "training", "report", "--bundle", bundle.root, "--data", split_csv,
                             "--out", out, "--bootstraps", "100", "--latency-runs", "3", "--cache-dir", ""],
                            cwd=REPO_ROOT, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    with open(os.path.join(out, "report.json")) as f:
        r = json.load(f)
    f = r["figures"]
    assert r["split"] == "val" and f["images"] == len(val) == 32 and f["groups"] == 16
    assert f["bootstrap"]["unit"] == "groups"
    assert set(f["by_source"]) <= {"patient", "augmented", "single"}
    assert sum(part["images"] for part in f["by_source"].values()) == 32
    assert sum(part["images"] for part in f["by_size"].values()) == 32
    assert r["cost"]["student"]["latency_ms_median"] > 0 and r["cost"]["teacher"] is None
    assert r["cost"]["student"]["onnx_bytes"] == os.path.getsize(bundle.onnx_path)

    # what the device prints on the same images, through the real pipeline
    collect = Collect()
    Pipeline(bundle, create_backend("onnxruntime", bundle), [collect]).run(
        ImageFiles(parse_input(str(tmp_path)), paths=[row[0] for row in val]))
    matrix = np.zeros((4, 4), dtype=int)
    for result, row in zip(collect.results, val):
        matrix[LABELS.index(row[1]), LABELS.index(result.label)] += 1
    assert matrix.tolist() == f["label"]["confusion_matrix"]
    assert sum(res.refer for res in collect.results) == f["referral"]["flagged"]
    assert f["referral"]["positives"] == 24 and f["referral"]["threshold"] == 0.5

    with open(os.path.join(out, "report.md")) as fh:
        md = fh.read()
    for words in ("## Per class", "## Confusion matrix", "Weakest class", "## By source", "## Referral",
                  "Teacher–student agreement", "Not available", "## Cost", "32 images"):
        assert words in md
    for name in ("confusion.png", "per_class.png", "roc.png", "reliability.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
    with open(os.path.join(bundle.root, "MODEL_CARD.md")) as fh:
        assert "[val](report/val/report.md)" in fh.read()  # the card links the report beside the bundle
    load_bundle(bundle.root)  # a report folder leaves the bundle valid


def test_teacher_predictions_give_the_agreement(tiny_split, tmp_path):
    bundle, split_csv, val = tiny_split
    teacher = str(tmp_path / "teacher.csv")
    with open(teacher, "w", newline="") as f:  # a perfect teacher on the first 20 val images
        csv.writer(f).writerows([["path"] + ["p_" + l for l in LABELS]] + [
            [os.path.relpath(row[0], os.path.dirname(os.path.dirname(row[0])))] +
            [0.97 if l == row[1] else 0.01 for l in LABELS] for row in val[:20]])
    record, ev = report.bundle_report(bundle.root, split_csv, teacher_predictions=teacher, bootstraps=50,
                                      latency_runs=2, log=lambda *a: None)
    a = record["teacher"]["agreement"]
    assert a["images"] == 20 and record["teacher"]["figures"]["label"]["accuracy"] == 1.0
    student_right = int(np.sum(ev.decided[:20] == ev.targets[:20]))
    assert a["disagreements"] == 20 - student_right and a["second_right_only"] == 20 - student_right


def test_report_needs_one_input(tmp_path):
    from training.cli import main
    assert main(["report", "--out", str(tmp_path / "r")]) == 1
    assert not os.path.exists(str(tmp_path / "r"))  # refused before anything is written
