"""One station, several bundles (edge/lanes.py, Pipeline lanes, `run --model NAME=DIR ...`) and per-volume rows.

Real ONNX Runtime sessions around tests/data/tiny4.onnx (a second bundle of modality "oct" is written in
tmp_path around the same network), real SQLite, real images. The modality guess for plain images is
edge.modality's (helper "modality" writes it); until it lands here a stand-in of the same interface is
installed in sys.modules: grey pixels -> "oct", colour -> "fundus" (``FAKE_GUESS``). One test uses the real
one and skips until it exists.
"""
import csv
import io
import os
import sqlite3
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import DR_JPEG, NORMAL_BORDERED, Collect
from edge.backends import create_backend
from edge.checks import default_checks
from edge.io.outputs import ConsoleOutput, LedgerOutput, open_output
from edge.io.sources import open_source
from edge.io.volumes import VolumeTally, negatives_of, severity
from edge.lanes import Lane, Router, RouterError
from edge.ledger import Ledger
from edge.pipeline import Pipeline
from edge.records import Frame, Result
from synthetic import bscan, make_dicom

OCT_LABELS = ["CNV", "DME", "DRUSEN", "NORMAL"]

FAKE_GUESS = '''
import collections
import numpy as np
Guess = collections.namedtuple("Guess", "modality score reason")
def guess_modality(rgb):
    """Stand-in for edge.modality.guess_modality: grey pixels are OCT, colour is a fundus photograph."""
    a = np.asarray(rgb, dtype=np.int16)
    spread = float(np.abs(a[..., 0] - a[..., 2]).mean()) if a.ndim == 3 else 0.0
    return Guess("oct" if spread < 4 else "fundus", 4.0 - spread, "channel spread {:.1f}".format(spread))
'''

LAUNCHER = '''
import runpy, sys, types
import edge
fake = types.ModuleType("edge.modality")
exec(compile(open(sys.argv.pop(1)).read(), "fake_modality", "exec"), fake.__dict__)
sys.modules["edge.modality"] = edge.modality = fake
sys.argv[0] = "retina-edge"
runpy.run_module("edge", run_name="__main__", alter_sys=True)
'''


@pytest.fixture
def fake_modality(monkeypatch):
    """edge.modality with FAKE_GUESS, counting its calls."""
    import edge
    fake = types.ModuleType("edge.modality")
    exec(FAKE_GUESS, fake.__dict__)
    calls = []
    real = fake.guess_modality
    fake.guess_modality = lambda rgb: calls.append(rgb.shape) or real(rgb)
    monkeypatch.setitem(sys.modules, "edge.modality", fake)
    monkeypatch.setattr(edge, "modality", fake, raising=False)
    return calls


@pytest.fixture
def oct_bundle(tmp_path, tiny_onnx_path, make_manifest):
    from models.bundle import write_bundle
    manifest = make_manifest()
    manifest.update(name="tiny4-oct", modality="oct", labels=OCT_LABELS)
    with open(tiny_onnx_path, "rb") as f:
        return write_bundle(str(tmp_path / "oct-bundle"), f.read(), manifest)


