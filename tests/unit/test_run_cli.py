"""`retina-edge run` as a technician meets it, by real subprocess: every exit code, Ctrl-C and SIGTERM part way
through a folder, a closed stdout (`| head`), an output whose disk is full, appending results, absolute ledger
paths, and which of the ledger or the results file could not be opened. Python 3.6, no torch.
"""
import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys

import pytest

from edge.commands.common import EXIT_FAILED, EXIT_OK, EXIT_SET_ASIDE, EXIT_SIGINT, EXIT_SIGPIPE, EXIT_SIGTERM, \
    EXIT_USAGE


def edge(args, env, cwd, **popen):
    return subprocess.Popen([sys.executable, "-m", "edge"] + args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def ledger_rows(path, sql, args=()):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture
def many_images(tmp_path, screen_folder):
    """1,500 files (links to the three real images): long enough to be stopped part way."""
    _, good, _ = screen_folder
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        os.symlink(good[i % 3], str(folder / "{:04d}{}".format(i, os.path.splitext(good[i % 3])[1])))
    return str(folder)


def read_until_a_result(proc):
    """Read stdout until the first result line (the run is screening), keeping what was read."""
    seen = []
    for line in iter(proc.stdout.readline, b""):
        seen.append(line.decode())
        if line.startswith(b"ok "):
            return "".join(seen)
    raise AssertionError("no result line before the run ended: " + "".join(seen))


def summary_count(out):
    return int(re.search(r"^(\d+) image\(s\), ", out, re.M).group(1))


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, EXIT_SIGINT, "SIGINT"),
                                             (signal.SIGTERM, EXIT_SIGTERM, "SIGTERM")])
def test_a_signal_part_way_stops_cleanly_keeps_every_result_and_finishes_the_ledger_run(
        tmp_path, tiny_bundle, many_images, subprocess_env, sig, code, name):
    csv_path, db = str(tmp_path / "out.csv"), str(tmp_path / "l.db")
    proc = edge(["run", many_images, "--model", tiny_bundle.root, "--results", csv_path, "--ledger", db],
                subprocess_env, str(tmp_path))
    head = read_until_a_result(proc)
    proc.send_signal(sig)
    # read on through the same buffered pipe (communicate() would skip what it has read ahead);
    # stderr holds a line or two, so reading stdout to its end first cannot block the child
    out = head + proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=300)
    assert rc == code, err + out
    assert "Traceback" not in err and "Traceback" not in out
    assert "stopping after the image(s) in flight" in err
    assert "stopped by {} before the input ended; every result above is kept".format(name) in out
    assert "ledger: {} (run 1); results: {}".format(db, csv_path) in out  # says where the partial results went
    n = summary_count(out)
    assert 1 <= n < 1500
    (finished, images, summary), = ledger_rows(db, "SELECT finished_at, images, summary FROM runs")
    assert finished and images == n
    assert json.loads(summary)["stopped_by"] == name and json.loads(summary)["interrupted"] is True
    assert ledger_rows(db, "SELECT COUNT(*) FROM results") == [(n,)]
    assert len(csv_rows(csv_path)) == n + 1  # every result the ledger has is in the CSV too, well formed
    assert sum(line.startswith("ok ") for line in out.splitlines()) == n


def test_a_second_ctrl_c_aborts_at_once_without_a_traceback_and_finishes_the_ledger_run(
        tmp_path, tiny_bundle, screen_folder, subprocess_env):
    import cv2
    # a real fundus photograph at 4000x4000 (a flat disc would be ungradable): slow to decode and prepare,
    # so the first stop takes a while
    big = cv2.resize(cv2.imread(screen_folder[1][0]), (4000, 4000), interpolation=cv2.INTER_CUBIC)
    folder = tmp_path / "big"
    folder.mkdir()
    cv2.imwrite(str(folder / "0000.jpg"), big)
    for i in range(1, 300):
        os.symlink(str(folder / "0000.jpg"), str(folder / "{:04d}.jpg".format(i)))
    db = str(tmp_path / "l.db")
    proc = edge(["run", str(folder), "--model", tiny_bundle.root, "--ledger", db], subprocess_env, str(tmp_path))
    head = read_until_a_result(proc)
    proc.send_signal(signal.SIGINT)
    while b"stopping after" not in proc.stderr.readline():  # the first one is being handled: now the second
        pass
    proc.send_signal(signal.SIGINT)
    out = head + proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == EXIT_SIGINT, err + out
    assert "Traceback" not in err
    assert "Ctrl-C again: aborting now" in err
    assert "aborted by a second Ctrl-C; the results listed above are kept" in out
    n = summary_count(out)
    (finished, images, summary), = ledger_rows(db, "SELECT finished_at, images, summary FROM runs")
    assert finished and json.loads(summary)["aborted"] is True
    assert images >= n  # a frame aborted between the ledger and the console is in the ledger only


