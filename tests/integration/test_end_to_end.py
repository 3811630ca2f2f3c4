"""PyTorch -> ONNX -> ONNX Runtime -> CLI on real images, through the real command lines.

retina-train teacher (resnet18) -> distil (tf_efficientnet_lite0) -> export (bundle) ->
retina-edge run on a folder with real and broken files. Tiny settings (64 px, 2 steps):
this checks the plumbing and the contracts between the stages, not accuracy.
"""
import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the workstation half needs torch")
pytest.importorskip("timm", reason="the workstation half needs timm")

from conftest import REPO_ROOT, write_bad_files  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from training.data import group_of, read_manifest  # noqa: E402
from training.splits import check_no_leak  # noqa: E402

pytestmark = pytest.mark.torch

CLASSES = ["cataract", "diabetic_retinopathy", "glaucoma", "normal"]
IMAGE_SIZE = "64"


def _device_python():
    """The device-side interpreter (Python 3.6, onnxruntime 1.10), if this machine has one."""
    candidates = [os.environ.get("RETINA_EDGE_PY36", ""), os.path.join(REPO_ROOT, ".venv36", "bin", "python")]
    return next((p for p in candidates if p and os.path.isfile(p)), "")


PY36 = _device_python()


def run(cmd, env, cwd, timeout=600, expect=0):
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=timeout)
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    assert proc.returncode == expect, "{} exited {}\nstdout:\n{}\nstderr:\n{}".format(
        " ".join(cmd), proc.returncode, out[-3000:], err[-3000:])
    return out, err


def pick_samples(fundus_dir, per_class=4):
    """``per_class`` images per class, no two in one group; the last of each class goes to test."""
    rows, used = [], set()
    for label in CLASSES:
        folder = os.path.join(fundus_dir, label)
        chosen = []
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            group = group_of(path, label)
            if group in used:
                continue
            used.add(group)
            chosen.append((path, label, group))
            if len(chosen) == per_class:
                break
        for i, (path, lab, group) in enumerate(chosen):
            rows.append((path, lab, group, "test" if i == per_class - 1 else "train"))
    return rows


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["PYTHONPATH"] = REPO_ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["RETINA_EDGE_HOME"] = str(tmp_path_factory.mktemp("home"))
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    return e


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fundus_dir, env):
    """Run teacher -> distil -> export once for the module; returns the folders and the manifest CSV."""
    work = str(tmp_path_factory.mktemp("e2e"))
    manifest = os.path.join(work, "data.csv")
    rows = pick_samples(fundus_dir)
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group", "split"])
        writer.writerows(rows)
    teacher, student, bundle = (os.path.join(work, n) for n in ("T", "S", "B"))
    common = ["--data", manifest, "--weights", "none", "--image-size", IMAGE_SIZE, "--epochs", "1",
              "--batch-size", "4", "--max-steps", "2", "--cache-dir", ""]
    py = [sys.executable, "-m", "training"]
    logs = {}
    logs["teacher"] = run(py + ["teacher", "--model", "resnet18", "--out", teacher] + common, env, work)
    logs["distil"] = run(py + ["distil", "--teacher", teacher, "--model", "tf_efficientnet_lite0",
                               "--out", student] + common, env, work)
    logs["export"] = run(py + ["export", "--checkpoint", student, "--out", bundle], env, work)
    return {"work": work, "manifest": manifest, "rows": rows, "teacher": teacher, "student": student,
            "bundle": bundle, "logs": logs}


def test_the_chosen_data_is_4_per_class_with_whole_groups(trained):
    samples = read_manifest(trained["manifest"])
    assert len(samples) == 16
    assert sorted(set(s.label for s in samples)) == CLASSES
    assert sum(s.split == "train" for s in samples) == 12
    assert sum(s.split == "test" for s in samples) == 4
    check_no_leak(samples)
    assert len(set(s.group for s in samples)) == 16


