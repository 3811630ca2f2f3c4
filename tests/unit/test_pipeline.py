"""edge/io (sources, outputs) + pipeline + ledger on real images and bad files (Python 3.6, no torch).

The network is tests/data/tiny4.onnx run by ONNX Runtime: a real model, four outputs.
"""
import csv
import io
import json
import os
import sqlite3

import numpy as np
import pytest

from conftest import LABELS, Collect
from edge.backends import BackendError, create_backend
from edge.io.decode import decode_image
from edge.io.outputs import ConsoleOutput, LedgerOutput, OutputError, open_output
from edge.io.sources import SourceError, list_images, open_source
from edge.ledger import Ledger
from edge.pipeline import Pipeline
from edge.profiling.profiler import STAGES
from edge.records import Frame, Result

CSV_HEADER = ["path", "label", "confidence", "refer", "p_cataract", "p_diabetic_retinopathy", "p_glaucoma", "p_normal",
              "status", "error", "latency_ms", "modality", "model"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# --- sources ------------------------------------------------------------------------------------------

def test_folder_source_lists_images_recursively_sorted_and_skips_others(screen_folder):
    folder, good, bad = screen_folder
    with open(os.path.join(folder, "readme.txt"), "w") as f:
        f.write("not an image\n")
    with open(os.path.join(folder, ".hidden.jpg"), "wb") as f:
        f.write(b"x")
    os.makedirs(os.path.join(folder, ".thumbs"))
    with open(os.path.join(folder, ".thumbs", "t.jpg"), "wb") as f:
        f.write(b"x")
    source = open_source(folder)
    assert len(source) == 6 and source.count() == 6
    assert sorted(source.paths) == sorted(good + bad)
    assert list_images(folder) == source.paths
    # files of the top folder come sorted, then those of the subfolder
    top = [p for p in source.paths if os.path.dirname(p) == folder]
    assert top == sorted(top)
    assert source.paths[-1].endswith(os.path.join("sub", "c_glaucoma.png"))


def test_file_frames_carry_bytes_and_identity_and_decoding_is_separate(screen_folder):
    folder, good, bad = screen_folder
    frames = dict((f.source_id, f) for f in open_source(folder))
    assert set(frames) == set(good + bad)
    for path in good + bad:
        frame = frames[path]
        assert frame.error == "" and frame.image is None  # sources read; the pipeline decodes
        assert frame.meta["path"] == path and frame.meta["size_bytes"] == os.path.getsize(path)
        assert frame.meta["mtime_ns"] == os.stat(path).st_mtime_ns
    for path in good:
        image = decode_image(frames[path].data, path)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_an_unreadable_file_is_an_error_frame_naming_it(tmp_path, screen_folder):
    folder, good, _ = screen_folder
    source = open_source(folder)
    os.remove(good[0])  # deleted between listing and reading
    frames = dict((f.source_id, f) for f in source)
    assert frames[good[0]].data is None
    assert frames[good[0]].error.startswith("capture: {}: cannot read file".format(good[0]))


def test_truncated_jpeg_is_refused(tiny_bundle, screen_folder):
    """A JPEG cut in half must be an error, not a half-grey image screened as if it were whole."""
    folder, _, _ = screen_folder
    path = os.path.join(folder, "truncated.jpg")
    collect = Collect()
    Pipeline(tiny_bundle, create_backend("onnxruntime", tiny_bundle), [collect]).run(open_source(path))
    (result,) = collect.results
    assert result.status == "error" and result.error.startswith("decode: " + path)
    assert "truncated JPEG" in result.error


def test_single_file_source_and_refusals(tmp_path, screen_folder):
    folder, good, _ = screen_folder
    source = open_source(good[0])
    assert len(source) == 1 and [f.source_id for f in source] == [good[0]]
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(empty))
    with pytest.raises(SourceError, match="unknown input scheme 'ftp://'"):
        open_source("ftp://host/x.jpg")


# --- backend -------------------------------------------------------------------------------------------

