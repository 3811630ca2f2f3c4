"""The bundle's calibration and decision on the device (Python 3.6, no torch): the optional postprocess
fields are validated, the temperature and the decision rule are applied by classify, the referral
reaches every output (CSV, JSONL, ledger, console), and bundles without the fields run as before."""
import csv
import io
import json
import os
import sqlite3

import numpy as np
import pytest

from conftest import GLAUCOMA_PNG, LABELS, NORMAL_BORDERED, DR_JPEG, CATARACT_JPG, Collect
from edge.backends import create_backend
from edge.io.outputs import ConsoleOutput, LedgerOutput, OutputError, open_output
from edge.io.sources import ImageFiles
from edge.io.uri import parse_input
from edge.ledger import Ledger
from edge.pipeline import Pipeline
from edge.postprocess import Rule, classify, softmax
from edge.records import Frame, Result
from models.bundle import BundleError, load_bundle, validate_manifest, write_bundle

IMAGES = [NORMAL_BORDERED, DR_JPEG, GLAUCOMA_PNG, CATARACT_JPG]


def with_postprocess(manifest, **fields):
    manifest["postprocess"].update(fields)
    return manifest


@pytest.mark.parametrize("fields,named,says", [
    ({"decision": {"rule": "logit_offsets", "offsets": {"glaucoma": 1.0, "amd": 0.5}}},
     "postprocess.decision.offsets", "'amd', not one of the labels"),
    ({"decision": {"rule": "logit_offsets", "offsets": {"glaucoma": float("nan")}}},
     "postprocess.decision.offsets.glaucoma", "finite number"),
    ({"decision": {"rule": "logit_offsets", "offsets": {"glaucoma": True}}},
     "postprocess.decision.offsets.glaucoma", "finite number"),
    ({"decision": {"rule": "thresholds", "offsets": {}}}, "postprocess.decision.rule", "must be one of"),
    ({"decision": [1, 2]}, "postprocess.decision", "must be an object"),
    ({"referral": {"negative": ["normal"], "threshold": 1.5}}, "postprocess.referral.threshold", "in [0, 1]"),
    ({"referral": {"negative": ["normal"], "threshold": -0.1}}, "postprocess.referral.threshold", "in [0, 1]"),
    ({"referral": {"negative": ["normal"]}}, "postprocess.referral.threshold", "in [0, 1], not None"),
    ({"referral": {"negative": ["healthy"], "threshold": 0.2}}, "postprocess.referral.negative",
     "'healthy', not one of the labels"),
    ({"referral": {"negative": LABELS, "threshold": 0.2}}, "postprocess.referral.negative", "nothing could be"),
    ({"referral": {"negative": [], "threshold": 0.2}}, "postprocess.referral.negative", "non-empty list"),
    ({"calibration": "yes"}, "postprocess.calibration", "must be an object"),
])
def test_bad_decision_fields_are_refused_naming_the_field(make_manifest, fields, named, says):
    manifest = with_postprocess(make_manifest(), **fields)
    manifest["model"].update(file="model.onnx", sha256="0" * 64)
    with pytest.raises(BundleError) as info:
        validate_manifest(manifest, where="b/bundle.json")
    message = str(info.value)
    assert message.startswith("b/bundle.json: field '{}'".format(named)) and says in message, message


def test_a_bundle_without_the_fields_labels_by_argmax_and_gives_no_referral(tiny_bundle):
    assert tiny_bundle.decision_offsets is None and tiny_bundle.referral is None
    logits = np.array([[0.1, 0.3, 2.0, 1.9], [3.0, 0.0, 0.0, 0.0]])
    classes = classify(logits, tiny_bundle)
    assert [c.label for c in classes] == ["glaucoma", "cataract"]
    assert [c.refer for c in classes] == [None, None]


def test_the_temperature_is_applied_and_the_offsets_move_only_the_label():
    rule = Rule(LABELS, temperature=2.0, offsets={"normal": 0.2}, negative=["normal"], threshold=0.5)
    logits = np.array([[0.0, 0.0, 1.0, 0.7]])  # calibrated: glaucoma 0.5, normal 0.35 apart by 0.15
    probs = rule.probabilities(logits)
    assert np.allclose(probs, softmax(logits / 2.0))
    assert LABELS[int(rule.decide(logits)[0])] == "normal"  # 0.35 + 0.2 > 0.5
    assert rule.refer_scores(probs)[0] == pytest.approx(1 - probs[0, 3])
    assert rule.refers(probs).tolist() == [bool(1 - probs[0, 3] >= 0.5)]