def test_a_closed_stdout_ends_quietly(tmp_path, tiny_bundle, many_images, subprocess_env):
    """`retina-edge run DIR | head -3`: no BrokenPipeError traceback, the ledger run finished."""
    db = str(tmp_path / "l.db")
    proc = edge(["run", many_images, "--model", tiny_bundle.root, "--ledger", db], subprocess_env, str(tmp_path))
    for _ in range(3):
        proc.stdout.readline()
    proc.stdout.close()  # what head does after its third line
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert proc.returncode == EXIT_SIGPIPE
    assert err == ""  # quiet: no traceback, no "Exception ignored"
    (finished, images, summary), = ledger_rows(db, "SELECT finished_at, images, summary FROM runs")
    assert finished and 1 <= images < 1500 and json.loads(summary)["stopped_by"] == "SIGPIPE"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) to fill a disk")
def test_an_output_on_a_full_disk_stops_the_run_naming_it(tmp_path, tiny_bundle, screen_folder, subprocess_env):
    folder = screen_folder[0]
    full = str(tmp_path / "out.jsonl")
    os.symlink("/dev/full", full)  # every write: ENOSPC, as on a full disk
    db = str(tmp_path / "l.db")
    rc, out, err = finish(edge(["run", folder, "--model", tiny_bundle.root, "--ledger", db, "-o", full],
                               subprocess_env, str(tmp_path)))
    assert rc == EXIT_FAILED
    assert "Traceback" not in err
    assert re.search(r"retina-edge run: error: output {} failed writing \S+: OSError: .*No space left on device"
                     .format(re.escape(full)), err), err
    assert "ledger: {} (run 1)".format(db) in out
    (finished, summary), = ledger_rows(db, "SELECT finished_at, summary FROM runs")
    assert finished and full in json.loads(summary)["failure"]


def test_exit_0_when_every_input_is_screened(tmp_path, tiny_bundle, screen_folder, subprocess_env):
    _, good, _ = screen_folder
    rc, out, err = finish(edge(["run", os.path.dirname(good[0]) + "/sub", "--model", tiny_bundle.root,
                                "--ledger", str(tmp_path / "l.db")], subprocess_env, str(tmp_path)))
    assert rc == EXIT_OK, err
    assert "1 image(s), 1 ok, 0 error(s)" in out


def test_exit_1_when_some_inputs_are_set_aside(tmp_path, tiny_bundle, screen_folder, subprocess_env):
    rc, out, err = finish(edge(["run", screen_folder[0], "--model", tiny_bundle.root,
                                "--ledger", str(tmp_path / "l.db")], subprocess_env, str(tmp_path)))
    assert rc == EXIT_SET_ASIDE, err
    assert "6 image(s), 3 ok, 3 error(s)" in out


@pytest.mark.parametrize("case", ["typo", "missing input", "empty folder", "bad bundle"])
def test_exit_2_for_usage_and_setup_errors_with_one_line_and_no_ledger_run(
        tmp_path, tiny_bundle, subprocess_env, case):
    (tmp_path / "empty").mkdir()
    args = {"typo": ["run", "x", "--resluts", "o.csv"],
            "missing input": ["run", "nowhere", "--model", tiny_bundle.root],
            "empty folder": ["run", "empty", "--model", tiny_bundle.root],
            "bad bundle": ["run", "empty", "--model", str(tmp_path)]}[case]
    db = str(tmp_path / "l.db")
    rc, out, err = finish(edge(args + ["--ledger", db], subprocess_env, str(tmp_path)))
    assert rc == EXIT_USAGE
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("retina-edge run: error: ")
    assert not os.path.exists(db)


