"""Every kind of input through the real pipeline (ONNX Runtime, tests/data/tiny4.onnx) and the CLI:
odd images screened, bad ones set aside by name, DICOM photographs screened, OCT volumes skipped with
a summary, files vanishing or unreadable between listing and reading. Python 3.6, no torch.
"""
import csv
import io
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from conftest import DR_JPEG, NORMAL_BORDERED, Collect
from edge.backends import create_backend
from edge.checks import default_checks
from edge.io.decode import read_image
from edge.io.outputs import ConsoleOutput, LedgerOutput, open_output
from edge.io.sources import open_source
from edge.ledger import Ledger
from edge.pipeline import Pipeline
from synthetic import STORED, bscan, jpeg_bytes, make_dicom, png_header_only


def write(folder, name, data):
    path = os.path.join(str(folder), name)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(data)
    return path


def screen(bundle, source, outputs=()):
    collect = Collect()
    stats = Pipeline(bundle, create_backend("onnxruntime", bundle), [collect] + list(outputs),
                     checks=default_checks(bundle)).run(source)
    return stats, collect


def test_a_file_deleted_between_listing_and_reading_is_an_error_row_and_the_run_goes_on(
        tmp_path, tiny_bundle, fundus_dir):
    folder = tmp_path / "in"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write(folder, name, open(os.path.join(fundus_dir, NORMAL_BORDERED), "rb").read())
    source = open_source(str(folder))  # listed now
    gone = str(folder / "b.jpg")
    os.remove(gone)
    stats, collect = screen(tiny_bundle, source)
    assert [r.status for r in collect.results] == ["ok", "error", "ok"]
    error = collect.results[1].error
    assert error.startswith("capture: {}: cannot read file (".format(gone)) and "No such file" in error


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="running as root, which reads any file: chmod cannot make one unreadable")
def test_an_unreadable_file_is_an_error_row_and_the_run_goes_on(tmp_path, tiny_bundle, fundus_dir):
    folder = tmp_path / "in"
    for name in ("a.jpg", "b.jpg"):
        write(folder, name, open(os.path.join(fundus_dir, NORMAL_BORDERED), "rb").read())
    locked = str(folder / "a.jpg")
    os.chmod(locked, 0)
    try:
        stats, collect = screen(tiny_bundle, open_source(str(folder)))
    finally:
        os.chmod(locked, 0o644)
    assert [r.status for r in collect.results] == ["error", "ok"]
    assert collect.results[0].error.startswith("capture: {}: cannot read file (".format(locked))
    assert "Permission denied" in collect.results[0].error