def _bundle(tmp_path, tiny_onnx_path, make_manifest, name, **fields):
    with open(tiny_onnx_path, "rb") as f:
        data = f.read()
    return write_bundle(str(tmp_path / name), data, with_postprocess(make_manifest(), **fields))


def _screen(bundle, fundus_dir, outputs=()):
    paths = [os.path.join(fundus_dir, p) for p in IMAGES]
    collect = Collect()
    Pipeline(bundle, create_backend("onnxruntime", bundle), [collect] + list(outputs)).run(
        ImageFiles(parse_input(fundus_dir), paths=paths))
    assert [r.status for r in collect.results] == ["ok"] * len(paths)
    return collect.results


def test_a_bundle_with_offsets_changes_a_borderline_label_on_the_device(tmp_path, tiny_onnx_path, make_manifest,
                                                                        fundus_dir):
    plain = _screen(_bundle(tmp_path, tiny_onnx_path, make_manifest, "plain"), fundus_dir)
    first = plain[0]
    ranked = sorted(LABELS, key=lambda l: -first.probs[l])
    top, runner_up = ranked[0], ranked[1]
    # the log-probability gap is the logit gap: an offset just above it turns the runner-up into the label
    gap = float(np.log(first.probs[top]) - np.log(first.probs[runner_up]))
    offsets = {runner_up: gap + 1e-3}
    ruled = _screen(_bundle(tmp_path, tiny_onnx_path, make_manifest, "ruled",
                            decision={"rule": "logit_offsets", "offsets": offsets}), fundus_dir)
    assert first.label == top and ruled[0].label == runner_up
    assert ruled[0].probs == pytest.approx(first.probs)  # the probabilities stay the calibrated ones
    assert ruled[0].confidence == pytest.approx(first.probs[runner_up])
    for before, after in zip(plain[1:], ruled[1:]):  # the rule is argmax(log p + offset), image by image
        expected = max(LABELS, key=lambda l: np.log(before.probs[l]) + offsets.get(l, 0.0))
        assert after.label == expected


def test_refer_reaches_csv_jsonl_ledger_and_console(tmp_path, tiny_onnx_path, make_manifest, fundus_dir):
    plain = _screen(_bundle(tmp_path, tiny_onnx_path, make_manifest, "plain"), fundus_dir)
    scores = sorted(1 - r.probs["normal"] for r in plain)
    threshold = (scores[1] + scores[2]) / 2  # two images on each side
    bundle = _bundle(tmp_path, tiny_onnx_path, make_manifest, "referral", temperature=1.0,
                     referral={"negative": ["normal"], "threshold": threshold})
    csv_path, jsonl_path, db = str(tmp_path / "r.csv"), str(tmp_path / "r.jsonl"), str(tmp_path / "l.db")
    ledger = Ledger(db)
    run = ledger.start_run(tmp_path.as_posix(), bundle, "onnxruntime")
    console = io.StringIO()
    outputs = [open_output(csv_path, bundle.labels), open_output(jsonl_path, bundle.labels),
               LedgerOutput(ledger, run), ConsoleOutput(console)]
    results = _screen(bundle, fundus_dir, outputs)
    for out in outputs:
        out.close()
    ledger.close()
    expected = [1 - r.probs["normal"] >= threshold for r in plain]
    assert [r.refer for r in results] == expected and sorted(expected) == [False, False, True, True]
    with open(csv_path, newline="") as f:
        assert [row["refer"] for row in csv.DictReader(f)] == ["yes" if e else "no" for e in expected]
    with open(jsonl_path) as f:
        assert [json.loads(line)["refer"] for line in f] == expected
    conn = sqlite3.connect(db)
    try:
        assert [r[0] for r in conn.execute("SELECT refer FROM results ORDER BY id")] == [int(e) for e in expected]
    finally:
        conn.close()
    lines = console.getvalue().splitlines()
    assert ["REFER" in line for line in lines] == expected


def test_an_old_bundle_leaves_refer_empty_everywhere(tmp_path, tiny_bundle, fundus_dir):
    csv_path, jsonl_path = str(tmp_path / "r.csv"), str(tmp_path / "r.jsonl")
    console = io.StringIO()
    outputs = [open_output(csv_path, tiny_bundle.labels), open_output(jsonl_path, tiny_bundle.labels),
               ConsoleOutput(console)]
    results = _screen(tiny_bundle, fundus_dir, outputs)
    for out in outputs:
        out.close()
    assert [r.refer for r in results] == [None] * len(IMAGES)
    with open(csv_path, newline="") as f:
        assert [row["refer"] for row in csv.DictReader(f)] == [""] * len(IMAGES)
    with open(jsonl_path) as f:
        assert [json.loads(line)["refer"] for line in f] == [None] * len(IMAGES)
    assert "REFER" not in console.getvalue()


