"""training.leakage and training.shortcut: planted copies of real images are found; a size shortcut is seen."""
import csv
import os
import shutil
import subprocess
import sys

import pytest

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")
pytest.importorskip("torch", reason="training/ is workstation-only")
pytestmark = pytest.mark.torch

from conftest import CATARACT_JPG, DR_JPEG, GLAUCOMA_AUGMENTED, GLAUCOMA_PNG, NORMAL_BORDERED, REPO_ROOT  # noqa: E402
from edge.io.decode import read_image  # noqa: E402
from training import leakage, shortcut  # noqa: E402
from training.data import Sample, group_of  # noqa: E402
from training.splits import LeakError  # noqa: E402

REAL = [(NORMAL_BORDERED, "normal"), (DR_JPEG, "diabetic_retinopathy"), (GLAUCOMA_PNG, "glaucoma"),
        (GLAUCOMA_AUGMENTED, "glaucoma"), (CATARACT_JPG, "cataract")]


def save_rgb(rgb, path, quality=90):
    ok = cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, path


def real_samples(fundus_dir, tmp_path, fold_of):
    """The five real images copied into tmp_path, each its own group, on the sides ``fold_of`` gives."""
    out = []
    for i, (rel, label) in enumerate(REAL):
        dest = str(tmp_path / "data" / label / os.path.basename(rel))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(fundus_dir, rel), dest)
        out.append(Sample(dest, label, group_of(dest, label), fold_of(i)))
    return out


