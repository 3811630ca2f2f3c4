"""An OCT bundle trained from synthetic class folders with tiny settings, exported, and screened by retina-edge.

Real subprocesses: retina-train synth-oct -> teacher (one-channel, --modality auto) -> export, then
``python -m edge run`` with that single OCT bundle. No accuracy is asserted: the run is two optimiser steps.
"""
import csv
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")
pytest.importorskip("pydicom", reason="the synthetic set includes OPT DICOM files")
pytestmark = pytest.mark.torch

from conftest import REPO_ROOT  # noqa: E402
from models.bundle import load_bundle  # noqa: E402


def run(cmd, env, cwd):
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.communicate(timeout=600)[0].decode("utf-8", "replace")
    assert proc.returncode in (0, 1), out[-4000:]  # retina-edge run: 1 = some inputs set aside (skipped)
    return proc.returncode, out


@pytest.fixture(scope="module")
def oct_run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("oct"))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONDONTWRITEBYTECODE="1",
               RETINA_EDGE_HOME=os.path.join(work, "home"))
    train = [sys.executable, "-m", "training"]
    data, teacher, bundle = (os.path.join(work, n) for n in ("syn", "T", "B"))
    logs = {}
    logs["synth"] = run(train + ["synth-oct", "--out", data, "--per-class", "6", "--dicom", "--seed", "1",
                                 "--size", "96", "144"], env, work)[1]
    logs["teacher"] = run(train + ["teacher", "--data", data, "--model", "test_resnet", "--weights", "none",
                                   "--channels", "1", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                                   "--max-steps", "2", "--cache-dir", "", "--out", teacher], env, work)[1]
    logs["export"] = run(train + ["export", "--checkpoint", teacher, "--out", bundle], env, work)[1]
    results = os.path.join(work, "x.csv")
    code, logs["run"] = run([sys.executable, "-m", "edge", "run", data, "--model", bundle, "--results", results],
                            env, REPO_ROOT)
    with open(results, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"work": work, "data": data, "teacher": teacher, "bundle": bundle, "logs": logs, "rows": rows,
            "code": code}


def test_the_run_says_what_modality_it_decided_and_records_it(oct_run):
    assert "modality: oct (" in oct_run["logs"]["teacher"] and "grey" in oct_run["logs"]["teacher"]
    assert "synthetic" in oct_run["logs"]["synth"].lower()
    with open(os.path.join(oct_run["teacher"], "config.json")) as f:
        config = json.load(f)
    assert config["modality"] == "oct" and "grey" in config["modality_reason"]
    assert config["spec"]["colour_order"] == "GREY" and config["spec"]["roi"]["kind"] == "retina_band"
    assert len(config["spec"]["mean"]) == len(config["spec"]["std"]) == 1


def test_the_bundle_is_an_oct_bundle_with_one_input_channel_and_an_honest_card(oct_run):
    bundle = load_bundle(oct_run["bundle"])  # validates the manifest against the vocabulary
    m = bundle.manifest
    assert m["modality"] == "oct" and m["name"] == "oct-test_resnet"
    assert m["input"]["shape"] == [1, 1, 32, 32]
    assert m["labels"] == ["CNV", "DME", "DRUSEN", "NORMAL"]
    assert m["provenance"]["data"]["modality"] == "oct"
    assert "SYNTHETIC" in m["provenance"]["data"]["licence"]
    with open(os.path.join(oct_run["bundle"], "MODEL_CARD.md")) as f:
        card = f.read()
    assert "**Modality.** oct" in card and "OCT B-scans" in card and "SYNTHETIC" in card
    with open(os.path.join(oct_run["bundle"], "split.csv"), newline="") as f:
        listed = [r["path"] for r in csv.DictReader(f)]
    assert any("#frame=2" in p for p in listed)  # the volume's frames are samples


def test_retina_edge_screens_the_oct_dicoms_with_the_oct_bundle(oct_run):
    rows = [r for r in oct_run["rows"] if r["status"] != "volume"]
    dicom = [r for r in rows if ".dcm" in r["path"]]
    assert len(dicom) == 4 * (1 + 3)  # per class a single-frame file and a 3-frame volume
    for r in dicom:
        assert r["status"] == "ok" and r["modality"] == "oct", r
        assert r["label"] in ("CNV", "DME", "DRUSEN", "NORMAL") and r["model"] == "oct-test_resnet"
    assert sum(r["path"].endswith(".dcm#2") for r in rows) == 4
    volumes = [r for r in oct_run["rows"] if r["status"] == "volume"]
    assert len(volumes) == 4 and all(r["path"].endswith("-vol3.dcm") and "worst: frame" in r["error"]
                                     for r in volumes), volumes
    # plain B-scans (8/16-bit PNG, JPEG, 16-bit TIFF): the station's modality guess sends them to the OCT bundle
    plain = [r for r in rows if ".dcm" not in r["path"]]
    assert len(plain) == 4 * 6
    for r in plain:
        assert r["status"] == "ok" and r["modality"] == "oct", r


def test_the_trained_oct_bundle_screens_beside_the_shipped_fundus_bundle(oct_run, tmp_path):
    """The issue's check: one folder of fundus photographs, OCT B-scans and OPT volumes, both bundles loaded."""
    import shutil
    mixed = tmp_path / "mixed"
    shutil.copytree(os.path.join(REPO_ROOT, "samples", "fundus"), str(mixed))
    from edge.io.decode import read_image
    from synthetic import make_dicom
    glaucoma = os.path.join(str(mixed), "glaucoma", sorted(os.listdir(str(mixed / "glaucoma")))[0])
    (mixed / "photograph-op.dcm").write_bytes(make_dicom(read_image(glaucoma), "RGB", modality="OP"))
    photographs = sum(len(files) for _, _, files in os.walk(str(mixed)))  # the OP DICOM included
    for label in ("CNV", "NORMAL"):
        names = sorted(os.listdir(os.path.join(oct_run["data"], label)))
        chosen = [n for n in names if not n.endswith(".dcm")][:3] + [n for n in names if n.endswith("-vol3.dcm")]
        for name in chosen:
            shutil.copy(os.path.join(oct_run["data"], label, name), str(mixed / name))
    results = str(tmp_path / "mixed.csv")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONDONTWRITEBYTECODE="1",
               RETINA_EDGE_HOME=str(tmp_path / "home"))
    code, out = run([sys.executable, "-m", "edge", "run", str(mixed), "--model",
                     "fundus=" + os.path.join(REPO_ROOT, "models", "default"), "--model", "oct=" + oct_run["bundle"],
                     "--results", results], env, REPO_ROOT)
    assert code == 0, out[-3000:]
    with open(results, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] != "volume"]
    by_model = {}
    for r in rows:
        assert r["status"] == "ok", r
        by_model.setdefault(r["model"], []).append(r)
    assert sorted(by_model) == ["fundus", "oct"]
    assert all(r["modality"] == "oct" and r["label"] in ("CNV", "DME", "DRUSEN", "NORMAL") for r in by_model["oct"])
    assert all(r["modality"] == "fundus" and r["label"] in ("cataract", "diabetic_retinopathy", "glaucoma", "normal")
               for r in by_model["fundus"])
    assert len(by_model["oct"]) == 2 * 3 + 2 * 3 and len(by_model["fundus"]) == photographs > 0
