"""training/splits.py and the grouping rules of training/data.py, on the real fundus4 file list.

Workstation only (training/ belongs to the torch side): skipped with a reason where torch is absent.
"""
import os
import re
from collections import Counter, defaultdict

import pytest

pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")

from training.data import Sample, group_of, read_manifest, scan_folder, write_manifest  # noqa: E402
from training.splits import LeakError, check_no_leak, grouped_split, summarize  # noqa: E402

pytestmark = pytest.mark.torch

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def readme_group(path, label):
    """The fundus4 README's grouping rules, written out again independently of training.data."""
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = stem.split("_")
    if len(parts) == 2 and parts[0].isdigit() and parts[1].lower() in ("left", "right"):
        return ("patient", int(parts[0]))
    if len(parts) == 3 and parts[0] == "" and parts[1].isdigit() and parts[2].isdigit():
        return ("source", int(parts[1]))
    return ("single", label, stem)


@pytest.fixture(scope="module")
def samples(fundus_dir):
    return scan_folder(fundus_dir)


@pytest.fixture(scope="module")
def split(samples):
    return grouped_split(samples, FRACTIONS, seed=0)


# --- group_of follows the README ---------------------------------------------------------------------

def test_both_eyes_of_a_patient_share_a_group_across_classes():
    left = group_of("/d/cataract/1234_left.jpg", "cataract")
    assert left == group_of("/d/cataract/1234_right.jpg", "cataract")
    assert left == group_of("/d/normal/1234_right.jpg", "normal")
    assert left == group_of("/d/diabetic_retinopathy/1234_left.jpeg", "diabetic_retinopathy")
    assert left == group_of("/d/glaucoma/1234_LEFT.JPG", "glaucoma")
    assert left != group_of("/d/cataract/1235_left.jpg", "cataract")
    assert left != group_of("/d/cataract/12345_left.jpg", "cataract")


def test_augmented_copies_of_one_source_share_a_group():
    a = group_of("/d/glaucoma/_12_3456789.jpg", "glaucoma")
    assert a == group_of("/d/glaucoma/_12_9999999.jpg", "glaucoma")
    assert a != group_of("/d/glaucoma/_13_3456789.jpg", "glaucoma")
    assert a != group_of("/d/glaucoma/12_left.jpg", "glaucoma")  # a source number is not a patient number


def test_named_single_images_are_their_own_group():
    one = group_of("/d/cataract/cataract_001.png", "cataract")
    assert one != group_of("/d/cataract/cataract_002.png", "cataract")
    assert group_of("/d/glaucoma/Glaucoma_001.png", "glaucoma") != group_of("/d/glaucoma/Glaucoma_002.png",
                                                                             "glaucoma")
    assert group_of("/d/glaucoma/Glaucoma_001.png", "glaucoma") != one


def test_real_file_names_group_as_the_readme_says(samples):
    assert len(samples) == 841 + 890 + 804 + 871
    assert Counter(s.label for s in samples) == {"cataract": 841, "diabetic_retinopathy": 890, "glaucoma": 804,
                                                 "normal": 871}
    ours = defaultdict(set)
    theirs = defaultdict(set)
    for s in samples:
        ours[s.group].add(s.path)
        theirs[readme_group(s.path, s.label)].add(s.path)
    # the same partition of the images, whatever the keys are called
    assert sorted(map(sorted, ours.values())) == sorted(map(sorted, theirs.values()))
    kinds = Counter(key[0] for key in theirs)
    assert kinds["patient"] > 0 and kinds["source"] > 0 and kinds["single"] > 0
    # some patient numbers really do recur across classes, and then they share one group
    cross = [g for g, paths in theirs.items()
             if g[0] == "patient" and len({os.path.basename(os.path.dirname(p)) for p in paths}) > 1]
    assert cross


# --- grouped_split ---------------------------------------------------------------------------------------

def test_no_group_is_on_two_sides(split):
    check_no_leak(split)
    sides = defaultdict(set)
    for s in split:
        sides[readme_group(s.path, s.label)].add(s.split)
    assert all(len(v) == 1 for v in sides.values())


def test_every_sample_is_kept_in_order_with_a_split(samples, split):
    assert [(s.path, s.label, s.group) for s in split] == [(s.path, s.label, s.group) for s in samples]
    assert {s.split for s in split} == set(FRACTIONS)