def test_a_ledger_that_cannot_be_opened_is_named_as_the_ledger(tmp_path, tiny_bundle, screen_folder,
                                                               subprocess_env):
    blocker = tmp_path / "a-folder"
    blocker.mkdir()  # a folder where the ledger file should be
    rc, out, err = finish(edge(["run", screen_folder[0], "--model", tiny_bundle.root, "--ledger", str(blocker),
                                "--results", str(tmp_path / "r.csv")], subprocess_env, str(tmp_path)))
    assert rc == EXIT_USAGE
    assert "cannot open the ledger {}".format(blocker) in err and "results output" not in err
    assert "Traceback" not in err


def test_results_append_and_the_ledger_keeps_absolute_paths(tmp_path, tiny_bundle, screen_folder, subprocess_env):
    folder, good, bad = screen_folder
    rel = os.path.relpath(folder, str(tmp_path))  # typed relative to where the technician stands
    for _ in range(2):
        rc, _, err = finish(edge(["run", rel, "--model", tiny_bundle.root, "--results", "out.csv", "--ledger",
                                  "l.db"], subprocess_env, str(tmp_path)))
        assert rc == EXIT_SET_ASIDE, err
    rows = csv_rows(str(tmp_path / "out.csv"))
    assert rows[0][0] == "path" and len(rows) == 1 + 12  # one header, both runs' rows
    assert sorted(r[0] for r in rows[1:]) == sorted((good + bad) * 2)
    db = str(tmp_path / "l.db")
    assert ledger_rows(db, "SELECT DISTINCT source FROM runs") == [(folder,)]
    assert sorted(p for (p,) in ledger_rows(db, "SELECT path FROM results")) == sorted((good + bad) * 2)


def test_results_written_by_an_older_retina_edge_are_upgraded_and_the_run_says_so(
        tmp_path, tiny_bundle, screen_folder, subprocess_env):
    rc, _, err = finish(edge(["run", screen_folder[0], "--model", tiny_bundle.root, "--results", "out.csv",
                              "--ledger", "l.db"], subprocess_env, str(tmp_path)))
    rows = csv_rows(str(tmp_path / "out.csv"))
    old = [[v for v, name in zip(row, rows[0]) if name != "model"] for row in rows]  # as before the column
    with open(str(tmp_path / "out.csv"), "w", newline="") as f:
        csv.writer(f).writerows(old)
    rc, out, err = finish(edge(["run", screen_folder[0], "--model", tiny_bundle.root, "--results", "out.csv",
                                "--ledger", "l.db"], subprocess_env, str(tmp_path)))
    assert rc == EXIT_SET_ASIDE, err
    assert "out.csv: written by an older retina-edge; added the column(s) model (empty in its 6 row(s))" in out
    rows = csv_rows(str(tmp_path / "out.csv"))
    assert rows[0][-1] == "model" and len(rows) == 1 + 12
    assert [r[-1] for r in rows[1:7]] == [""] * 6
    assert sorted(r[-1] for r in rows[7:] if r[-1]) == ["tiny4-test"] * 3  # the three images screened ok


def test_the_model_option_takes_the_onnx_file(tmp_path, tiny_bundle, screen_folder, subprocess_env):
    rc, out, err = finish(edge(["run", screen_folder[1][0], "--model", tiny_bundle.onnx_path, "--ledger",
                                str(tmp_path / "l.db")], subprocess_env, str(tmp_path)))
    assert rc == EXIT_OK, err
    assert "model tiny4-test ({})".format(tiny_bundle.root) in out


def test_help_lists_backend_choices_and_every_exit_code(tmp_path, subprocess_env):
    rc, out, _ = finish(edge(["run", "--help"], subprocess_env, str(tmp_path)))
    assert rc == 0
    assert "{auto,tensorrt,onnxruntime}" in out
    for code in ("0 ", "1 ", "2 ", "3 ", "130 ", "141 "):
        assert "\n  " + code in out
    assert "143 stopped by SIGTERM" in out
