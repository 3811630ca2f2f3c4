"""retina-edge profile as a user runs it: a real subprocess on the sample images with a real bundle."""
import csv
import json
import os
import sqlite3
import subprocess
import sys
from argparse import Namespace

import pytest

from conftest import REPO_ROOT
from edge.cli import build_parser
from edge.commands import profile
from fake_boards import clock_caps, nano_thermal, nano_tree

SAMPLES = os.path.join(REPO_ROOT, "samples", "fundus")
STAGE_FIELDS = ("n", "mean_ms", "p50_ms", "p90_ms", "p99_ms")


def profile_run(args, env, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "edge", "profile"] + args, cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def nvml_works():
    try:
        import pynvml
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:  # not installed, or no driver: either way no NVML here
        return False


@pytest.fixture
def board_env(subprocess_env, tmp_path):
    """No L4T commands, and a sysfs root with nothing in it unless a test builds a board there."""
    env = dict(subprocess_env)
    env["RETINA_EDGE_SYSFS_ROOT"] = str(tmp_path / "board")
    os.makedirs(env["RETINA_EDGE_SYSFS_ROOT"])
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"
    return env


@pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="samples/fundus is not in this checkout")
def test_profile_on_the_samples_writes_a_full_report_and_says_power_is_not_available(
        tmp_path, tiny_bundle, board_env):
    out_dir = str(tmp_path / "prof")
    code, out, err = profile_run(["--frames", "20", "--warmup", "2", "--idle-seconds", "0.2", "--model",
                                  tiny_bundle.root, "--out", out_dir], board_env, str(tmp_path))
    assert code == 0, err
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    for key in ("machine", "versions", "model", "backend", "input", "run", "throughput", "stages", "power",
                "thermal", "nvpmodel", "jetson_clocks", "plots", "files"):
        assert key in report, key
    assert report["backend"]["describe"].startswith("onnxruntime")
    assert report["run"]["frames_measured"] == 20 and report["run"]["warmup_frames"] == 2
    assert report["input"]["passes"] == 2  # 12 sample images looped for 22
    assert report["throughput"]["images_per_s"] > 0 and report["throughput"]["network_images_per_s"] > 0
    for stage in ("capture", "decode", "pre-process", "network", "post-process", "output", "total"):
        assert report["stages"][stage]["n"] == 20 and all(k in report["stages"][stage] for k in STAGE_FIELDS)
    if not nvml_works():
        assert report["power"]["available"] is False
        assert any("tegrastats: not found on PATH" in r for r in report["power"]["tried"])
        assert "power         not available:" in out and "ina3221x" in out
    assert report["thermal"]["available"] is False and "thermal_zone" in report["thermal"]["reason"]
    assert report["nvpmodel"]["available"] is False and "nvpmodel not on PATH" in report["nvpmodel"]["reason"]
    assert "20 image(s) measured after 2 warm-up" in out and "images/s end to end" in out
    with open(os.path.join(out_dir, "frames.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 22 and [r["warmup"] for r in rows[:3]] == ["1", "1", "0"]
    assert float(rows[-1]["network_ms"]) > 0
    if has_matplotlib():
        with open(os.path.join(out_dir, "latency.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert report["plots"]["written"] == ["latency.png"]  # no power or temperature samples to draw
    else:
        assert "plots skipped: matplotlib is not installed" in out
        assert report["plots"]["skipped"].startswith(
            "plots skipped: matplotlib is not installed (pip install matplotlib")
    # results went to the profile's own ledger, not the user's
    assert not os.path.exists(board_env["RETINA_EDGE_HOME"])
    conn = sqlite3.connect(os.path.join(out_dir, "ledger.db"))
    try:
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 22
    finally:
        conn.close()


@pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="samples/fundus is not in this checkout")
def test_profile_on_a_fake_nano_measures_energy_per_image(tmp_path, tiny_bundle, board_env):
    """The Nano's INA3221 and thermal zones as files (RETINA_EDGE_SYSFS_ROOT); power is constant, so the
    energy per image is that power times the window over the images, and the net of idle is zero."""
    root = board_env["RETINA_EDGE_SYSFS_ROOT"]
    nano_tree(root)
    nano_thermal(root)
    clock_caps(root)
    out_dir = str(tmp_path / "prof")
    code, out, err = profile_run(["--frames", "60", "--warmup", "2", "--idle-seconds", "0.3", "--sample-ms", "10",
                                  "--model", tiny_bundle.root, "--out", out_dir], board_env, str(tmp_path))
    assert code == 0, err
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    power = report["power"]
    assert power["available"] and power["kind"] == "ina3221 (iio)" and "POM_5V_IN" in power["total_rule"]
    e = power["energy"]
    assert e["available"], e
    assert e["mean_power_mw"] == pytest.approx(2633.0)  # POM_5V_IN alone
    assert e["energy_per_image_mj"] == pytest.approx(2633.0 * e["window_s"] / 60)
    assert e["idle_power_mw"] == pytest.approx(2633.0) and e["net_energy_per_image_mj"] == pytest.approx(0.0, abs=1e-6)
    assert "mJ per image" in out and "not this machine's" in report["machine"]["sysfs_root"]
    thermal = report["thermal"]
    assert thermal["available"] and thermal["zones"]["CPU-therm"]["max_c"] == 41.5
    assert thermal["throttling"]["detected"] is False
    assert thermal["clock_caps_mhz"] == {"cpu policy0": 1479.0, "devfreq 57000000.gpu": 921.6}
    for name in ("power.csv", "thermal.csv", "clocks.csv"):
        assert name in report["files"] and os.path.isfile(os.path.join(out_dir, name))
    with open(os.path.join(out_dir, "power.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["total_mw"] == "2633.0" and rows[0]["POM_5V_GPU"] == "79.000"
    if has_matplotlib():
        assert set(report["plots"]["written"]) == {"latency.png", "power.png", "temperature.png"}


def parse(argv):
    return build_parser().parse_args(["profile"] + argv)


def test_frames_and_seconds_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--frames", "5", "--seconds", "2"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_without_the_sample_folder_input_must_be_given(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETINA_EDGE_SAMPLES", str(tmp_path / "not-installed" / "samples" / "fundus"))
    assert profile.main(parse(["--out", str(tmp_path / "p")])) == 2
    err = capsys.readouterr().err
    assert "retina-edge profile: error: no --input given" in err and "give --input" in err
    assert "set RETINA_EDGE_SAMPLES" in err


def test_an_existing_report_folder_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "report.json").write_text("{}")
    assert profile.main(parse(["--input", str(tmp_path), "--out", str(tmp_path / "p")])) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_run_args_keep_results_out_of_the_users_ledger(tmp_path):
    args = parse(["--input", "x", "--out", str(tmp_path)])
    made = profile.run_args(args, str(tmp_path))
    assert made.ledger == os.path.join(str(tmp_path), "ledger.db") and made.quiet and not made.watch
    mine = profile.run_args(parse(["--input", "x", "--ledger", "mine.db"]), str(tmp_path))
    assert mine.ledger == "mine.db"


class Pass(object):
    """A finite, re-iterable source of numbered frames (what a folder source is to Limited)."""
    live = False

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


def test_limited_loops_a_short_source_until_warmup_plus_frames():
    source = profile.Limited(Pass(3), warmup=2, frames=7)
    assert list(source) == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert source.passes == 3 and source.n == 3  # other attributes are the source's


def test_limited_by_seconds_stops_after_the_time_past_the_warmup():
    now = [0.0]
    source = profile.Limited(Pass(4), warmup=1, seconds=3, clock=lambda: now[0])
    got = []
    for frame in source:  # each frame takes one second
        got.append(frame)
        now[0] += 1.0
    assert got == [0, 1, 2, 3] and source.passes == 1  # the warm-up frame, then 3 s of frames


def test_limited_stops_on_an_empty_or_live_source():
    assert list(profile.Limited(Pass(0), warmup=0, frames=5)) == []
    live = Pass(2)
    live.live = True
    assert list(profile.Limited(live, warmup=0, frames=5)) == [0, 1]


def test_profile_is_a_verb_with_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["profile", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--idle-seconds" in text and "--power-meter" in text
    assert isinstance(parse([]), Namespace)


@pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="samples/fundus is not in this checkout")
def test_two_ctrl_c_end_the_measurement_at_once_and_the_report_is_still_written(tmp_path, tiny_bundle, board_env):
    import signal
    out_dir = str(tmp_path / "prof")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "profile", "--seconds", "600", "--warmup", "1",
                             "--idle-seconds", "0", "--model", tiny_bundle.root, "--out", out_dir],
                            cwd=str(tmp_path), env=board_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    for line in iter(proc.stdout.readline, b""):
        seen.append(line.decode())
        if line.startswith(b"measuring "):
            break
    proc.send_signal(signal.SIGINT)
    while b"stopping after" not in proc.stderr.readline():
        pass
    proc.send_signal(signal.SIGINT)
    out = "".join(seen) + proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 130, err + out
    assert "Traceback" not in err
    with open(os.path.join(out_dir, "report.json")) as f:
        assert json.load(f)["run"]["frames_measured"] >= 0
