"""The screening station's outputs: annotated images, display://0, and --quarantine (Python 3.6, no torch).

The display cannot open a window here (pip's opencv-python-headless has no GUI, and there is no X
server): its refusals are tested for real, a GUI build is stood in for by replacing
``capture.build_information``; the window itself was checked by hand under Xvfb (see the README).
"""
import errno
import os
import sqlite3
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import LABELS, write_bad_files
from edge.io import capture
from edge.io.annotate import STATUS_COLOURS, AnnotatedImages, annotate, headline, mirrored_name
from edge.io.outputs import OutputDisabled, OutputError, open_output
from edge.io.uri import parse_output
from edge.io.quarantine import Quarantine, move_without_overwriting
from edge.io.sources import WRITTEN_MARKER
from edge.records import Frame, Result

PROBS = {"cataract": 0.05, "diabetic_retinopathy": 0.1, "glaucoma": 0.8, "normal": 0.05}
OK = Result("/in/a.jpg", "ok", "glaucoma", 0.8, PROBS, "", 1.0)


def fundus(h=300, w=400):
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 2 - 10, (200, 90, 40), -1)
    return img


def jpeg_file(path, img=None):
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    cv2.imwrite(path, img if img is not None else fundus())
    return path


# --- annotated images --------------------------------------------------------------------------------------

def test_mirrored_names_keep_the_inputs_relative_path():
    def name(path=None, root=None, index=None, source_id=None):
        meta = {"path": path} if path else {}
        if index is not None:
            meta["index"] = index
        return mirrored_name(Frame(source_id or path, meta=meta), root)
    assert name("/in/sub/a.jpg", "/in") == os.path.join("sub", "a.jpg")
    assert name("/in/b.PNG", "/in") == "b.PNG"
    assert name("/elsewhere/c.jpg", "/in") == "c.jpg"
    assert name("/in2/c.jpg", "/in") == "c.jpg"  # a sibling folder is not under /in
    assert name("/in/oct.dcm", "/in", index=7) == "oct.dcm_frame000007.jpg"
    assert name("/in/clip.mp4", "/in", index=12) == "clip.mp4_frame000012.jpg"
    assert name(source_id="csi://0#41", index=41) == "csi_0_frame000041.jpg"
    # a camera's frame numbers restart with every run: its names carry the capture time (UTC, to the ms)
    shot = Frame("csi://0#41", meta={"index": 41, "captured_at": 1795305600.25})
    assert mirrored_name(shot) == "csi_0_20261122-000000250_frame000041.jpg"


def test_annotate_draws_the_status_banner_the_probabilities_and_the_region(tmp_path):
    rgb = fundus()
    ok = annotate(rgb, OK, LABELS)
    assert ok.shape == (480, 640, 3) and ok.dtype == np.uint8  # small frames are enlarged for legible text
    assert tuple(int(v) for v in ok[2, 600]) == STATUS_COLOURS["ok"]  # the banner, in BGR
    bad = annotate(rgb, Result("/in/a.jpg", "ungradable", error="/in/a.jpg: too dark"), LABELS)
    assert tuple(int(v) for v in bad[2, 600]) == STATUS_COLOURS["ungradable"]
    assert not np.array_equal(ok[-100:, :320], bad[-100:, :320])  # bars only where there are probabilities
    big = annotate(np.zeros((3000, 4000, 3), np.uint8), OK, LABELS, max_side=1024)
    assert big.shape == (768, 1024, 3)


def test_the_banner_says_refer_only_where_the_bundle_referred():
    assert headline(OK) == "glaucoma 80.0%"  # no referral point: nothing said
    assert headline(OK._replace(refer=True)) == "REFER  glaucoma 80.0%"
    assert headline(OK._replace(refer=False)) == "glaucoma 80.0%"
    refer, plain = (annotate(fundus(), OK._replace(refer=r), LABELS) for r in (True, False))
    assert not np.array_equal(refer[:30], plain[:30])


