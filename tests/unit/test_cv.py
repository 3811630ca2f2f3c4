"""retina-train cv: grouped stratified folds, a leak refused before training, the predictions contract, resume."""
import csv
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch", reason="training/ is workstation-only")
pytest.importorskip("timm", reason="the CV run trains timm models")
pytestmark = pytest.mark.torch

from conftest import LABELS, REPO_ROOT  # noqa: E402
from training import cv, cvresults  # noqa: E402
from training.calibration import at_temperature, ece  # noqa: E402
from training.data import group_of, scan_folder  # noqa: E402
from training.splits import check_no_leak  # noqa: E402


@pytest.fixture(scope="module")
def fundus_samples(fundus_dir):
    return scan_folder(fundus_dir)  # file names only: nothing is decoded


def test_groups_never_cross_folds_and_folds_are_stratified(fundus_samples):
    folded = cv.assign_folds(fundus_samples, 5, seed=0)
    check_no_leak(folded)
    folds_of_group = {}
    for s in folded:
        folds_of_group.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in folds_of_group.values())
    total = Counter(s.label for s in folded)
    for fold in "01234":
        counts = Counter(s.label for s in folded if s.split == fold)
        for label in LABELS:
            assert abs(counts[label] / float(total[label]) - 0.2) < 0.02, (fold, label, counts)


def test_other_seeds_give_other_folds_that_hold_the_same_rules(fundus_samples):
    a, b = cv.assign_folds(fundus_samples, 5, seed=0), cv.assign_folds(fundus_samples, 5, seed=1)
    assert [s.split for s in a] != [s.split for s in b]
    check_no_leak(b)


def test_a_fold_split_keeps_the_fold_as_test_and_takes_val_from_whole_training_groups(fundus_samples):
    folded = cv.assign_folds(fundus_samples, 5, seed=0)
    split = cv.fold_split(folded, 2, 0.125, seed=0)
    assert [s.path for s in split] == [s.path for s in folded]  # same order: one cached image array
    assert {s.path for s in split if s.split == "test"} == {s.path for s in folded if s.split == "2"}
    check_no_leak(split)
    val = sum(s.split == "val" for s in split) / float(sum(s.split != "test" for s in split))
    assert 0.10 < val < 0.15


def test_fewer_than_two_folds_is_refused(fundus_samples):
    with pytest.raises(ValueError, match="at least 2"):
        cv.assign_folds(fundus_samples, 1)


def test_figures_are_accuracy_balanced_accuracy_glaucoma_recall_and_ece():
    labels = ["cataract", "glaucoma"]
    rows = [{"label": "cataract", "probs": [0.9, 0.1], "path": "a/1_left.jpg"},
            {"label": "cataract", "probs": [0.3, 0.7], "path": "a/2_left.jpg"},
            {"label": "glaucoma", "probs": [0.2, 0.8], "path": "b/_3_1.jpg"},
            {"label": "glaucoma", "probs": [0.4, 0.6], "path": "b/_4_1.jpg"},
            {"label": "glaucoma", "probs": [0.6, 0.4], "path": "b/_5_1.jpg"}]
    f = cvresults.figures(labels, rows)
    assert f["n"] == 5 and f["accuracy"] == pytest.approx(3 / 5.0)
    assert f["balanced_accuracy"] == pytest.approx((1 / 2.0 + 2 / 3.0) / 2)
    assert f["glaucoma_recall"] == pytest.approx(2 / 3.0)
    assert f["ece"] == pytest.approx(ece(np.array([r["probs"] for r in rows]), [0, 0, 1, 1, 1]))
    assert f["ece_calibrated"] == pytest.approx(f["ece"])  # no temperature: T = 1
    for r in rows:
        r["temperature"] = 2.0
    softer = cvresults.figures(labels, rows)
    assert softer["accuracy"] == f["accuracy"] and softer["ece"] == f["ece"]
    assert softer["ece_calibrated"] == pytest.approx(ece(at_temperature(np.array([r["probs"] for r in rows]), 2.0),
                                                         [0, 0, 1, 1, 1]))
    assert softer["ece_calibrated"] != pytest.approx(f["ece"])
    assert cvresults.mean_sd([0.5, 0.7]) == {"mean": pytest.approx(0.6), "sd": pytest.approx(0.1414, abs=1e-4)}