def test_training_runs_keep_their_split_and_config(trained):
    for run_dir, arch in ((trained["teacher"], "resnet18"), (trained["student"], "tf_efficientnet_lite0")):
        for name in ("checkpoint.pt", "config.json", "split.csv", "history.json", "metrics.json"):
            assert os.path.isfile(os.path.join(run_dir, name)), name
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        assert config["arch"] == arch
        assert config["labels"] == CLASSES
        assert config["spec"]["resize"]["size"] == [64, 64]
        saved = read_manifest(os.path.join(run_dir, "split.csv"))
        assert sorted((os.path.realpath(s.path), s.split) for s in saved) == \
            sorted((os.path.realpath(r[0]), r[3]) for r in trained["rows"])
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics = json.load(f)
        assert metrics["test"]["n"] == 4


def test_bundle_carries_commands_provenance_and_parity(trained):
    bundle = load_bundle(trained["bundle"])  # validates the manifest and the model's sha256
    m = bundle.manifest
    assert bundle.labels == CLASSES
    assert bundle.input_name == "input" and bundle.output_names == ["logits"]
    assert bundle.input_shape == (1, 3, 64, 64)
    assert m["model"]["architecture"] == "tf_efficientnet_lite0" and m["model"]["opset"] == 13
    with open(os.path.join(trained["student"], "config.json")) as f:
        assert m["preprocess"] == json.load(f)["spec"]
    commands = m["provenance"]["commands"]
    assert len(commands) == 3
    assert commands[0].startswith("python -m training teacher") and "resnet18" in commands[0]
    assert commands[1].startswith("python -m training distil") and "tf_efficientnet_lite0" in commands[1]
    assert commands[2].startswith("python -m training export")
    parity = m["metrics"]["onnx_parity"]
    assert parity["images"] == 4
    assert 0.0 <= parity["max_abs_logit_diff"] <= 1e-4
    assert m["provenance"]["data"]["images"] == 16
    assert "development and evaluation only" in m["provenance"]["data"]["licence"]
    onnx = pytest.importorskip("onnx")
    model = onnx.load(bundle.onnx_path)
    assert model.ir_version <= 8  # onnxruntime 1.10 (JetPack 4.6) reads IR version 8 at most
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", 13)]


@pytest.fixture(scope="module")
def screen(trained, fundus_dir):
    """3 real images the model never saw (other groups) + 3 broken files."""
    folder = os.path.join(trained["work"], "screen")
    os.makedirs(folder)
    used = set(r[2] for r in trained["rows"])
    good = []
    for label in ("normal", "glaucoma", "diabetic_retinopathy"):
        for name in sorted(os.listdir(os.path.join(fundus_dir, label)), reverse=True):
            path = os.path.join(fundus_dir, label, name)
            if group_of(path, label) not in used:
                dest = os.path.join(folder, "{}_{}".format(label, name))
                shutil.copyfile(path, dest)
                good.append(dest)
                break
    bad = write_bad_files(folder, good[0])
    return folder, good, bad


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_edge_cli_screens_real_and_broken_files_with_the_bundle(trained, screen, env):
    folder, good, bad = screen
    results, ledger = os.path.join(trained["work"], "out.csv"), os.path.join(trained["work"], "l.db")
    out, _ = run([sys.executable, "-m", "edge", "run", folder, "--model", trained["bundle"],
                  "--results", results, "--ledger", ledger], env, trained["work"], expect=1)  # 3 set aside
    assert "images/s" in out
    assert "6 image(s), 3 ok, 3 error(s)" in out
    rows = read_rows(results)
    assert sorted(r["path"] for r in rows) == sorted(good + bad)
    for r in rows:
        if r["path"] in good:
            assert r["status"] == "ok" and r["error"] == ""
            probs = [float(r["p_" + c]) for c in CLASSES]
            assert abs(sum(probs) - 1.0) < 1e-5
            assert r["label"] == CLASSES[probs.index(max(probs))]
        else:
            assert r["status"] == "error", r
            assert r["path"] in r["error"] and r["error"].startswith("decode: ")
    conn = sqlite3.connect(ledger)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert conn.execute("SELECT images, errors FROM runs").fetchall() == [(6, 3)]
    finally:
        conn.close()