def test_classes_are_roughly_stratified(split):
    table = summarize(split)
    class_total = Counter(s.label for s in split)
    for name, fraction in FRACTIONS.items():
        assert abs(sum(table[name].values()) / float(len(split)) - fraction) < 0.02
        for label, total in class_total.items():
            got = table[name][label] / float(total)
            assert abs(got - fraction) < 0.03, (name, label, got)


def test_split_is_deterministic_for_a_seed(samples, split):
    again = grouped_split(samples, FRACTIONS, seed=0)
    assert [s.split for s in again] == [s.split for s in split]
    other = grouped_split(samples, FRACTIONS, seed=1)
    assert [s.split for s in other] != [s.split for s in split]
    check_no_leak(other)


def test_bad_fractions_are_refused(samples):
    with pytest.raises(ValueError, match="sum to 1"):
        grouped_split(samples[:10], {"train": 0.7, "test": 0.2})
    with pytest.raises(ValueError, match="non-negative"):
        grouped_split(samples[:10], {"train": 1.2, "test": -0.2})


def test_check_no_leak_catches_a_crafted_leak():
    rows = [Sample("/d/cataract/7_left.jpg", "cataract", "patient:7", "train"),
            Sample("/d/normal/7_right.jpg", "normal", "patient:7", "test"),
            Sample("/d/glaucoma/_3_1.jpg", "glaucoma", "source:3", "test")]
    with pytest.raises(LeakError) as info:
        check_no_leak(rows)
    assert "patient:7" in str(info.value) and "1 group(s)" in str(info.value)
    assert isinstance(info.value, AssertionError)
    check_no_leak(rows[1:])


def test_a_big_group_lands_whole(tmp_path):
    rows = [Sample("p{}_{}.jpg".format(g, i), "normal" if g % 2 else "glaucoma", "g{}".format(g))
            for g in range(20) for i in range(1 + (g == 0) * 9)]
    out = grouped_split(rows, {"train": 0.5, "test": 0.5}, seed=3)
    assert len({s.split for s in out if s.group == "g0"}) == 1


# --- CSV manifests --------------------------------------------------------------------------------------

def test_manifest_round_trip_with_relative_paths(tmp_path, split):
    chosen = split[:5] + split[-5:]
    csv_path = str(tmp_path / "runs" / "split.csv")
    write_manifest(chosen, csv_path)
    with open(csv_path) as f:
        header = f.readline().strip()
        first_path = f.readline().split(",")[0]
    assert header == "path,label,group,split"
    assert not os.path.isabs(first_path)
    back = read_manifest(csv_path)
    assert [(os.path.normpath(s.path), s.label, s.group, s.split) for s in back] == \
        [(os.path.normpath(s.path), s.label, s.group, s.split) for s in chosen]


def test_manifest_without_group_uses_file_name_rules(tmp_path):
    csv_path = str(tmp_path / "m.csv")
    with open(csv_path, "w") as f:
        f.write("path,label\n/d/normal/55_left.jpg,normal\n/d/cataract/55_right.jpg,cataract\n")
    rows = read_manifest(csv_path)
    assert rows[0].group == rows[1].group == group_of("/d/normal/55_left.jpg", "normal")
    assert rows[0].split == ""


def test_manifest_without_label_column_is_refused(tmp_path):
    csv_path = str(tmp_path / "m.csv")
    with open(csv_path, "w") as f:
        f.write("path,group\na.jpg,g\n")
    with pytest.raises(ValueError, match="missing column"):
        read_manifest(csv_path)


def test_file_name_rule_regexes_are_anchored():
    # a stem that merely contains the pattern is a single image, not a patient
    assert group_of("/d/normal/x1234_left.jpg", "normal").startswith("image:")
    assert re.match(r"^image:normal/", group_of("/d/normal/1234_left_copy.jpg", "normal"))


def test_split_command_is_recorded_and_put_first(tmp_path, monkeypatch):
    from training.provenance import record_split_command, with_split_command
    split_csv = str(tmp_path / "split.csv")
    open(split_csv, "w").close()
    assert with_split_command(["retina-train teacher x"], split_csv) == ["retina-train teacher x"]
    monkeypatch.setattr("sys.argv", ["/usr/bin/retina-train", "split", "--data", "my data", "--out", split_csv])
    record_split_command(split_csv)
    commands = with_split_command(["retina-train teacher x"], split_csv)
    assert commands == ["retina-train split --data 'my data' --out " + split_csv, "retina-train teacher x"]
    assert with_split_command(commands, split_csv) == commands  # not added twice