def test_onnxruntime_backend_runs_the_bundle(tiny_bundle):
    backend = create_backend("onnxruntime", tiny_bundle)
    logits = backend.infer(np.zeros((2, 3, 32, 32), np.float32))
    assert logits.shape == (2, 4) and logits.dtype == np.float32
    assert "onnxruntime" in backend.describe() and "CPUExecutionProvider" in backend.describe()
    assert backend.precision == "fp32" and backend.make_preprocessor().name == "opencv"
    with pytest.raises(BackendError, match="unknown backend 'tflite'"):
        create_backend("tflite", tiny_bundle)
    with pytest.raises(BackendError, match="has no int8 variant"):
        create_backend("onnxruntime", tiny_bundle, precision="int8")


def test_backend_refuses_a_manifest_input_name_the_model_lacks(tiny_bundle):
    tiny_bundle.manifest["input"]["name"] = "pixels"
    with pytest.raises(BackendError, match="'pixels' is not in the model's inputs"):
        create_backend("onnxruntime", tiny_bundle)


def test_backend_refuses_a_model_whose_outputs_do_not_match_the_labels(tiny_bundle):
    tiny_bundle.manifest["labels"] = LABELS + ["retinal_detachment"]
    with pytest.raises(BackendError, match="gives 4 outputs but the manifest has 5 labels"):
        create_backend("onnxruntime", tiny_bundle)


# --- pipeline, sinks, ledger ----------------------------------------------------------------------------