def synthetic_rows(n, seed, labels=("cataract", "diabetic_retinopathy", "glaucoma", "normal")):
    """A classifier that often calls glaucoma normal: what the decision rule exists to correct."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = i % 4
        logits = rng.normal(0, 1.0, 4)
        logits[k] += 2.5
        if labels[k] == "glaucoma":
            logits[3] += 2.0  # glaucoma leaks into normal
        p = np.exp(logits - logits.max())
        rows.append({"path": "x/{}.jpg".format(i), "label": labels[k], "probs": list(p / p.sum())})
    return list(labels), rows


def test_the_rule_chosen_on_val_lifts_glaucoma_recall_on_test_and_refers_at_95_percent():
    labels, val = synthetic_rows(400, 1)
    _, test = synthetic_rows(400, 2)
    at_rule = cvresults.rule_figures(labels, val, test)
    plain = cvresults.figures(labels, test)
    assert at_rule["rule"]["offsets"]["glaucoma"] > 0
    assert at_rule["glaucoma_recall_rule"] > plain["glaucoma_recall"] + 0.05
    assert at_rule["referral_sensitivity"] > 0.9 and 0 < at_rule["referral_specificity"] < 1
    assert at_rule["accuracy_rule"] >= plain["accuracy"] - 0.05


def pick(fundus_dir, per_class=10):
    """``per_class`` real images per class, one per group, some of each source kind where the class has it."""
    rows, used = [], set()
    for label in LABELS:
        names = sorted(os.listdir(os.path.join(fundus_dir, label)))
        chosen = []
        for name in names[::5]:
            path = os.path.join(fundus_dir, label, name)
            group = group_of(path, label)
            if group not in used and len(chosen) < per_class:
                used.add(group)
                chosen.append((path, label, group))
        rows += chosen
    return rows


def write_data(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group"])
        writer.writerows(rows)


def run_cv(data_csv, out, env, expect=0, extra=()):
    cmd = [sys.executable, "-m", "training", "cv", "--data", data_csv, "--out", out, "--folds", "3",
           "--teacher-model", "test_resnet", "--student-model", "test_efficientnet", "--weights", "none",
           "--image-size", "64", "--batch-size", "4", "--epochs", "1", "--max-steps", "2", "--labels-only",
           "--cache-dir", os.path.join(out, "cache")] + list(extra)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.communicate(timeout=600)[0].decode("utf-8", "replace")
    assert proc.returncode == expect, output[-4000:]
    return output


@pytest.fixture(scope="module")
def cv_run(fundus_dir, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("cv"))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONDONTWRITEBYTECODE="1")
    rows = pick(fundus_dir)
    data_csv = os.path.join(work, "data.csv")
    write_data(rows, data_csv)
    out = os.path.join(work, "run")
    first = run_cv(data_csv, out, env)
    return {"work": work, "env": env, "rows": rows, "data": data_csv, "out": out, "first": first}


def test_cv_writes_folds_whole_groups_every_image_once(cv_run):
    folded = cv.read_folds(os.path.join(cv_run["out"], "folds.csv"))
    assert len(folded) == 40 and sorted({s.split for s in folded}) == ["0", "1", "2"]
    check_no_leak(folded)
    assert "exact duplicates on two sides (file bytes or decoded pixels): 0" in cv_run["first"]


def test_predictions_follow_the_report_contract(cv_run):
    path = os.path.join(cv_run["out"], "predictions.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "label", "group", "fold", "model", "temperature"] + \
            ["p_" + l for l in LABELS]
        rows = list(reader)
    assert Counter(r["model"] for r in rows) == {"teacher": 40, "student": 40, "labels_only": 40}
    folds = {s.path: s.split for s in cv.read_folds(os.path.join(cv_run["out"], "folds.csv"))}
    base = os.path.dirname(path)
    for r in rows:
        full = os.path.normpath(os.path.join(base, r["path"]))
        assert os.path.isfile(full) and folds[full] == r["fold"]  # each image is predicted in its own fold
        assert sum(float(r["p_" + l]) for l in LABELS) == pytest.approx(1.0, abs=1e-4)


def test_each_fold_trains_without_its_test_groups(cv_run):
    for fold in "012":
        for model in ("teacher", "student", "labels_only"):
            run_dir = os.path.join(cv_run["out"], "fold" + fold, model)
            with open(os.path.join(run_dir, "split.csv")) as f:
                trained = [r for r in csv.DictReader(f) if r["split"] in ("train", "val")]
            folded = cv.read_folds(os.path.join(cv_run["out"], "folds.csv"))
            test_groups = {s.group for s in folded if s.split == fold}
            assert trained and not test_groups & {r["group"] for r in trained}
    with open(os.path.join(cv_run["out"], "fold0", "student", "config.json")) as f:
        config = json.load(f)
    assert config["teacher"].endswith(os.path.join("fold0", "teacher"))
    with open(os.path.join(cv_run["out"], "fold0", "labels_only", "config.json")) as f:
        config = json.load(f)
    assert config["teacher"] is None and config["arch"] == "test_efficientnet"


def test_cv_json_has_per_fold_and_mean_sd_figures_per_source_kind(cv_run):
    with open(os.path.join(cv_run["out"], "cv.json")) as f:
        summary = json.load(f)
    assert summary["labels"] == LABELS and summary["folds"] == [0, 1, 2]
    for model in ("teacher", "student", "labels_only"):
        m = summary["models"][model]
        assert sorted(m["per_fold"]) == ["0", "1", "2"]
        for key in ("accuracy", "balanced_accuracy", "glaucoma_recall", "ece", "ece_calibrated"):
            per_fold = [m["per_fold"][f][key] for f in "012"]
            assert m[key]["mean"] == pytest.approx(np.mean(per_fold))
            assert m[key]["sd"] == pytest.approx(np.std(per_fold, ddof=1))
        assert sum(k["n"] for k in m["per_source_kind"].values()) == 40
    assert "kd_gain_accuracy" in summary
    assert summary["source_only_classifier"]["labels"] == LABELS


def test_each_fold_model_temperature_is_the_one_its_own_val_split_gives(cv_run):
    """Per fold, per model: T fitted on that fold's val images (never its test ones), as calibrate does."""
    from training import engine, inputs, runs
    from training.calibration import fit_temperature
    with open(os.path.join(cv_run["out"], "predictions.csv"), newline="") as f:
        written = {(r["fold"], r["model"]): float(r["temperature"]) for r in csv.DictReader(f)}
    run_dir = os.path.join(cv_run["out"], "fold1", "student")
    net, ckpt = runs.load_checkpoint(run_dir)
    val = [s for s in runs.run_split(run_dir) if s.split == "val"]
    part = inputs.prepare(val, ckpt["labels"], ckpt["spec"], os.path.join(cv_run["out"], "cache"))
    try:
        expected = fit_temperature(engine.predict_logits(net, part.images, ckpt["spec"]), part.targets)
    except ValueError:  # two steps of training may leave nothing to fit: then T = 1, and the log says so
        expected = 1.0
    assert written["1", "student"] == pytest.approx(expected, rel=1e-4)
    assert len(set(written.values())) > 1  # one per fold and model, not one for the run