def test_annotated_images_are_written_atomically_mirroring_the_input(tmp_path):
    out = open_output(str(tmp_path / "out") + "/", LABELS, {"root": "/in"})
    assert isinstance(out, AnnotatedImages)
    frame = Frame("/in/sub/a.jpg", image=fundus(), meta={"path": "/in/sub/a.jpg"})
    out.write(frame, OK)
    out.write(Frame("/in/b.png", image=fundus(), meta={"path": "/in/b.png"}), OK)
    out.write(Frame("/in/c.jpg", error="decode: bad", meta={"path": "/in/c.jpg"}),
              Result("/in/c.jpg", "error", error="decode: bad"))  # no pixels: nothing to draw
    written = sorted(os.path.relpath(os.path.join(d, f), str(tmp_path / "out"))
                     for d, _, files in os.walk(str(tmp_path / "out")) for f in files if f != WRITTEN_MARKER)
    assert written == ["b.png", os.path.join("sub", "a.jpg")]  # and no temporary file left behind
    image = cv2.imread(str(tmp_path / "out" / "sub" / "a.jpg"))
    assert image.shape == (480, 640, 3)
    assert open_output("images://" + str(tmp_path / "out2"), LABELS).folder == str(tmp_path / "out2")


# --- display ------------------------------------------------------------------------------------------------

def test_display_with_headless_is_left_out_with_a_line(tmp_path):
    with pytest.raises(OutputDisabled, match=r"display://0: not opened \(--headless\)"):
        open_output("display://0", LABELS, {"headless": True})