def test_a_mixed_export_folder_screens_photographs_skips_oct_and_sets_bad_files_aside(
        tmp_path, tiny_bundle, fundus_dir):
    pytest.importorskip("pydicom", reason="pydicom is not installed (pip install 'pydicom>=2.3')")
    folder = tmp_path / "export"
    photo = read_image(os.path.join(fundus_dir, DR_JPEG))
    op = write(folder, "a_op.dcm", make_dicom(photo, "RGB"))
    volume = np.stack([bscan(seed=i) for i in range(3)])
    oct_path = write(folder, "b_oct.dcm", make_dicom(volume, "MONOCHROME2", modality="OPT", frames=3))
    broken = write(folder, "c_broken.dcm", make_dicom(photo, "RGB")[:400])
    rotated = write(folder, "d_rotated.jpg", jpeg_bytes(STORED[6](photo), 6))
    bomb = write(folder, "e_bomb.png", png_header_only(60000, 60000))
    dark = write(folder, "f_dark.jpg", jpeg_bytes((photo * 0.1).astype(np.uint8)))

    ledger = Ledger(str(tmp_path / "l.db"))
    run = ledger.start_run(str(folder), tiny_bundle, "onnxruntime")
    console = io.StringIO()
    csv_path = str(tmp_path / "out.csv")
    outputs = [LedgerOutput(ledger, run), open_output(csv_path, tiny_bundle.labels), ConsoleOutput(console)]
    stats, collect = screen(tiny_bundle, open_source(str(folder)), outputs)
    outputs[1].close()

    by_path = dict((r.path, r) for r in collect.results)
    assert sorted(by_path) == sorted([op, broken, rotated, bomb, dark] + ["{}#{}".format(oct_path, i)
                                                                          for i in range(3)])
    assert by_path[op].status == "ok" and by_path[rotated].status == "ok"
    for i in range(3):
        skipped = by_path["{}#{}".format(oct_path, i)]
        assert skipped.status == "skipped" and skipped.label is None
        assert skipped.error.startswith("modality: OCT B-scan (DICOM Modality OPT)")
    assert by_path[broken].status == "error" and by_path[broken].error.startswith("decode: " + broken + ": ")
    assert by_path[bomb].status == "error" and "60000x60000" in by_path[bomb].error
    assert by_path[dark].status == "ungradable" and by_path[dark].error.startswith("quality: far too dark")
    assert dict(stats.counts) == {"ok": 2, "skipped": 3, "error": 2, "ungradable": 1}

    # the rotated JPEG got the upright photograph's verdict
    upright = screen(tiny_bundle, open_source(write(folder / "ref", "upright.jpg", jpeg_bytes(photo))))[1]
    assert abs(upright.results[0].confidence - by_path[rotated].confidence) < 0.02
    assert upright.results[0].label == by_path[rotated].label

    lines = console.getvalue().splitlines()
    assert lines.count("volume {}: 3 frames, oct (DICOM OPT): 3 skipped".format(oct_path)) == 1
    assert not any(line.startswith("skipped") for line in lines)  # the volume's summary stands for them
    rows = ledger.conn.execute("SELECT path, status, file, frame_index, modality FROM results ORDER BY id").fetchall()
    assert [r for r in rows if r[2] == oct_path] == [
        ("{}#{}".format(oct_path, i), "skipped", oct_path, i, "oct") for i in range(3)]
    assert [r[4] for r in rows if r[0] in (op, rotated)] == ["fundus", "fundus"]
    ledger.close()
    with open(csv_path, newline="") as f:
        modality = dict((r["path"], r["modality"]) for r in csv.DictReader(f))
    assert modality[oct_path + "#1"] == "oct" and modality[op] == "fundus"


def test_the_cli_screens_past_a_bomb_and_keeps_opencv_quiet(tmp_path, tiny_bundle, fundus_dir, subprocess_env):
    """The run a new user tried: a 60000x60000 PNG used to stop it with an OpenCV assertion traceback."""
    folder = tmp_path / "in"
    write(folder, "a_bomb.png", png_header_only(60000, 60000))
    shutil.copyfile(os.path.join(fundus_dir, NORMAL_BORDERED), str(folder / "b_good.jpg"))
    write(folder, "c_rotated.jpg", jpeg_bytes(STORED[8](read_image(os.path.join(fundus_dir, DR_JPEG))), 8))
    write(folder, "d_truncated.png", open(os.path.join(fundus_dir, "glaucoma", "Glaucoma_001.png"), "rb").read()[:5000])
    env = dict(subprocess_env)
    env.pop("OPENCV_LOG_LEVEL", None)
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", str(folder), "--model", tiny_bundle.root,
                             "--ledger", str(tmp_path / "l.db"), "--backend", "onnxruntime"],
                            cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    assert proc.returncode == 1, out + err  # finished, some set aside
    assert "4 image(s), 2 ok, 2 error(s)" in out, out
    assert "a_bomb.png: PNG declares 60000x60000 pixels" in out
    assert "d_truncated.png: truncated PNG" in out
    assert err == "", err
    for noise in ("[ WARN", "[ERROR", "libpng", "Traceback", "imdecode_"):
        assert noise not in out