def test_a_second_run_resumes_without_training(cv_run):
    ckpt = os.path.join(cv_run["out"], "fold1", "student", "checkpoint.pt")
    before = os.stat(ckpt).st_mtime_ns
    out = run_cv(cv_run["data"], cv_run["out"], cv_run["env"])
    assert "resuming with" in out and out.count("skipped") == 9 and "training " not in out
    assert os.stat(ckpt).st_mtime_ns == before


def test_a_missing_fold_model_is_trained_again(cv_run):
    shutil.rmtree(os.path.join(cv_run["out"], "fold2", "labels_only"))
    out = run_cv(cv_run["data"], cv_run["out"], cv_run["env"])
    assert out.count("skipped") == 8 and "fold 2 labels_only: training" in out
    assert os.path.isfile(os.path.join(cv_run["out"], "fold2", "labels_only", "predictions.csv"))


def test_a_model_stopped_part_way_goes_on_from_its_last_pt(cv_run):
    run_dir = os.path.join(cv_run["out"], "fold1", "teacher")
    assert os.path.isfile(os.path.join(run_dir, "last.pt"))
    for name in ("checkpoint.pt", "predictions.csv"):  # as a run killed before its end leaves it
        os.remove(os.path.join(run_dir, name))
    out = run_cv(cv_run["data"], cv_run["out"], cv_run["env"])
    assert "fold 1 teacher: resuming from" in out and "resumed " in out
    assert os.path.isfile(os.path.join(run_dir, "predictions.csv"))