@pytest.mark.skipif(not PY36, reason="no Python 3.6 device interpreter (set RETINA_EDGE_PY36 or make .venv36)")
def test_device_interpreter_gives_the_same_probabilities(trained, screen, env):
    """The same bundle under Python 3.6 + onnxruntime 1.10 (the JetPack 4.6 stack) agrees with this one."""
    folder, good, _ = screen
    only_good = os.path.join(trained["work"], "good-only")
    os.makedirs(only_good)
    for path in good:
        shutil.copyfile(path, os.path.join(only_good, os.path.basename(path)))
    here_csv, py36_csv = (os.path.join(trained["work"], n) for n in ("here.csv", "py36.csv"))
    for python, results in ((sys.executable, here_csv), (PY36, py36_csv)):
        run([python, "-m", "edge", "run", only_good, "--model", trained["bundle"], "--results", results,
             "--ledger", os.path.join(trained["work"], "l36.db"), "--quiet"], env, trained["work"])
    here, there = read_rows(here_csv), read_rows(py36_csv)
    assert [r["path"] for r in here] == [r["path"] for r in there]
    assert len(here) == 3
    for a, b in zip(here, there):
        assert a["status"] == b["status"] == "ok"
        assert a["label"] == b["label"]
        for c in CLASSES:
            assert abs(float(a["p_" + c]) - float(b["p_" + c])) < 1e-4


_PREPROCESS_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from edge.io.decode import read_image
from edge.preprocess import preprocess
from models.bundle import load_bundle
spec = load_bundle(sys.argv[2]).preprocess
paths = json.loads(sys.argv[4])
np.save(sys.argv[3], np.concatenate([preprocess(read_image(p), spec) for p in paths]))
"""


@pytest.mark.skipif(not PY36, reason="no Python 3.6 device interpreter (set RETINA_EDGE_PY36 or make .venv36)")
def test_device_interpreter_preprocesses_byte_for_byte(trained, screen, fundus_dir, env):
    """numpy 1.19 + OpenCV 4.6 on Python 3.6 compute the same network input as this interpreter."""
    import numpy as np
    folder, good, _ = screen
    paths = good + [r[0] for r in trained["rows"]]
    arrays = []
    for python, name in ((sys.executable, "here.npy"), (PY36, "py36.npy")):
        out = os.path.join(trained["work"], name)
        run([python, "-c", _PREPROCESS_SCRIPT, REPO_ROOT, trained["bundle"], out, json.dumps(paths)],
            env, trained["work"])
        arrays.append(np.load(out))
    assert arrays[0].shape == (len(paths), 3, 64, 64)
    assert arrays[0].tobytes() == arrays[1].tobytes()


@pytest.mark.parametrize("teacher_arch", ["vit_tiny_patch16_224", "convnextv2_atto"])
def test_transformer_and_convnextv2_teachers_distil_into_a_cnn(trained, env, teacher_arch):
    """Cross-architecture: a ViT or ConvNeXt V2 teacher at 32 px, a MobileNetV2 student at 48 px
    (the teacher sees the student's view resized), through the real command lines."""
    work = trained["work"]
    teacher, student = (os.path.join(work, teacher_arch + suffix) for suffix in ("-T", "-S"))
    common = ["--data", trained["manifest"], "--weights", "none", "--epochs", "1", "--batch-size", "4",
              "--max-steps", "1", "--cache-dir", ""]
    py = [sys.executable, "-m", "training"]
    run(py + ["teacher", "--model", teacher_arch, "--image-size", "32", "--out", teacher] + common, env, work)
    out, _ = run(py + ["distil", "--teacher", teacher, "--model", "mobilenetv2_100", "--image-size", "48",
                       "--out", student] + common, env, work)
    assert "test split (mobilenetv2_100)" in out
    with open(os.path.join(student, "config.json")) as f:
        config = json.load(f)
    assert config["arch"] == "mobilenetv2_100" and config["spec"]["resize"]["size"] == [48, 48]
    with open(os.path.join(student, "history.json")) as f:
        history = json.load(f)
    assert history[0]["kd"] > 0  # the teacher's soft labels really entered the loss


def test_quantize_needs_a_val_split_and_says_so(trained, env):
    """This run's split has train and test only: `retina-train quantize` stops with one clear line."""
    out = subprocess.Popen([sys.executable, "-m", "training", "quantize", "--bundle", trained["bundle"], "--data",
                            trained["manifest"], "--cache-dir", ""], env=env, cwd=trained["work"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = out.communicate(timeout=600)
    assert out.returncode == 1
    assert "the split has no val images" in err.decode() and "Traceback" not in err.decode()