class Recording(object):
    """A real backend that remembers the batches it was given (their sizes)."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def infer(self, x):
        self.batches.append(len(x))
        return self.inner.infer(x)


def lanes_for(*named, **options):
    return [Lane(name, bundle, Recording(create_backend("onnxruntime", bundle, **options))) for name, bundle in named]


def write(folder, name, data):
    os.makedirs(str(folder), exist_ok=True)
    path = os.path.join(str(folder), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def png(image):
    import cv2
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def mixed_folder(folder, fundus_dir):
    """Fundus JPEGs, an OCT PNG, OP and OPT DICOMs (single- and multi-frame), one DICOM of another modality."""
    from edge.io.decode import read_image
    photo = read_image(os.path.join(fundus_dir, DR_JPEG))
    with open(os.path.join(fundus_dir, NORMAL_BORDERED), "rb") as f:
        paths = {"jpg": write(folder, "a_fundus.jpg", f.read())}
    paths["png"] = write(folder, "b_bscan.png", png(bscan(seed=3)))
    paths["op"] = write(folder, "c_op.dcm", make_dicom(photo, "RGB"))
    paths["opt1"] = write(folder, "d_opt1.dcm", make_dicom(bscan(seed=4), "MONOCHROME2", modality="OPT"))
    volume = np.stack([bscan(seed=10 + i) for i in range(4)])
    paths["vol"] = write(folder, "e_volume.dcm", make_dicom(volume, "MONOCHROME2", modality="OPT", frames=4))
    paths["xc"] = write(folder, "f_other.dcm", make_dicom(photo, "RGB", modality="XC"))
    return paths


# --- the router --------------------------------------------------------------------------------------------


def test_two_bundles_of_one_modality_or_one_name_are_refused(tiny_bundle, oct_bundle):
    with pytest.raises(RouterError, match="bundles a and b both screen fundus photographs"):
        Router(lanes_for(("a", tiny_bundle), ("b", tiny_bundle)))
    with pytest.raises(RouterError, match="two bundles are named 'a'"):
        Router(lanes_for(("a", tiny_bundle), ("a", oct_bundle)))


def test_a_fundus_only_station_never_guesses(tiny_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "edge.modality", None)  # importing it would fail
    router = Router(lanes_for(("fundus", tiny_bundle)))
    frame = Frame("x.png", image=bscan(), meta={})
    lane, verdict = router.route(frame)
    assert verdict is None and lane.name == "fundus"
    assert frame.meta == {"modality": "fundus", "model": "fundus"}


def test_an_oct_only_station_guesses_and_skips_a_photograph_naming_the_guess(oct_bundle, fundus_dir, fake_modality):
    collect = Collect()
    Pipeline(lanes=lanes_for(("oct", oct_bundle)), outputs=[collect], workers=0).run(
        open_source(os.path.join(fundus_dir, NORMAL_BORDERED)))
    (result,), (frame,) = collect.results, collect.frames
    assert result.status == "skipped" and result.model is None
    assert result.error == ("modality: fundus photograph (guessed from the image), but the model tiny4-oct screens "
                            "OCT B-scans only")
    assert frame.meta["modality_source"] == "guessed" and len(fake_modality) == 1


def test_each_frame_goes_to_the_bundle_of_its_modality_in_batches_of_one_bundle(
        tmp_path, tiny_bundle, oct_bundle, fundus_dir, fake_modality):
    pytest.importorskip("pydicom")
    paths = mixed_folder(tmp_path / "in", fundus_dir)
    lanes = lanes_for(("fundus", tiny_bundle), ("oct", oct_bundle), batch=4)
    collect = Collect()
    stats = Pipeline(lanes=lanes, outputs=[collect], workers=2).run(open_source(str(tmp_path / "in")))
    by_path = dict((r.path, (r.status, r.model, r.label in (OCT_LABELS if r.model == "oct" else tiny_bundle.labels)))
                   for r in collect.results)
    vol = paths["vol"]
    assert by_path == {paths["jpg"]: ("ok", "fundus", True), paths["png"]: ("ok", "oct", True),
                       paths["op"]: ("ok", "fundus", True), paths["opt1"]: ("ok", "oct", True),
                       vol + "#0": ("ok", "oct", True), vol + "#1": ("ok", "oct", True),
                       vol + "#2": ("ok", "oct", True), vol + "#3": ("ok", "oct", True),
                       paths["xc"]: ("skipped", None, False)}
    skipped = [r for r in collect.results if r.status == "skipped"][0]
    assert skipped.error == ("modality: xc image (DICOM Modality XC), which no loaded bundle screens (loaded: "
                             "fundus (fundus), oct (oct))")
    sources = dict((f.source_id, f.meta.get("modality_source")) for f in collect.frames)
    assert sources[paths["jpg"]] == sources[paths["png"]] == "guessed" and sources[paths["op"]] == "dicom"
    assert len(fake_modality) == 2  # only the plain images were guessed
    assert sum(lanes[0].backend.batches) == 2 and sum(lanes[1].backend.batches) == 6  # each bundle its own frames
    assert stats.counts["ok"] == 8 and stats.frames == 9
    # every ok probability is over the screening bundle's classes
    for r in collect.results:
        if r.status == "ok":
            assert sorted(r.probs) == sorted(OCT_LABELS if r.model == "oct" else tiny_bundle.labels)


def test_the_real_modality_guess_routes_a_photograph_and_a_bscan(tiny_bundle, oct_bundle, fundus_dir):
    pytest.importorskip("edge.modality", reason="edge/modality.py (helper 'modality') is not merged yet")
    from edge.io.decode import read_image
    router = Router(lanes_for(("fundus", tiny_bundle), ("oct", oct_bundle)))
    photo = Frame("p.jpg", image=read_image(os.path.join(fundus_dir, NORMAL_BORDERED)), meta={})
    scan = Frame("b.png", image=np.repeat(bscan()[..., None], 3, axis=2), meta={})
    assert router.route(photo)[0].name == "fundus" and router.route(scan)[0].name == "oct"


# --- the worst frame of a volume ------------------------------------------------------------------------------


def test_the_worst_frame_is_the_highest_referral_probability_else_the_top_finding(tiny_bundle):
    negatives = ["NORMAL"]
    ok = lambda probs, refer=None: Result("v#0", "ok", max(probs, key=probs.get), max(probs.values()), probs, "",
                                          1.0, refer, "oct")
    # no referral rule: the frame whose most probable finding is highest, whatever its label
    calm = ok({"CNV": 0.30, "DME": 0.05, "DRUSEN": 0.05, "NORMAL": 0.60})
    lesion = ok({"CNV": 0.10, "DME": 0.45, "DRUSEN": 0.40, "NORMAL": 0.05})
    assert severity(lesion, negatives) > severity(calm, negatives)
    # with a referral rule: P(refer) = 1 - P(negatives) ranks first (0.95 > 0.70 though 0.45 < 0.60)
    spread = ok({"CNV": 0.30, "DME": 0.30, "DRUSEN": 0.35, "NORMAL": 0.05}, True)
    single = ok({"CNV": 0.60, "DME": 0.05, "DRUSEN": 0.05, "NORMAL": 0.30}, True)
    assert severity(spread, negatives) > severity(single, negatives)
    tally = VolumeTally({"oct": negatives})
    meta = {"path": "v.dcm", "frames": 4, "modality": "oct"}
    results = [calm, lesion, Result("v#2", "ungradable", error="q", model="oct"), lesion]
    summaries = [tally.add(Frame("v#{}".format(i), meta=dict(meta, index=i)), r) for i, r in enumerate(results)]
    worst = summaries[-1]["worst"]
    assert worst["index"] == 1 and worst["label"] == "DME"  # a tie goes to the earlier frame
    assert summaries[-1]["model"] == "oct" and summaries[-1]["statuses"] == {"ok": 3, "ungradable": 1}
    assert negatives_of(tiny_bundle) == ["normal"]


# --- outputs ---------------------------------------------------------------------------------------------------


def test_one_bundle_keeps_its_csv_columns_and_gains_model_last(tmp_path, tiny_bundle, fundus_dir):
    path = str(tmp_path / "out.csv")
    out = open_output(path, tiny_bundle.labels)
    collect = Collect()
    Pipeline(tiny_bundle, create_backend("onnxruntime", tiny_bundle), [out, collect], workers=0).run(
        open_source(os.path.join(fundus_dir, NORMAL_BORDERED)))
    out.close()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == (["path", "label", "confidence", "refer"] + ["p_" + l for l in tiny_bundle.labels]
                       + ["status", "error", "latency_ms", "modality", "model"])
    assert rows[1][-1] == "tiny4-test" and rows[1][-2] == "fundus" and collect.results[0].model == "tiny4-test"


def test_a_mixed_station_writes_model_columns_volume_rows_and_the_ledger(
        tmp_path, tiny_bundle, oct_bundle, fundus_dir, fake_modality):
    pytest.importorskip("pydicom")
    paths = mixed_folder(tmp_path / "in", fundus_dir)
    labels = tiny_bundle.labels + OCT_LABELS
    negatives = {"fundus": negatives_of(tiny_bundle), "oct": negatives_of(oct_bundle)}
    csv_path = str(tmp_path / "out.csv")
    ledger = Ledger(str(tmp_path / "l.db"))
    run = ledger.start_run("in", [tiny_bundle, oct_bundle], "ort")
    console = io.StringIO()
    outputs = [LedgerOutput(ledger, run, negatives), open_output(csv_path, labels, {"negatives": negatives}),
               ConsoleOutput(console, show_model=True, negatives=negatives)]
    stats = Pipeline(lanes=lanes_for(("fundus", tiny_bundle), ("oct", oct_bundle)), outputs=outputs,
                     workers=1).run(open_source(str(tmp_path / "in")))
    outputs[1].close()
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    frames = [r for r in rows if r["status"] != "volume"]
    assert len(frames) == stats.frames == 9
    by_path = dict((r["path"], r) for r in frames)
    assert by_path[paths["jpg"]]["model"] == "fundus" and by_path[paths["jpg"]]["p_CNV"] == ""
    assert by_path[paths["png"]]["model"] == "oct" and by_path[paths["png"]]["p_glaucoma"] == ""
    assert by_path[paths["png"]]["p_CNV"] != "" and by_path[paths["xc"]]["model"] == ""
    (volume,) = [r for r in rows if r["status"] == "volume"]
    assert rows.index(volume) == rows.index(by_path[paths["vol"] + "#3"]) + 1  # right after its last frame
    scans = [by_path["{}#{}".format(paths["vol"], i)] for i in range(4)]
    top = [max(float(s["p_" + l]) for l in OCT_LABELS if l != "NORMAL") for s in scans]
    worst = int(np.argmax(top))
    assert volume["path"] == paths["vol"] and volume["model"] == "oct" and volume["modality"] == "oct"
    assert volume["label"] == scans[worst]["label"] and volume["p_DME"] == scans[worst]["p_DME"]
    assert volume["error"].startswith("worst: frame {} (".format(worst)) and "; 4 frames: 4 ok" in volume["error"]
    assert volume["latency_ms"] == ""
    # the ledger: every frame row names its model; one volumes row; the run counts frames only
    models = dict(ledger.conn.execute("SELECT path, model FROM results"))
    assert models[paths["op"]] == "fundus" and models[paths["vol"] + "#2"] == "oct" and models[paths["xc"]] is None
    assert ledger.conn.execute("SELECT file, frames, model, worst_index, label FROM volumes").fetchall() == [
        (paths["vol"], 4, "oct", worst, scans[worst]["label"])]
    assert ledger.conn.execute("SELECT images FROM runs").fetchone()[0] == 9
    ledger.close()
    lines = console.getvalue().splitlines()
    assert any(l.startswith("ok ") and l.endswith(paths["png"] + "  [oct]") for l in lines)
    assert any(l.startswith("volume " + paths["vol"]) and "; worst: frame {}".format(worst) in l for l in lines)


def test_a_volume_with_no_frame_screened_says_so_in_its_row(tmp_path, tiny_bundle):
    pytest.importorskip("pydicom")
    folder = tmp_path / "in"
    vol = write(folder, "v.dcm", make_dicom(np.stack([bscan(seed=i) for i in range(2)]), "MONOCHROME2",
                                            modality="OPT", frames=2))
    csv_path = str(tmp_path / "out.csv")
    out = open_output(csv_path, tiny_bundle.labels)
    Pipeline(tiny_bundle, create_backend("onnxruntime", tiny_bundle), [out], checks=default_checks(tiny_bundle),
             workers=0).run(open_source(str(folder)))
    out.close()
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["skipped", "skipped", "volume"]
    assert rows[-1]["path"] == vol and rows[-1]["label"] == "" and rows[-1]["model"] == ""
    assert rows[-1]["error"] == "no frame screened ok; 2 frames: 2 skipped"


# --- the command line ---------------------------------------------------------------------------------------


def run_cli(tmp_path, env, *args):
    launcher, fake = tmp_path / "launch.py", tmp_path / "fake_modality.py"
    launcher.write_text(LAUNCHER)
    fake.write_text(FAKE_GUESS)
    proc = subprocess.Popen([sys.executable, str(launcher), str(fake), "run"] + list(args), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_the_cli_screens_a_mixed_folder_with_two_bundles(tmp_path, tiny_bundle, oct_bundle, fundus_dir,
                                                         subprocess_env):
    pytest.importorskip("pydicom")
    paths = mixed_folder(tmp_path / "in", fundus_dir)
    csv_path, db = str(tmp_path / "out.csv"), str(tmp_path / "l.db")
    code, out, err = run_cli(tmp_path, subprocess_env, str(tmp_path / "in"), "--model", "fundus=" + tiny_bundle.root,
                             "--model", oct_bundle.root, "--results", csv_path, "--ledger", db,
                             "--backend", "onnxruntime")
    assert code == 0, err
    assert "models fundus = fundus tiny4-test" in out and "tiny4-oct = oct tiny4-oct" in out
    assert "9 image(s), 8 ok, 0 error(s), 1 skipped" in out  # the volume row is not an image
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    got = sorted((os.path.basename(r["path"]), r["status"], r["model"]) for r in rows)
    assert got == sorted([("a_fundus.jpg", "ok", "fundus"), ("b_bscan.png", "ok", "tiny4-oct"),
                          ("c_op.dcm", "ok", "fundus"), ("d_opt1.dcm", "ok", "tiny4-oct")]
                         + [("e_volume.dcm#{}".format(i), "ok", "tiny4-oct") for i in range(4)]
                         + [("e_volume.dcm", "volume", "tiny4-oct"), ("f_other.dcm", "skipped", "")])
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*), count(model) FROM results").fetchone() == (9, 8)
        assert conn.execute("SELECT file, model FROM volumes").fetchall() == [(paths["vol"], "tiny4-oct")]
        assert conn.execute("SELECT bundle_name, images FROM runs").fetchone() == ("tiny4-test, tiny4-oct", 9)
    finally:
        conn.close()


def test_the_cli_refuses_two_bundles_of_one_modality_and_reads_a_folder_of_bundles(
        tmp_path, tiny_bundle, oct_bundle, subprocess_env):
    code, out, err = run_cli(tmp_path, subprocess_env, tiny_bundle.root, "--model", "a=" + tiny_bundle.root,
                             "--model", "b=" + tiny_bundle.root, "--ledger", str(tmp_path / "l.db"))
    assert code == 2 and out == ""
    assert err.strip() == ("retina-edge run: error: bundles a and b both screen fundus photographs: which one screens "
                           "a frame would be a guess; load one bundle per modality")
    from edge.commands.bundles import model_specs
    # tmp_path holds bundle/ (tiny_bundle) and oct-bundle/: a folder of bundles
    assert model_specs([str(tmp_path)]) == [(None, tiny_bundle.root), (None, oct_bundle.root)]
    assert model_specs(["x=" + tiny_bundle.root, oct_bundle.root]) == [("x", tiny_bundle.root),
                                                                       (None, oct_bundle.root)]