def test_console_marks_referral_and_keeps_the_old_line_without_one():
    out = io.StringIO()
    sink = ConsoleOutput(out)
    probs = {"glaucoma": 0.6, "normal": 0.4}
    sink.write(Frame("a.jpg"), Result("a.jpg", "ok", "glaucoma", 0.6, probs, "", 1.0, True))
    sink.write(Frame("b.jpg"), Result("b.jpg", "ok", "normal", 0.4, probs, "", 1.0, False))
    sink.write(Frame("c.jpg"), Result("c.jpg", "ok", "normal", 0.4, probs, "", 1.0))
    assert out.getvalue().splitlines() == ["ok     glaucoma                60.0%  REFER  a.jpg",
                                           "ok     normal                  40.0%         b.jpg",
                                           "ok     normal                  40.0%  c.jpg"]


# The header retina-edge writes now, and the one it wrote before the referral column (commit 8e5f3bf).
CSV_HEADER = (["path", "label", "confidence", "refer"] + ["p_" + l for l in LABELS]
              + ["status", "error", "latency_ms", "modality", "model"])
OLD_HEADER = (["path", "label", "confidence"] + ["p_" + l for l in LABELS]
              + ["status", "error", "latency_ms", "modality"])


def test_a_results_csv_from_an_older_retina_edge_is_upgraded_in_place_and_appended_to(tmp_path):
    """A technician updates retina-edge and keeps appending to last month's results file."""
    path = str(tmp_path / "results.csv")
    old_rows = [["a.jpg", "normal", "0.9"] + ["0.25"] * 4 + ["ok", "", "1.0", "fundus"],
                ["b.jpg", "", ""] + [""] * 4 + ["error", "decode: b.jpg: empty file (0 bytes)", "", ""]]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([OLD_HEADER] + old_rows)
    sink = open_output(path, LABELS)
    assert sink.note == "{}: written by an older retina-edge; added the column(s) refer, model (empty in its 2 " \
                        "row(s))".format(path)
    sink.write(Frame("c.jpg"), Result("c.jpg", "error", error="x"))
    sink.close()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_HEADER
    column = dict((name, i) for i, name in enumerate(CSV_HEADER))
    for old, new in zip(old_rows, rows[1:3]):  # every old value under its own column, the new ones empty
        assert dict((name, new[column[name]]) for name in OLD_HEADER) == dict(zip(OLD_HEADER, old))
        assert new[column["refer"]] == new[column["model"]] == ""
    assert rows[3][0] == "c.jpg" and len(rows) == 4
    assert not os.path.exists(path + ".upgrading")
    again = open_output(path, LABELS)  # now current: appended to as it is
    assert again.note is None
    again.close()


def test_an_older_results_csv_for_other_classes_is_refused_and_left_alone(tmp_path):
    path = str(tmp_path / "results.csv")
    header = [c for c in OLD_HEADER if c != "p_" + LABELS[0]]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, ["a.jpg", "normal", "0.9"] + ["0.3"] * 3 + ["ok", "", "1.0", ""]])
    with open(path, "rb") as f:
        before = f.read()
    with pytest.raises(OutputError) as info:
        open_output(path, LABELS)
    message = str(info.value)
    assert message.startswith(path + ": exists with other columns (lacks refer, p_{}, model)".format(LABELS[0]))
    assert "give a new results file or move this one away" in message
    with open(path, "rb") as f:
        assert f.read() == before  # nothing appended, nothing lost


def test_a_calibrated_bundle_round_trips_its_fields(tmp_path, tiny_onnx_path, make_manifest):
    decision = {"rule": "logit_offsets", "offsets": {"glaucoma": 2.0, "cataract": 0.5}}
    referral = {"negative": ["normal"], "threshold": 0.23, "score": "1 - P(normal)", "val": {"sensitivity": 0.95}}
    _bundle(tmp_path, tiny_onnx_path, make_manifest, "b", temperature=0.8, decision=decision, referral=referral,
            calibration={"command": "retina-train calibrate"})
    bundle = load_bundle(str(tmp_path / "b"))
    assert bundle.temperature == 0.8 and bundle.decision_offsets == decision["offsets"]
    assert bundle.referral == referral
    rule = Rule.from_bundle(bundle)
    assert rule.threshold == 0.23 and rule.negative == [3] and rule.offsets.tolist() == [0.5, 0.0, 2.0, 0.0]