def planted(fundus_dir, tmp_path):
    """Real images on sides 0/1, plus copies on the other side: byte copy, PNG re-save, resized JPEG, mirror."""
    samples = real_samples(fundus_dir, tmp_path, lambda i: str(i % 2))
    normal, dr, _, aug, cataract = samples
    folder = str(tmp_path / "data" / "planted")
    os.makedirs(folder)
    byte_copy = os.path.join(folder, "copy_of_normal.jpg")
    shutil.copyfile(normal.path, byte_copy)
    rgb = read_image(dr.path)
    png_a, png_b = os.path.join(folder, "dr_a.png"), os.path.join(folder, "dr_b.png")
    cv2.imwrite(png_a, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(png_b, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    small = os.path.join(folder, "cataract_small.jpg")
    c = read_image(cataract.path)
    save_rgb(cv2.resize(c, (c.shape[1] * 3 // 4, c.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA), small, 80)
    mirror = os.path.join(folder, "aug_mirror.jpg")
    save_rgb(np.ascontiguousarray(read_image(aug.path)[:, ::-1]), mirror, 85)

    def other(s):
        return "1" if s.split == "0" else "0"
    extra = [Sample(byte_copy, "normal", "planted:1", other(normal)),
             Sample(png_a, "diabetic_retinopathy", "planted:2", "0"),
             Sample(png_b, "diabetic_retinopathy", "planted:3", "1"),
             Sample(small, "cataract", "planted:4", other(cataract)),
             Sample(mirror, "glaucoma", "planted:5", other(aug))]
    return samples, extra


def test_exact_duplicates_across_sides_are_listed_and_fail(fundus_dir, tmp_path):
    samples, extra = planted(fundus_dir, tmp_path)
    report = leakage.check(samples + extra, log=None)
    pairs = {(os.path.basename(a.path), os.path.basename(b.path), how) for a, b, how in report.exact}
    assert ("3417_left.jpg", "copy_of_normal.jpg", "file") in pairs
    # lossless re-saves: different bytes, the pixels of the decoded JPEG (dr_b is on the JPEG's side)
    assert ("dr_a.png", "dr_b.png", "pixels") in pairs
    assert ("10003_left.jpeg", "dr_a.png", "pixels") in pairs
    assert len(report.exact) == 3
    with pytest.raises(LeakError, match="3 exact duplicate"):
        leakage.require_clean(report)
    assert "copy_of_normal.jpg" in leakage.format_report(report)


def test_resized_and_mirrored_copies_are_near_duplicates_not_exact(fundus_dir, tmp_path):
    samples, extra = planted(fundus_dir, tmp_path)
    report = leakage.check(samples + extra, log=None)
    near = {frozenset((os.path.basename(a.path), os.path.basename(b.path))) for a, b, _ in report.near}
    assert frozenset(("0_left.jpg", "cataract_small.jpg")) in near
    assert frozenset((os.path.basename(GLAUCOMA_AUGMENTED), "aug_mirror.jpg")) in near
    assert report.near_by_class_pair()[("cataract", "cataract")] >= 1
    assert all(d <= leakage.NEAR_THRESHOLD for _, _, d in report.near)
    # the five originals are different photographs: none of them pairs with another
    originals = {os.path.basename(s.path) for s in samples}
    assert not [p for p in near if p <= originals]


def test_the_same_copies_on_one_side_are_not_a_leak(fundus_dir, tmp_path):
    samples, extra = planted(fundus_dir, tmp_path)
    one_side = [s._replace(split="0") for s in samples + extra]
    report = leakage.check(one_side, log=None)
    assert report.exact == [] and report.near == [] and report.near_same_side >= 2
    leakage.require_clean(report)


def test_a_group_on_two_sides_fails_before_hashing(tmp_path):
    samples = [Sample(str(tmp_path / "missing_a.jpg"), "normal", "patient:1", "0"),
               Sample(str(tmp_path / "missing_b.jpg"), "normal", "patient:1", "1")]
    with pytest.raises(LeakError, match="more than one split"):
        leakage.check(samples, log=None)


def test_distance_is_the_smallest_over_orientations_and_symmetric(fundus_dir):
    rgb = read_image(os.path.join(fundus_dir, NORMAL_BORDERED))
    other = read_image(os.path.join(fundus_dir, DR_JPEG))
    h, turned, o = leakage.phash(rgb), leakage.phash(np.ascontiguousarray(np.rot90(rgb))), leakage.phash(other)
    d = leakage.hamming_matrix([h, turned, o], [h, turned, o])
    assert d[0, 1] == 0 and (d == d.T).all() and d[0, 2] > leakage.NEAR_THRESHOLD


def test_measure_counts_known_copies_and_different_groups(fundus_dir, tmp_path):
    samples = real_samples(fundus_dir, tmp_path, lambda i: "0")
    aug = samples[3]
    copy = str(tmp_path / "data" / "glaucoma" / "_9_1234567.jpg")  # another copy of source image 9
    save_rgb(np.ascontiguousarray(read_image(aug.path)[::-1]), copy)
    samples.append(Sample(copy, "glaucoma", group_of(copy, "glaucoma"), "0"))
    distances = leakage.measure_distances(samples, leakage.fingerprints(samples, log=None))
    assert len(distances["known copies"]) == 1 and distances["known copies"][0] <= 2
    assert len(distances["different groups"]) == 6 * 5 // 2 - 1
    assert "known copies" in leakage.format_distances(distances)


def write_folds_csv(samples, path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group", "fold"])
        writer.writerows([s.path, s.label, s.group, s.split] for s in samples)


def test_leakage_command_exits_1_on_a_planted_duplicate_and_0_without(fundus_dir, tmp_path, subprocess_env):
    samples, extra = planted(fundus_dir, tmp_path)
    dirty, clean = str(tmp_path / "dirty.csv"), str(tmp_path / "clean.csv")
    write_folds_csv(samples + extra, dirty)
    write_folds_csv(samples, clean)
    cmd = [sys.executable, "-m", "training", "leakage", "--data", str(tmp_path / "data"), "--folds"]
    proc = subprocess.Popen(cmd + [dirty], cwd=REPO_ROOT, env=subprocess_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 1, out
    assert "LEAK" in out and "copy_of_normal.jpg" in out
    proc = subprocess.Popen(cmd + [clean], cwd=REPO_ROOT, env=subprocess_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out
    assert "no group and no exact duplicate on two sides" in out


def test_jpeg_quality_is_read_back_from_the_quantisation_tables(fundus_dir, tmp_path):
    rgb = read_image(os.path.join(fundus_dir, NORMAL_BORDERED))
    for quality in (35, 60, 75, 95):
        path = str(tmp_path / "q{}.jpg".format(quality))
        save_rgb(rgb, path, quality)
        assert shortcut.features(path)[FEATURE("jpeg_quality")] == quality
    png = str(tmp_path / "x.png")
    cv2.imwrite(png, rgb)
    assert shortcut.features(png)[FEATURE("jpeg_quality")] == 0


def FEATURE(name):
    return shortcut.FEATURES.index(name)


def test_source_only_classifier_finds_a_planted_size_shortcut(fundus_dir, tmp_path):
    """Two classes of the same real photographs, one class saved at 300 px and the other at 400 px."""
    names = sorted(os.listdir(os.path.join(fundus_dir, "normal")))[:20]
    samples = []
    for i, name in enumerate(names):
        label, side = ("a", 300) if i % 2 else ("b", 400)
        rgb = cv2.resize(read_image(os.path.join(fundus_dir, "normal", name)), (side, side),
                         interpolation=cv2.INTER_AREA)
        path = str(tmp_path / label / name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_rgb(rgb, path)
        samples.append(Sample(path, label, "g{}".format(i), ""))
    result = shortcut.cross_validate(samples, [i % 4 for i in range(len(samples))])
    assert result["majority_class_accuracy"] == 0.5
    assert result["accuracy"] == 1.0
    assert "width" in result["tree_on_all"] or "height" in result["tree_on_all"]


def test_tree_learns_a_threshold_and_stops_at_pure_leaves():
    x = np.array([[1.0], [2.0], [3.0], [10.0], [11.0], [12.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    tree = shortcut.fit_tree(x, y, 2, depth=3, min_leaf=1)
    assert tree[0] == "split" and tree[2] == 6.5 and tree[3] == ("leaf", 0) and tree[4] == ("leaf", 1)
    assert shortcut.predict_tree(tree, np.array([[0.0], [7.0]])).tolist() == [0, 1]