def test_each_model_also_writes_its_folds_val_predictions(cv_run):
    for k in range(3):
        split = list(csv.DictReader(open(os.path.join(cv_run["out"], "fold{}".format(k), "split.csv"))))
        val = {os.path.basename(r["path"]) for r in split if r["split"] == "val"}
        for model in cv.MODELS:
            rows = list(csv.DictReader(open(os.path.join(cv_run["out"], "fold{}".format(k), model,
                                                         "val_predictions.csv"))))
            assert {os.path.basename(r["path"]) for r in rows} == val and val


def test_figures_at_the_rule_use_a_decision_chosen_on_each_folds_val_alone(cv_run):
    from edge.postprocess import Rule
    summary = json.load(open(os.path.join(cv_run["out"], "cv.json")))
    ruled = 0
    for model in cv.MODELS:
        for k in range(3):
            fold = summary["models"][model]["per_fold"][str(k)]["at_rule"]
            if "skipped" in fold:  # two training steps: some tiny networks give logits no temperature fits
                assert "temperature" in fold["skipped"]
                continue
            ruled += 1
            labels, test = cvresults.read_predictions(os.path.join(cv_run["out"], "fold{}".format(k), model,
                                                                   "predictions.csv"))
            _, val = cvresults.read_predictions(os.path.join(cv_run["out"], "fold{}".format(k), model,
                                                             "val_predictions.csv"))
            rule = Rule(labels, fold["rule"]["temperature"], fold["rule"]["offsets"], ["normal"],
                        fold["rule"]["threshold"])
            # the same temperature as the fold's predictions (both minimise val NLL; log p = logits + const)
            assert fold["rule"]["temperature"] == pytest.approx(test[0]["temperature"], rel=1e-3)
            log_p = np.log(np.array([r["probs"] for r in test]))
            truth = np.array([labels.index(r["label"]) for r in test])
            assert fold["accuracy_rule"] == pytest.approx(float(np.mean(rule.decide(log_p) == truth)))
            # its referral threshold keeps >= 95 % sensitivity on the val images it was chosen on
            val_p = np.array([r["probs"] for r in val])
            sick = np.array([r["label"] != "normal" for r in val])
            assert rule.refers(Rule(labels, rule.temperature).probabilities(np.log(val_p)))[sick].mean() >= 0.95
        at_rule = summary["models"][model].get("at_rule")
        if at_rule:
            assert set(cvresults.RULE_METRICS) <= set(at_rule) and at_rule["folds"] <= 3
    assert ruled >= 3, "too few fold models had a decision to check"


