"""edge/cliutil.py and the retina-edge CLI (Python 3.6, no torch)."""
import csv
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import LABELS
from edge.cli import build_parser
from edge.cliutil import Parser


def parse_error(parser, argv, capsys):
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("extra, typo, meant", [
    (["--resluts", "out.csv"], "--resluts", "--results"),
    (["--reslts=out.csv"], "--reslts", "--results"),
    (["--modle", "bundles/x"], "--modle", "--model"),
    (["--qiet"], "--qiet", "--quiet"),
    (["--ledgr", "l.db"], "--ledgr", "--ledger"),
])
def test_unknown_option_suggests_the_closest_one(capsys, extra, typo, meant):
    err = parse_error(build_parser(), ["run", "scans"] + extra, capsys)
    assert "unrecognized arguments: {} (did you mean {}?)".format(typo, meant) in err
    assert err.startswith("usage: retina-edge run")  # the run verb's usage, not the top level's


def test_unknown_option_without_a_close_match_is_still_rejected(capsys):
    err = parse_error(build_parser(), ["run", "scans", "--zzzzzz"], capsys)
    assert "unrecognized arguments: --zzzzzz" in err
    assert "did you mean" not in err


def test_a_plain_parser_suggests_too(capsys):
    parser = Parser(prog="tool")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    err = parse_error(parser, ["--image-sise", "3"], capsys)
    assert "did you mean --image-size?" in err
    assert parser.parse_args(["--image-size", "3"]).image_size == 3


def test_known_options_parse(tmp_path):
    args = build_parser().parse_args(["run", "scans", "--results", "o.csv", "--ledger", "l.db", "--quiet",
                                      "-o", "a.jsonl", "--output", "null://"])
    assert (args.verb, args.input, args.results, args.ledger, args.quiet, args.backend, args.precision) == (
        "run", "scans", "o.csv", "l.db", True, "auto", "best")
    assert args.output == ["a.jsonl", "null://"]


def test_backend_and_precision_list_their_choices(capsys):
    err = parse_error(build_parser(), ["run", "scans", "--backend", "trt"], capsys)
    assert "invalid choice: 'trt'" in err and "'tensorrt'" in err and "'onnxruntime'" in err and "'auto'" in err
    err = parse_error(build_parser(), ["run", "scans", "--precision", "int4"], capsys)
    assert "'fp16'" in err and "'int8'" in err


def test_help_has_worked_examples(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "retina-edge run samples/fundus" in out
    assert "exit codes:" in out


def test_top_level_help_lists_every_verbs_examples_under_one_heading(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.count("examples:") == 1 and out.count("exit codes:") == 1
    for verb in ("run", "build", "selftest", "profile"):
        assert "  retina-edge {} ".format(verb) in out or "  retina-edge {}\n".format(verb) in out


def run_edge(args, env, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "edge"] + args, cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def test_edge_cli_screens_a_folder_with_bad_files(tmp_path, tiny_bundle, screen_folder, subprocess_env):
    folder, good, bad = screen_folder
    csv_path = str(tmp_path / "out.csv")
    ledger_path = str(tmp_path / "l.db")
    code, out, err = run_edge(["run", folder, "--model", tiny_bundle.root, "--results", csv_path,
                               "--ledger", ledger_path], subprocess_env, str(tmp_path))
    assert code == 1, err  # finished, but some inputs were set aside
    assert "images/s" in out
    assert "backend onnxruntime" in out and "tensorrt not usable" in out  # auto says what it chose and why
    assert "6 image(s), 3 ok, 3 error(s)" in out, out
    for stage in ("capture", "decode", "pre-process", "network", "post-process", "output", "total"):
        assert stage in out
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(good + bad)
    for r in rows:
        if r["path"] in good:
            assert r["status"] == "ok"
            assert abs(sum(float(r["p_" + lab]) for lab in LABELS) - 1.0) < 1e-5
        else:
            assert r["status"] == "error", r
            assert r["path"] in r["error"]
    conn = sqlite3.connect(ledger_path)
    try:
        assert conn.execute("SELECT images, errors FROM runs").fetchall() == [(6, 3)]
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 6
    finally:
        conn.close()
    # nothing was written to the default ledger home
    assert not os.path.exists(subprocess_env["RETINA_EDGE_HOME"])


def test_edge_cli_refuses_a_tampered_bundle(tmp_path, tiny_bundle, screen_folder, subprocess_env):
    folder, _, _ = screen_folder
    with open(tiny_bundle.onnx_path, "ab") as f:
        f.write(b"\x00")
    code, out, err = run_edge(["run", folder, "--model", tiny_bundle.root, "--ledger", str(tmp_path / "l.db")],
                              subprocess_env, str(tmp_path))
    assert code == 2
    assert err.startswith("retina-edge run: error: ")
    assert "sha256 mismatch" in err and tiny_bundle.onnx_path in err
    assert not os.path.exists(str(tmp_path / "l.db"))


def test_edge_cli_takes_the_onnx_file_as_the_bundle_and_exits_0_when_all_are_screened(
        tmp_path, tiny_bundle, screen_folder, subprocess_env):
    _, good, _ = screen_folder
    code, out, err = run_edge(["run", good[0], "--model", tiny_bundle.onnx_path, "--ledger",
                               str(tmp_path / "l.db"), "--backend", "onnxruntime"], subprocess_env, str(tmp_path))
    assert code == 0, err
    assert "1 image(s), 1 ok, 0 error(s)" in out


def test_edge_cli_typo_exits_2_with_a_hint(tmp_path, subprocess_env):
    code, _, err = run_edge(["run", "x", "--resluts", "o.csv"], subprocess_env, str(tmp_path))
    assert code == 2
    assert "did you mean --results?" in err


def test_edge_cli_says_when_a_folder_has_no_images(tmp_path, tiny_bundle, subprocess_env):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text(u"not an image")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", str(folder), "--model", tiny_bundle.root],
                            env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "no image files (jpg, jpeg, png, bmp, tif, tiff, dcm, dicom) found" in err.decode()


def test_edge_cli_reports_an_unwritable_results_path(tmp_path, tiny_bundle, screen_folder, subprocess_env):
    folder = screen_folder[0]
    blocker = tmp_path / "a-file"
    blocker.write_text(u"x")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", folder, "--model", tiny_bundle.root,
                             "--results", str(blocker / "out.csv")],
                            env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "results output" in err.decode() and str(blocker / "out.csv") in err.decode()
    assert "ledger" not in err.decode()  # says which of the two was at fault
    assert b"Traceback" not in err
    # no orphan, never-finished run was left in the ledger
    ledger = os.path.join(subprocess_env["RETINA_EDGE_HOME"], "ledger.db")
    if os.path.exists(ledger):
        conn = sqlite3.connect(ledger)
        try:
            assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        finally:
            conn.close()
