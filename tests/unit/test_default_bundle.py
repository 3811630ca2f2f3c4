"""The shipped default bundle: valid, documented, and its recorded held-out figures reproduced
by the device code (Python 3.6, no torch)."""
import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import LABELS, REPO_ROOT, Collect
from edge.backends import create_backend
from edge.pipeline import Pipeline
from edge.io.sources import ImageFiles
from edge.io.uri import parse_input
from models.bundle import default_bundle_dir, load_bundle

BUNDLE_DIR = default_bundle_dir()
SAMPLES = os.path.join(REPO_ROOT, "samples", "fundus")


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE_DIR)  # validates the manifest and the model's sha256


def split_rows(split):
    with open(os.path.join(BUNDLE_DIR, "split.csv")) as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def test_default_bundle_is_the_documented_student(bundle):
    m = bundle.manifest
    assert bundle.labels == LABELS
    assert m["model"]["opset"] == 13
    assert m["input"]["shape"] == [1, 3, 224, 224]
    assert os.path.getsize(bundle.onnx_path) < 20 * 1024 * 1024  # "a student of a few MB"
    assert m["metrics"]["onnx_parity"]["max_abs_logit_diff"] <= 1e-4
    assert m["metrics"]["test"]["n"] == len(split_rows("test")) > 0


def test_provenance_lists_split_teacher_distil_export_in_order(bundle):
    verbs = []
    for command in bundle.manifest["provenance"]["commands"]:
        words = command.split()
        verbs += [w for w in words if w in ("split", "teacher", "distil", "export")][:1]
    assert verbs == ["split", "teacher", "distil", "export"]


def test_model_card_states_use_and_licence_caveat():
    with open(os.path.join(BUNDLE_DIR, "MODEL_CARD.md")) as f:
        card = f.read()
    assert "not a diagnosis" in card
    assert "redistribution terms not verified" in card
    assert "group-wise" in card


def test_split_listing_never_puts_a_group_on_two_sides():
    sides = {}
    with open(os.path.join(BUNDLE_DIR, "split.csv")) as f:
        for row in csv.DictReader(f):
            sides.setdefault(row["group"], set()).add(row["split"])
    assert sides and all(len(v) == 1 for v in sides.values())


def test_samples_are_held_out_images():
    held_out = set(r["path"] for r in split_rows("test"))
    for label in os.listdir(SAMPLES):
        for name in os.listdir(os.path.join(SAMPLES, label)):
            assert "{}/{}".format(label, name) in held_out


def test_device_reproduces_the_recorded_held_out_figures_at_the_decision_rule(bundle, fundus_dir):
    """The test split through edge/ at the bundle's temperature, decision rule and referral point gives
    what `retina-train calibrate --report-test` recorded (the rule's figures, not the argmax ones)."""
    recorded = bundle.manifest["postprocess"]["calibration"]["test"]
    rows = split_rows("test")
    source = ImageFiles(parse_input(fundus_dir), paths=[os.path.join(fundus_dir, r["path"]) for r in rows])
    collect = Collect()
    Pipeline(bundle, create_backend("onnxruntime", bundle), [collect]).run(source)
    results = collect.results
    assert [r.status for r in results] == ["ok"] * len(rows) and recorded["images"] == len(rows)
    correct = sum(r.label == row["label"] for r, row in zip(results, rows))
    assert abs(correct - recorded["rule"]["accuracy"] * len(rows)) <= 1, correct  # one image of slack for float ties
    glaucoma = [r.label == "glaucoma" for r, row in zip(results, rows) if row["label"] == "glaucoma"]
    assert abs(sum(glaucoma) - recorded["rule"]["recall"]["glaucoma"] * len(glaucoma)) <= 1
    assert all(r.refer is not None for r in results)
    missed = sum(not r.refer for r, row in zip(results, rows) if row["label"] != "normal")
    assert abs(missed - recorded["referral"]["missed"]) <= 1


def test_shipped_decision_was_chosen_on_val_and_keeps_the_argmax_figures_beside_it(bundle):
    post = bundle.manifest["postprocess"]
    record = post["calibration"]
    assert record["split"] == "val" and record["images"] == bundle.manifest["metrics"]["val"]["n"]
    assert record["split_sha256"] == bundle.manifest["provenance"]["data"]["split_sha256"]
    assert record["command"].startswith("retina-train calibrate --bundle models/default")
    assert post["referral"]["val"]["sensitivity"] >= 0.95
    # the argmax figures the training run measured are what the rule's record starts from
    assert record["test"]["argmax"]["accuracy"] == pytest.approx(bundle.manifest["metrics"]["test"]["accuracy"])


def test_demo_command_screens_the_samples_with_the_default(tmp_path, subprocess_env):
    results = str(tmp_path / "demo.csv")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", SAMPLES, "--results", results],
                            cwd=REPO_ROOT, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert b"images/s" in out
    with open(results) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    right = sum(r["label"] == os.path.basename(os.path.dirname(r["path"])) for r in rows)
    assert right >= 9, "the shipped model got {} of 12 samples right".format(right)
    referred = sum(r["refer"] == "yes" for r in rows)
    assert all(r["refer"] in ("yes", "no") for r in rows)  # the shipped bundle has a referral point
    assert "12 image(s), 12 ok, {} to refer, 0 error(s)".format(referred).encode() in out


@pytest.mark.torch
def test_model_card_is_what_the_card_writer_makes_of_the_manifest():
    """The shipped card is generated, never hand-edited: re-rendering the manifest gives it back, so every
    figure in it (variants, calibration, explanations, report links) is the manifest's."""
    from training import modelcard
    with open(os.path.join(BUNDLE_DIR, "bundle.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(BUNDLE_DIR, "MODEL_CARD.md")) as f:
        card = f.read()
    assert card == modelcard.render(manifest, modelcard.find_reports(BUNDLE_DIR), modelcard.read_cv(BUNDLE_DIR))
    assert "**Explanations.** `model.cam.onnx`" in card and "[test](report/test/report.md)" in card
