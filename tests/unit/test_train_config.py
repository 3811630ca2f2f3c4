"""retina-train --config: YAML/JSON options under the command line, refused keys named with a suggestion, and the
resolved config written beside the output and read back (workstation side)."""
import csv
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("yaml", reason="configs are workstation-only: needs PyYAML")
pytestmark = pytest.mark.torch

from conftest import LABELS, REPO_ROOT  # noqa: E402
from training import config  # noqa: E402
from training.cli import build_parser, main  # noqa: E402


def parse(argv):
    parser = build_parser()
    return parser.parse_args(config.expand_argv(argv, parser))


def write(tmp_path, text, name="c.yaml"):
    path = str(tmp_path / name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_the_file_gives_the_options_in_either_spelling_and_the_command_line_wins(tmp_path):
    path = write(tmp_path, "verb: teacher\ndata: d.csv\nout: runs/t\nimage_size: 96\nbatch-size: 8\n"
                           "augment: strong\nresume: true\nepochs: 4\namp: 'off'\n")
    args = parse(["teacher", "--config", path, "--epochs", "9"])
    assert (args.data, args.out, args.image_size, args.batch_size, args.augment) == ("d.csv", "runs/t", 96, 8,
                                                                                     "strong")
    assert args.resume is True and args.epochs == 9  # typed after the file's tokens: it wins
    assert args.config == path


def test_required_options_may_come_from_the_file_alone(tmp_path):
    args = parse(["distil", "--config", write(tmp_path, "data: d.csv\nout: o\nteacher: runs/t\n")])
    assert (args.data, args.out, args.teacher) == ("d.csv", "o", "runs/t")


def test_lists_for_options_that_take_several_values(tmp_path):
    args = parse(["synth-oct", "--config", write(tmp_path, "out: o\nsize: [200, 300]\ndicom: true\n")])
    assert args.size == [200, 300] and args.dicom is True
    with pytest.raises(config.ConfigError, match="takes one value, not a list"):
        parse(["teacher", "--config", write(tmp_path, "data: [a, b]\n", "l.yaml")])


def test_a_json_config_is_read_too(tmp_path):
    path = write(tmp_path, json.dumps({"data": "d.csv", "out": "o", "lr": 0.002}), "c.json")
    assert parse(["teacher", "--config", path]).lr == 0.002


@pytest.mark.parametrize("text, message", [
    ("image_sise: 96\n", "c.yaml: unknown key 'image_sise' (did you mean 'image-size'?)"),
    ("augment: wild\n", "c.yaml: augment: 'wild' is not one of none, standard, strong"),
    ("epochs: many\n", "c.yaml: epochs: 'many' is not a whole number"),
    ("resume: 3\n", "c.yaml: resume takes true or false"),
    ("amp: off\n", "c.yaml: amp takes a value, not false: quote it (amp: 'off') if you mean the word"),
    ("verb: distil\n", "c.yaml: a config for `retina-train distil`, not for `teacher`"),
    ("data: [a\n", "c.yaml:2: not valid YAML"),
    ("- a\n- b\n", "c.yaml: a config is a mapping of option: value, not a list"),
])
def test_a_bad_config_is_refused_naming_the_file_before_anything_runs(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    assert main(["teacher", "--config", path, "--data", "d.csv", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("retina-train teacher: error: " + path)
    assert not os.path.exists(str(tmp_path / "never"))


def test_a_missing_config_file_is_named(tmp_path, capsys):
    assert main(["teacher", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: cannot read the config" in capsys.readouterr().err


def test_print_config_shows_every_option_and_reads_back_to_the_same_arguments(tmp_path, capsys):
    argv = ["teacher", "--data", "d.csv", "--out", "o", "--image-size", "96", "--average", "swa",
            "--class-weights", "balanced", "--loss", "focal"]
    assert main(argv + ["--print-config"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# retina-train teacher") and "image-size: 96\n" in text and "verb: teacher\n" in text
    again = parse(["teacher", "--config", write(tmp_path, text, "resolved.yaml")])
    first = parse(argv)
    for key in vars(first):
        if key not in ("config", "_parser"):
            assert getattr(again, key) == getattr(first, key), key


def small_split(fundus_dir, path, per_class=3):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group", "split"])
        for label in LABELS:
            names = sorted(os.listdir(os.path.join(fundus_dir, label)))[:per_class * 7:7]
            for i, name in enumerate(names):
                writer.writerow([os.path.join(fundus_dir, label, name), label, label + name,
                                 ("train", "train", "val")[i % 3]])


def test_a_run_from_a_config_writes_its_resolved_config_that_reruns_the_same_options(tmp_path, fundus_dir):
    split = str(tmp_path / "split.csv")
    small_split(fundus_dir, split)
    out = str(tmp_path / "run")
    path = write(tmp_path, "verb: teacher\ndata: {}\nout: {}\nmodel: resnet18\nweights: none\nimage-size: 64\n"
                           "epochs: 1\nbatch-size: 4\nmax-steps: 1\ncache-dir: ''\n".format(split, out))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen([sys.executable, "-m", "training", "teacher", "--config", path, "--seed", "3"],
                            cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.communicate(timeout=600)[0].decode("utf-8", "replace")
    assert proc.returncode == 0, output[-3000:]
    resolved = os.path.join(out, config.RESOLVED_NAME)
    with open(resolved) as f:
        text = f.read()
    assert "# command: " in text and "--seed 3" in text and "seed: 3\n" in text
    assert "label-smoothing: null\n" in text  # as asked, not as the recipe resolved it in place
    assert parse(["teacher", "--config", resolved]).seed == 3
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["image_size"] == 64


def test_a_failed_run_leaves_no_resolved_config(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    path = write(tmp_path, "data: {}\nout: {}\n".format(tmp_path / "missing.csv", out))
    assert main(["teacher", "--config", path]) == 1
    assert not os.path.exists(str(out / config.RESOLVED_NAME))