def test_run_screens_good_images_and_sets_bad_ones_aside(tmp_path, tiny_bundle, screen_folder):
    folder, good, bad = screen_folder
    ledger_path = str(tmp_path / "ledger" / "l.db")
    csv_path = str(tmp_path / "out" / "results.csv")
    console = io.StringIO()
    ledger = Ledger(ledger_path)
    backend = create_backend("onnxruntime", tiny_bundle)
    run_id = ledger.start_run(folder, tiny_bundle, backend.describe())
    collect = Collect()
    outputs = [LedgerOutput(ledger, run_id), open_output(csv_path, tiny_bundle.labels), ConsoleOutput(console),
               collect]
    pipeline = Pipeline(tiny_bundle, backend, outputs)
    stats = pipeline.run(open_source(folder))
    for output in outputs:
        output.close()
    ledger.finish_run(run_id, stats.as_dict())
    ledger.close()
    results = collect.results

    assert [r.path for r in results] == open_source(folder).paths
    assert (stats.frames, stats.counts["ok"], stats.counts["error"], stats.interrupted) == (6, 3, 3, False)
    assert [f.source_id for f in collect.frames] == [r.path for r in results]  # outputs get the frame too
    assert all(f.image is not None for f, r in zip(collect.frames, results) if r.status == "ok")
    by_path = dict((r.path, r) for r in results)
    for path in good:
        r = by_path[path]
        assert r.status == "ok" and r.error == ""
        assert r.label in LABELS
        assert sorted(r.probs) == sorted(LABELS)
        assert abs(sum(r.probs.values()) - 1.0) < 1e-6
        assert r.confidence == max(r.probs.values())
        assert r.probs[r.label] == r.confidence
        assert r.latency_ms > 0
    for path in bad:
        r = by_path[path]
        assert r.status == "error", "{} was screened as if readable: {}".format(path, r)
        assert r.label is None and r.probs is None and r.latency_ms is None
        assert path in r.error and r.error.startswith("decode: ")

    # the CSV: fixed columns, one row per file, probabilities for ok rows only
    rows = read_csv(csv_path)
    assert rows[0] == CSV_HEADER
    assert sorted(row[0] for row in rows[1:]) == sorted(good + bad)
    for row in rows[1:]:
        record = dict(zip(CSV_HEADER, row))
        if record["path"] in good:
            assert record["status"] == "ok" and record["error"] == ""
            probs = [float(record["p_" + lab]) for lab in LABELS]
            assert abs(sum(probs) - 1.0) < 1e-5
            assert record["label"] == LABELS[int(np.argmax(probs))]
            assert float(record["latency_ms"]) > 0
        else:
            assert record["status"] == "error", record
            assert record["path"] in record["error"]
            assert record["label"] == record["confidence"] == record["latency_ms"] == ""
            assert all(record["p_" + lab] == "" for lab in LABELS)

    # the ledger: WAL, one row per file, run counters
    conn = sqlite3.connect(ledger_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        db_rows = conn.execute("SELECT path, status, label, probs, error FROM results WHERE run_id = ?",
                               (run_id,)).fetchall()
        images, errors, finished, bundle_sha = conn.execute(
            "SELECT images, errors, finished_at, bundle_sha256 FROM runs WHERE id = ?", (run_id,)).fetchone()
    finally:
        conn.close()
    assert sorted(r[0] for r in db_rows) == sorted(good + bad)
    assert (images, errors) == (6, 3)
    assert finished
    assert bundle_sha == tiny_bundle.manifest["model"]["sha256"]
    for path, status, label, probs, error in db_rows:
        if path in good:
            assert status == "ok" and label in LABELS
            assert abs(sum(json.loads(probs).values()) - 1.0) < 1e-6
        else:
            assert status == "error" and probs is None and path in error

    # the console: one line per file
    lines = console.getvalue().splitlines()
    assert len(lines) == 6
    assert sum(line.startswith("ok ") for line in lines) == 3
    assert sum(line.startswith("error ") for line in lines) == 3

    # the profiler saw every frame, decoding for all, and the network only for the good ones
    summary = pipeline.profiler.summary()
    assert summary["capture"]["n"] == summary["output"]["n"] == summary["total"]["n"] == 6
    assert summary["decode"]["n"] == 6
    assert summary["pre-process"]["n"] == summary["network"]["n"] == summary["post-process"]["n"] == 3
    assert pipeline.profiler.frames == 6


class _FlakyBackend(object):
    """Raises on the first call, then returns fixed logits; feeds from the host reference."""

    def __init__(self, width=4):
        self.calls = 0
        self.width = width

    def make_preprocessor(self):
        from edge.preprocess import HostPreprocessor
        from conftest import _VALID_MANIFEST
        return HostPreprocessor(_VALID_MANIFEST["preprocess"])

    def last_times_ms(self):
        return {}

    def infer(self, batch):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("device lost")
        return np.arange(self.width, dtype=np.float32)[None]


def _frames(n):
    img = np.zeros((64, 64, 3), np.uint8)
    img[8:56, 8:56] = 150
    return [Frame("frame{}.png".format(i), img) for i in range(n)]


def run_frames(pipeline, frames):
    collect = Collect()
    pipeline.outputs.append(collect)
    pipeline.run(frames)
    return collect.results


def test_a_network_failure_names_the_stage_and_the_run_goes_on(tiny_bundle):
    results = run_frames(Pipeline(tiny_bundle, _FlakyBackend()), _frames(3))
    assert [r.status for r in results] == ["error", "ok", "ok"]
    assert results[0].error == "network: frame0.png: RuntimeError: device lost"
    expected = np.exp(np.arange(4.0)) / np.exp(np.arange(4.0)).sum()
    np.testing.assert_allclose([results[1].probs[lab] for lab in LABELS], expected, rtol=1e-6)
    assert results[1].label == "normal"


def test_a_preprocess_failure_names_the_stage(tiny_bundle):
    bad = Frame("odd.png", np.zeros((4, 4), np.uint8))  # 2-D: not an RGB image
    result = Pipeline(tiny_bundle, _FlakyBackend()).process(bad)
    assert result.status == "error"
    assert result.error.startswith("pre-process: odd.png: ")


def test_the_quality_gate_is_timed_as_pre_process(tiny_bundle):
    now = [0.0]

    def clock():
        return now[0]

    def slow_check(frame, bundle):  # a gate that takes 7 ms of the (fake) clock and passes the frame
        now[0] += 0.007
        return None

    pipeline = Pipeline(tiny_bundle, _FlakyBackend(), checks=[slow_check], clock=clock)
    frame = _frames(1)[0]
    pipeline.process(frame)
    assert frame.times_ms["pre-process"] == pytest.approx(7.0)
    assert "check" not in frame.times_ms  # only the fixed stage names


def test_temperature_softens_probabilities(tiny_bundle):
    cold = run_frames(Pipeline(tiny_bundle, _FlakyBackend()), _frames(2))[1]
    tiny_bundle.manifest["postprocess"]["temperature"] = 4.0
    warm = run_frames(Pipeline(tiny_bundle, _FlakyBackend()), _frames(2))[1]
    assert warm.label == cold.label
    assert warm.confidence < cold.confidence
    expected = np.exp(np.arange(4.0) / 4) / np.exp(np.arange(4.0) / 4).sum()
    np.testing.assert_allclose([warm.probs[lab] for lab in LABELS], expected, rtol=1e-6)


def test_logits_not_matching_the_labels_are_an_error_row_not_a_crash(tmp_path, tiny_bundle):
    csv_path = str(tmp_path / "r.csv")
    sink = open_output(csv_path, tiny_bundle.labels)
    results = run_frames(Pipeline(tiny_bundle, _FlakyBackend(width=3), [sink]), _frames(3))
    sink.close()
    assert [r.status for r in results] == ["error", "error", "error"]
    assert len(read_csv(csv_path)) == 4


def test_csv_rows_are_on_disk_before_the_sink_is_closed(tmp_path):
    path = str(tmp_path / "deep" / "er" / "r.csv")
    sink = open_output(path, LABELS)
    probs = dict((lab, 0.25) for lab in LABELS)
    sink.write(Frame("a.jpg", meta={"modality": "fundus"}), Result("a.jpg", "ok", "normal", 0.25, probs, "", 1.5))
    sink.write(Frame("b.jpg"), Result("b.jpg", "error", error="decode: b.jpg: empty file (0 bytes)"))
    rows = read_csv(path)  # still open: the rows must already be flushed
    sink.close()
    assert rows == [CSV_HEADER,
                    ["a.jpg", "normal", "0.250000", "", "0.250000", "0.250000", "0.250000", "0.250000", "ok", "",
                     "1.500", "fundus", ""],
                    ["b.jpg", "", "", "", "", "", "", "", "error", "decode: b.jpg: empty file (0 bytes)", "", "", ""]]
    # a second run appends under the same header; a file with other columns is refused, not mixed
    again = open_output(path, LABELS)
    again.write(Frame("c.jpg"), Result("c.jpg", "error", error="x"))
    again.close()
    assert [r[0] for r in read_csv(path)] == ["path", "a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(OutputError, match="exists with other columns"):
        open_output(path, LABELS[:3])


def test_console_sink_errors_only():
    out = io.StringIO()
    sink = ConsoleOutput(out, errors_only=True)
    sink.write(Frame("a.jpg"), Result("a.jpg", "ok", "normal", 0.9, {"normal": 0.9}, "", 1.0))
    sink.write(Frame("b.jpg"), Result("b.jpg", "error", error="capture: b.jpg: broken"))
    sink.write(Frame("c.png"), Result("c.png", "ungradable", error="too dark"))
    assert out.getvalue() == "error  capture: b.jpg: broken\nungradable c.png: too dark\n"


def test_ledger_keeps_runs_apart_and_rows_committed_as_written(tmp_path, tiny_bundle):
    path = str(tmp_path / "l.db")
    ledger = Ledger(path)
    first = ledger.start_run("/data/a", tiny_bundle, "fake")
    second = ledger.start_run("/data/b", tiny_bundle, "fake")
    assert first != second
    ledger.add_result(first, Result("x.jpg", "ok", "normal", 1.0, {"normal": 1.0}, "", 2.0))
    ledger.add_result(second, Result("y.jpg", "error", None, None, None, "capture: y.jpg: bad", None))
    ledger.add_result(second, Result("z.jpg", "ok", "glaucoma", 0.7, {"glaucoma": 0.7}, "", 2.0))
    # another connection sees the rows although the run is not finished (committed per row)
    other = sqlite3.connect(path)
    try:
        runs = other.execute("SELECT id, images, errors, finished_at FROM runs ORDER BY id").fetchall()
        assert runs == [(first, 1, 0, None), (second, 2, 1, None)]
        assert other.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3
    finally:
        other.close()
    ledger.finish_run(second, {"images": 2})
    ledger.close()
    conn = sqlite3.connect(path)
    try:
        finished, summary = conn.execute("SELECT finished_at, summary FROM runs WHERE id = ?", (second,)).fetchone()
        assert conn.execute("SELECT finished_at FROM runs WHERE id = ?", (first,)).fetchone()[0] is None
    finally:
        conn.close()
    assert finished.endswith("Z") and json.loads(summary) == {"images": 2}


def test_stage_names_are_the_fixed_set():
    assert STAGES == ("capture", "decode", "pre-process", "host-to-device", "network", "device-to-host",
                      "post-process", "output", "total")
