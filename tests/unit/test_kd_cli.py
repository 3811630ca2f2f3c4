"""retina-train soft-labels, distil --soft-labels / --kd-config and ablate, end to end on real images.

Tiny timm models (test_vit teacher, test_efficientnet student) at 64 px and one or two steps: what is
checked is the wiring and the files, never accuracy.
"""
import csv
import os
import subprocess
import sys

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("torch", reason="training/ is workstation-only")
pytest.importorskip("timm", reason="the runs train timm models")
pytestmark = pytest.mark.torch

from conftest import LABELS, REPO_ROOT  # noqa: E402
from training.data import group_of  # noqa: E402

SMALL = ["--weights", "none", "--image-size", "64", "--batch-size", "4", "--epochs", "1", "--max-steps", "1"]


def retina_train(args, env, expect=0):
    proc = subprocess.Popen([sys.executable, "-m", "training"] + args, cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.communicate(timeout=900)[0].decode("utf-8", "replace")
    assert proc.returncode == expect, out[-4000:]
    return out


@pytest.fixture(scope="module")
def work(fundus_dir, tmp_path_factory):
    """A 24-image split CSV (6 per class, one per group) and a tiny ViT teacher trained on it."""
    root = str(tmp_path_factory.mktemp("kdcli"))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    rows, used = [], set()
    for label in LABELS:
        names = sorted(os.listdir(os.path.join(fundus_dir, label)))[::7]
        chosen = [n for n in names if group_of(os.path.join(fundus_dir, label, n), label) not in used][:6]
        for n in chosen:
            path = os.path.join(fundus_dir, label, n)
            used.add(group_of(path, label))
            rows.append((path, label, group_of(path, label)))
    data = os.path.join(root, "data.csv")
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "group")] + rows)
    split = os.path.join(root, "split.csv")
    retina_train(["split", "--data", data, "--out", split, "--test", "0.25", "--val", "0.25"], env)
    cache = ["--cache-dir", os.path.join(root, "cache")]
    teacher = os.path.join(root, "teacher")
    retina_train(["teacher", "--data", split, "--model", "test_vit", "--out", teacher] + SMALL + cache, env)
    return {"root": root, "env": env, "data": data, "split": split, "teacher": teacher, "cache": cache}


def test_soft_labels_then_distil_replays_the_cache(work):
    out = retina_train(["soft-labels", "--data", work["split"], "--teacher", work["teacher"], "--epochs", "2",
                        "--image-size", "64"] + work["cache"], work["env"])
    path = os.path.join(work["teacher"], "soft_labels.npz")
    assert "wrote " + path in out
    with np.load(path) as z:
        assert z["params"].shape[0] == 2 and z["probs"].dtype == np.float16
        assert np.allclose(z["probs"].astype(np.float32).sum(-1), 1.0, atol=1e-2)
    student = os.path.join(work["root"], "student-fkd")
    out = retina_train(["distil", "--data", work["split"], "--teacher", work["teacher"], "--model",
                        "test_efficientnet", "--soft-labels", path, "--out", student] + SMALL + work["cache"],
                       work["env"])
    assert "replaying 2 cached views per image" in out and os.path.isfile(os.path.join(student, "checkpoint.pt"))
    out = retina_train(["distil", "--data", work["split"], "--teacher", work["teacher"], "--model",
                        "test_efficientnet", "--soft-labels", path, "--temperature", "2", "--out", student]
                       + SMALL + work["cache"], work["env"], expect=1)
    assert "T=4.0" in out


def test_distil_with_a_kd_config_file_and_a_misspelt_key(work):
    config = os.path.join(work["root"], "kd.json")
    with open(config, "w") as f:
        f.write('{"logits": {"alpha": 0.5}, "pca": {}, "gl": {"weight": 0.5}, "adversarial": {}}')
    student = os.path.join(work["root"], "student-kd")
    out = retina_train(["distil", "--data", work["split"], "--teacher", work["teacher"], "--model",
                        "test_efficientnet", "--kd-config", config, "--out", student] + SMALL + work["cache"],
                       work["env"])
    assert "pca=" in out and "adversarial=" in out and "gl=" in out
    with open(config, "w") as f:
        f.write('{"logits": {}, "advesarial": {}}')
    out = retina_train(["distil", "--data", work["split"], "--teacher", work["teacher"], "--model",
                        "test_efficientnet", "--kd-config", config, "--out", student] + SMALL + work["cache"],
                       work["env"], expect=1)
    assert "did you mean 'adversarial'" in out


def test_ablate_on_one_split_writes_the_table_for_every_variant(work):
    out_dir = os.path.join(work["root"], "ablate")
    variants = "labels,logits,logits+pca,logits+gl,logits+adv,logits+mv"
    out = retina_train(["ablate", "--data", work["split"], "--teacher", work["teacher"], "--split",
                        "--variants", variants, "--student-model", "test_efficientnet", "--out", out_dir]
                       + SMALL + work["cache"], work["env"])
    for name in variants.split(","):
        assert os.path.isfile(os.path.join(out_dir, "fold0", name, "predictions.csv"))
    with open(os.path.join(out_dir, "ablation.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == variants.split(",")
    assert {"accuracy_mean", "balanced_accuracy_sd", "glaucoma_recall_mean", "ece_mean"} <= set(rows[0])
    md = open(os.path.join(out_dir, "ablation.md")).read()
    assert "| logits+pca |" in md and "glaucoma recall" in md and "balanced accuracy" in out
    again = retina_train(["ablate", "--data", work["split"], "--teacher", work["teacher"], "--split",
                          "--variants", variants, "--student-model", "test_efficientnet", "--out", out_dir]
                         + SMALL + work["cache"], work["env"])
    assert again.count("skipped") == 6 and "distilling" not in again


def test_ablate_over_folds_uses_each_folds_own_teacher(work):
    cv_dir = os.path.join(work["root"], "cv")
    retina_train(["cv", "--data", work["data"], "--out", cv_dir, "--folds", "2", "--teacher-model", "test_vit",
                  "--student-model", "test_efficientnet"] + SMALL + work["cache"], work["env"])
    out_dir = os.path.join(work["root"], "ablate-cv")
    out = retina_train(["ablate", "--data", work["data"], "--teacher", cv_dir, "--folds", "2",
                        "--variants", "labels,logits+gl", "--student-model", "test_efficientnet", "--out", out_dir]
                       + SMALL + work["cache"], work["env"])
    for fold in (0, 1):
        assert "fold {} logits+gl: distilling test_efficientnet from {}".format(
            fold, os.path.join(cv_dir, "fold{}".format(fold), "teacher")) in out
    with open(os.path.join(out_dir, "predictions.csv")) as f:
        assert len(list(csv.DictReader(f))) == 2 * 24  # every image once per variant, as a test image


def test_ablate_over_folds_refuses_a_single_teacher(work):
    out = retina_train(["ablate", "--data", work["data"], "--teacher", work["teacher"], "--folds", "2",
                        "--out", os.path.join(work["root"], "refused")], work["env"], expect=1)
    assert "needs a `retina-train cv` run folder" in out