def test_display_on_an_opencv_without_gui_says_what_to_install(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    with pytest.raises(OutputError) as info:  # the real opencv-python-headless here
        open_output("display://0", LABELS)
    message = str(info.value)
    assert "no GUI" in message and "pip install opencv-python" in message and "--headless" in message
    assert "\n" not in message


def test_display_without_a_display_server_says_so(monkeypatch):
    monkeypatch.setattr(capture, "build_information", lambda: "  GUI:                           GTK3\n")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(OutputError, match="no display to open a window on .DISPLAY is not set.*--headless"):
        open_output("display://0", LABELS)


def run_edge(args, env, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run"] + args, cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out.decode(), err.decode()


def test_cli_display_is_a_clear_line_not_a_crash(tmp_path, tiny_bundle, subprocess_env):
    image = jpeg_file(str(tmp_path / "in" / "a.jpg"))
    common = [image, "--model", tiny_bundle.root, "--ledger", str(tmp_path / "l.db"), "-o", "display://0"]
    code, out, err = run_edge(common + ["--headless"], subprocess_env, str(tmp_path))
    assert code == 0 and "display://0: not opened (--headless)" in out and "Traceback" not in err
    env = dict(subprocess_env, DISPLAY=":0")
    code, out, err = run_edge(common, env, str(tmp_path))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "this OpenCV has no GUI" in err


# --- quarantine ---------------------------------------------------------------------------------------------

def error_frame(path):
    return Frame(path, error="decode: bad", meta={"path": path}), Result(path, "error", error="decode: bad")


def test_quarantine_moves_error_files_keeping_their_relative_path_and_never_overwrites(tmp_path):
    root = tmp_path / "in"
    a = jpeg_file(str(root / "sub" / "a.jpg"))
    same_name = jpeg_file(str(root / "sub2" / "a.jpg"), np.zeros((5, 5, 3), np.uint8))
    q = Quarantine(str(tmp_path / "q"), root=str(root))
    taken = jpeg_file(str(tmp_path / "q" / "sub" / "a.jpg"), np.full((4, 4, 3), 9, np.uint8))
    before = open(taken, "rb").read()
    data = open(a, "rb").read()
    frame, result = error_frame(a)
    q.write(frame, result)
    assert not os.path.exists(a)
    assert frame.meta["quarantined_to"] == str(tmp_path / "q" / "sub" / "a-1.jpg")
    assert open(frame.meta["quarantined_to"], "rb").read() == data and open(taken, "rb").read() == before
    outside = jpeg_file(str(tmp_path / "other" / "x.jpg"))
    frame, result = error_frame(outside)
    q.write(frame, result)
    assert frame.meta["quarantined_to"] == str(tmp_path / "q" / "x.jpg")
    for frame, result in ((Frame(same_name, meta={"path": same_name}), Result(same_name, "ok", "normal", 0.9)),
                          (Frame(same_name, meta={"path": same_name, "index": 2}), Result(same_name, "error")),
                          (Frame("csi://0#3", meta={"index": 3}), Result("csi://0#3", "error")),
                          error_frame(str(root / "deleted-before-read.jpg"))):
        q.write(frame, result)  # not an error, a frame of a volume, a camera frame, a file already gone
    assert os.path.exists(same_name) and q.moved == 2


def test_quarantine_across_filesystems_copies_then_renames(tmp_path, monkeypatch):
    a = jpeg_file(str(tmp_path / "in" / "a.jpg"))
    data = open(a, "rb").read()
    jpeg_file(str(tmp_path / "q" / "a.jpg"))
    real_link = os.link

    def link(src, dst):
        if src == a:
            raise OSError(errno.EXDEV, "Invalid cross-device link")  # what another mount answers
        return real_link(src, dst)
    monkeypatch.setattr(os, "link", link)
    placed = move_without_overwriting(a, str(tmp_path / "q" / "a.jpg"))
    assert placed == str(tmp_path / "q" / "a-1.jpg") and open(placed, "rb").read() == data
    assert not os.path.exists(a) and sorted(os.listdir(str(tmp_path / "q"))) == ["a-1.jpg", "a.jpg"]


def test_cli_quarantine_moves_bad_inputs_after_their_ledger_rows(tmp_path, tiny_bundle, subprocess_env):
    folder = tmp_path / "scans"
    good = jpeg_file(str(folder / "good.jpg"))
    os.makedirs(str(folder / "sub"))
    bad = write_bad_files(str(folder / "sub"), good)
    ledger, q = str(tmp_path / "l.db"), str(tmp_path / "quarantine")
    code, out, err = run_edge([str(folder), "--model", tiny_bundle.root, "--ledger", ledger, "--quarantine", q,
                               "-o", str(tmp_path / "annotated") + "/"], subprocess_env, str(tmp_path))
    assert code == 1, err
    assert os.path.exists(good) and not any(os.path.exists(p) for p in bad)
    assert sorted(os.listdir(os.path.join(q, "sub"))) == sorted(os.path.basename(p) for p in bad)
    assert out.count("(moved to quarantine/sub/") == 3
    conn = sqlite3.connect(ledger)
    rows = dict(conn.execute("select path, status from results"))
    conn.close()
    assert rows == dict([(good, rows[good])] + [(p, "error") for p in bad])  # the paths they had when screened
    assert sorted(os.listdir(str(tmp_path / "annotated"))) == [WRITTEN_MARKER, "good.jpg"]


def test_build_puts_the_ledger_first_and_the_quarantine_after_the_other_outputs(tmp_path, tiny_bundle):
    from edge.cli import build_parser
    from edge.commands.run import Session, build
    from edge.io.outputs import ConsoleOutput, CsvOutput, LedgerOutput
    folder = tmp_path / "watched"
    jpeg_file(str(folder / "a.jpg"))
    args = build_parser().parse_args(["run", str(folder), "--watch", "--model", tiny_bundle.root, "--ledger",
                                      str(tmp_path / "l.db"), "--results", str(tmp_path / "r.csv"), "-o",
                                      str(folder / "annotated") + "/", "--quarantine", str(folder / "q")])
    session = Session()
    try:
        build(args, session, log=lambda line: None)
        kinds = [type(getattr(o, "console", o)) for o in session.outputs]  # the console sits in a PipeGuard
        assert kinds == [LedgerOutput, CsvOutput, AnnotatedImages, Quarantine, ConsoleOutput]
        assert session.source.ledger_path == str(tmp_path / "l.db")
        assert session.source.excluded == {str(folder / "annotated"), str(folder / "q")}
    finally:
        session.ledger.close()
        session.close()


def test_an_output_folder_that_is_the_input_folder_is_refused_before_anything_is_written(
        tmp_path, tiny_bundle, subprocess_env):
    folder = tmp_path / "scans"
    jpeg_file(str(folder / "a.jpg"))
    before = sorted(os.listdir(str(folder)))
    for extra in (["-o", str(folder) + "/"], ["--quarantine", str(folder)]):
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", str(folder), "--model", tiny_bundle.root,
                                 "--ledger", str(tmp_path / "l.db")] + extra, env=subprocess_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert b"is the input folder" in err
        assert sorted(os.listdir(str(folder))) == before  # no marker, no annotated copy: nothing written


def test_folders_retina_edge_wrote_into_are_never_screened_by_a_later_run(tmp_path, tiny_bundle):
    """A marker file keeps annotated copies and quarantined files out of later runs, whatever their options."""
    from edge.io.sources import list_images
    from edge.io.watch import scan
    folder = tmp_path / "scans"
    jpeg_file(str(folder / "a.jpg"))
    AnnotatedImages(parse_output(str(folder / "annotated") + "/"), ["x"])
    Quarantine(str(folder / "q"))
    jpeg_file(str(folder / "annotated" / "a.jpg"))
    jpeg_file(str(folder / "q" / "b.jpg"))
    assert os.path.isfile(str(folder / "annotated" / WRITTEN_MARKER))
    assert list_images(str(folder)) == [str(folder / "a.jpg")]
    assert [p for p, _ in scan(str(folder))] == [str(folder / "a.jpg")]