def test_card_puts_the_cv_figures_in_a_bundles_model_card_and_says_when_the_recipe_differs(cv_run):
    bundle = os.path.join(cv_run["work"], "bundle")
    shutil.copytree(os.path.join(REPO_ROOT, "models", "default"), bundle,
                    ignore=shutil.ignore_patterns("model.cam.onnx", "model.fp16.onnx", "model.int8.onnx"))
    manifest = json.load(open(os.path.join(bundle, "bundle.json")))
    manifest.pop("explain", None)
    manifest.pop("variants", None)
    json.dump(manifest, open(os.path.join(bundle, "bundle.json"), "w"))
    before = open(os.path.join(bundle, "MODEL_CARD.md")).read()
    assert "Cross-validation" not in before
    proc = subprocess.run([sys.executable, "-m", "training", "card", "--bundle", bundle, "--cv", cv_run["out"]],
                          cwd=REPO_ROOT, env=cv_run["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out
    assert "the CV recipe differs from the bundle: student test_efficientnet" in out
    card = open(os.path.join(bundle, "MODEL_CARD.md")).read()
    summary = json.load(open(os.path.join(cv_run["out"], "cv.json")))
    student = summary["models"]["student"]["accuracy"]
    assert "**Cross-validation** (3 patient/source-grouped" in card and "NOT this bundle's" in card
    assert "| accuracy (argmax) | {:.1f} ± {:.1f} |".format(100 * summary["models"]["teacher"]["accuracy"]["mean"],
                                                           100 * summary["models"]["teacher"]["accuracy"]["sd"]) in card
    assert "{:.1f} ± {:.1f}".format(100 * student["mean"], 100 * student["sd"]) in card
    assert "KD gain" in card and "cross-validation above from 3 folds" in card
    assert json.load(open(os.path.join(bundle, "report", "cv.json")))["models"] == summary["models"]
    # a run that has not finished is refused, naming it
    proc = subprocess.run([sys.executable, "-m", "training", "card", "--bundle", bundle, "--cv", cv_run["work"]],
                          cwd=REPO_ROOT, env=cv_run["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode != 0 and "no cv.json" in proc.stdout.decode()


def test_cv_refuses_to_train_on_an_exact_duplicate_across_folds(cv_run):
    rows = list(cv_run["rows"])
    copy = os.path.join(cv_run["work"], "copy_of_first.jpg")
    shutil.copyfile(rows[0][0], copy)
    rows.append((copy, rows[0][1], "planted:copy"))  # another group: may land in another fold
    data_csv = os.path.join(cv_run["work"], "dirty.csv")
    write_data(rows, data_csv)
    out_dir = os.path.join(cv_run["work"], "dirty")
    folds = cv.assign_folds(cv.datalib.load_samples(data_csv), 3)
    side = {s.path: s.split for s in folds}
    if side[copy] == side[rows[0][0]]:
        pytest.fail("the planted copy landed in its original's fold; change its group name")
    out = run_cv(data_csv, out_dir, cv_run["env"], expect=1)
    assert "refused, the folds leak" in out and "copy_of_first.jpg" in out
    assert not os.path.exists(os.path.join(out_dir, "fold0", "teacher"))


def test_parallel_folds_take_each_verbs_own_options_and_match_the_contract(cv_run):
    """--jobs 3: a process per fold (its log in fold<k>/cv.log), then one gathering; the recipe options reach
    teacher, student and (those plain training has) the labels-only student."""
    out_dir = os.path.join(cv_run["work"], "parallel")
    out = run_cv(cv_run["data"], out_dir, cv_run["env"], extra=[
        "--jobs", "3", "--teacher-options=--augment strong --label-smoothing 0.2",
        "--student-options=--alpha 0.5 --label-smoothing 0.1"])
    assert out.count("started (process") == 3 and "FAILED" not in out
    for k in range(3):
        log = open(os.path.join(out_dir, "fold{}".format(k), "cv.log")).read()
        assert "fold {} done".format(k) in log and "left out --alpha 0.5" in log

    def config(k, name):
        return json.load(open(os.path.join(out_dir, "fold{}".format(k), name, "config.json")))
    for k in range(3):
        assert (config(k, "teacher")["augment"], config(k, "teacher")["label_smoothing"]) == ("strong", 0.2)
        assert (config(k, "student")["alpha"], config(k, "student")["label_smoothing"]) == (0.5, 0.1)
        assert "alpha" not in config(k, "labels_only") and config(k, "labels_only")["label_smoothing"] == 0.1
    # the same folds as the serial run (same seed), and predictions for every image and model
    serial = {r["path"]: r["fold"] for r in csv.DictReader(open(os.path.join(cv_run["out"], "folds.csv")))}
    parallel = {r["path"]: r["fold"] for r in csv.DictReader(open(os.path.join(out_dir, "folds.csv")))}
    assert serial == parallel
    rows = list(csv.DictReader(open(os.path.join(out_dir, "predictions.csv"))))
    assert Counter(r["model"] for r in rows) == {m: len(cv_run["rows"]) for m in cv.MODELS}
    assert json.load(open(os.path.join(out_dir, "cv.json")))["folds"] == [0, 1, 2]


def test_recipe_options_that_cv_controls_or_the_verb_lacks_are_refused_before_training(cv_run):
    out_dir = os.path.join(cv_run["work"], "refused")
    out = run_cv(cv_run["data"], out_dir, cv_run["env"], expect=1, extra=["--teacher-options=--out elsewhere"])
    assert "--teacher-options may not set --out" in out
    out = run_cv(cv_run["data"], out_dir, cv_run["env"], expect=1, extra=["--student-options=--alfa 0.5"])
    assert "--student-options '--alfa 0.5': not options of retina-train distil" in out
    out = run_cv(cv_run["data"], out_dir, cv_run["env"], expect=1, extra=["--pretrain-options=--epochs 5"])
    assert "--pretrain-options without --pretrain" in out
    out = run_cv(cv_run["data"], out_dir, cv_run["env"], expect=1, extra=["--pretrain"])
    assert "pretraining is FCMAE for ConvNeXtV2" in out  # the test teacher is a ResNet: nothing to pretrain
    assert not os.path.exists(os.path.join(out_dir, "fold0", "teacher"))


def test_a_teacher_comparison_with_per_fold_pretraining_on_the_folds_train_images(cv_run):
    """--pretrain --teacher-only: each fold pretrains the teacher (FCMAE for ConvNeXtV2) on its own train images,
    the teacher starts from that encoder, and no student is trained."""
    out_dir = os.path.join(cv_run["work"], "pretrained")
    cmd = [sys.executable, "-m", "training", "cv", "--data", cv_run["data"], "--out", out_dir, "--folds", "3",
           "--teacher-model", "convnextv2_atto", "--weights", "none", "--image-size", "64", "--batch-size", "4",
           "--epochs", "1", "--max-steps", "2", "--pretrain", "--teacher-only", "--cache-dir",
           os.path.join(out_dir, "cache"), "--pretrain-options=--epochs 1 --decoder-dim 32 --batch-size 4"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=cv_run["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, out[-4000:]
    for k in range(3):
        fold = os.path.join(out_dir, "fold{}".format(k))
        assert sorted(os.listdir(fold)) == ["pretrain", "split.csv", "teacher"]
        pre = json.load(open(os.path.join(fold, "pretrain", "config.json")))
        split = list(csv.DictReader(open(os.path.join(fold, "split.csv"))))
        train = sum(r["split"] == "train" for r in split)
        assert pre["split_images"] == {"train": train, "left_out": len(split) - train}  # no val or test image
        teacher = json.load(open(os.path.join(fold, "teacher", "config.json")))
        assert teacher["init"] == os.path.join(fold, "pretrain")
        assert teacher["weights_used"] == "file:" + os.path.join(fold, "pretrain", "encoder.pt")
    summary = json.load(open(os.path.join(out_dir, "cv.json")))
    assert list(summary["models"]) == ["teacher"]
    again = subprocess.run(cmd, cwd=REPO_ROOT, env=cv_run["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert again.returncode == 0 and again.stdout.decode().count("pretrain: done") == 3
