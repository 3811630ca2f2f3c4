"""The synthetic OCT generator: deterministic, labelled synthetic, and its classes differ by their lesion."""
import os
import re

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.torch  # imports training/ (the generator itself needs no torch)

from edge.io.decode import read_image  # noqa: E402
from edge.io.dicom import Volume  # noqa: E402
from training import synthetic_oct  # noqa: E402
from training.cli import main as retina_train  # noqa: E402

ROWS, COLS = 160, 256
SEEDS = range(30)


def test_same_seed_same_image_and_other_seeds_differ():
    a = synthetic_oct.make_bscan("CNV", 7, ROWS, COLS)
    assert a.dtype == np.uint8 and a.shape == (ROWS, COLS)
    assert np.array_equal(a, synthetic_oct.make_bscan("CNV", 7, ROWS, COLS))
    assert not np.array_equal(a, synthetic_oct.make_bscan("CNV", 8, ROWS, COLS))
    wide = synthetic_oct.make_bscan("DME", 7, bits=16)
    assert wide.dtype == np.uint16 and wide.max() > 255  # the full 16-bit range is used
    assert 160 <= wide.shape[0] <= 320 and wide.shape[1] > wide.shape[0]


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="GA"):
        synthetic_oct.make_bscan("GA", 0)


def _median(values, size):
    padded = np.pad(values.astype(np.float64), size // 2, mode="edge")
    return np.array([np.median(padded[i:i + size]) for i in range(len(values))])


def lesion_statistics(img):
    """(RPE bumpiness, local thickening) from the image alone: the 98th percentile of the RPE line's distance
    from its running median, and the thickest column of the bright band over its median thickness."""
    f = cv2.GaussianBlur(img.astype(np.float64), (0, 0), sigmaX=2, sigmaY=1.5)
    bright = f > 0.35 * np.percentile(f, 99.5)
    rows, cols = f.shape
    first = np.argmax(bright, 0)
    last = rows - 1 - np.argmax(bright[::-1], 0)
    thick = last - first
    below_middle = np.arange(rows)[:, None] > (first + 0.5 * np.median(thick))[None]
    rpe = np.argmax(np.where(below_middle, f, -1), 0)  # the RPE: the brightest row of the outer half
    bumps = np.percentile(np.abs(rpe - _median(rpe, cols // 6)), 98)
    return bumps, thick.max() / float(np.median(thick))


@pytest.fixture(scope="module")
def statistics():
    return {c: np.array([lesion_statistics(synthetic_oct.make_bscan(c, s, ROWS, COLS)) for s in SEEDS])
            for c in synthetic_oct.CLASSES}


def test_each_lesion_shows_in_its_statistic_and_normal_in_neither(statistics):
    normal = statistics["NORMAL"]
    bumps_cut, thick_cut = np.percentile(normal[:, 0], 90), np.percentile(normal[:, 1], 90)

    def share_above(cls, column, cut):
        return float(np.mean(statistics[cls][:, column] > cut))
    # CNV lifts the RPE in one mass (bumpy and locally thick); drusen make the RPE bumpy without thickening;
    # DME thickens the retina without bumping the RPE
    assert share_above("CNV", 0, bumps_cut) >= 0.9 and share_above("CNV", 1, thick_cut) >= 0.9
    assert share_above("DRUSEN", 0, bumps_cut) >= 0.9 and share_above("DRUSEN", 1, thick_cut) <= 0.5
    assert share_above("DME", 1, thick_cut) >= 0.9 and share_above("DME", 0, bumps_cut) <= 0.5


OCT2017_NAME = re.compile(r"^(CNV|DME|DRUSEN|NORMAL)-(\d+)-(\d+|vol\d)\.(png|jpeg|tif|dcm)$")


def test_dataset_folders_names_kinds_and_dicom(tmp_path, capsys):
    out = str(tmp_path / "syn")
    assert retina_train(["synth-oct", "--out", out, "--per-class", "6", "--dicom", "--seed", "3",
                         "--size", "96", "128"]) == 0
    said = capsys.readouterr().out
    assert "synthetic" in said.lower() and "not patient data" in said
    with open(os.path.join(out, synthetic_oct.SYNTHETIC_NOTE)) as f:
        assert "SYNTHETIC" in f.read()
    patients = {}
    for cls in synthetic_oct.CLASSES:
        names = sorted(os.listdir(os.path.join(out, cls)))
        assert len(names) == 8, names  # 6 B-scans + one single-frame and one 3-frame DICOM
        for name in names:
            match = OCT2017_NAME.match(name)
            assert match and match.group(1) == cls, name
            patients.setdefault(match.group(2), set()).add(cls)
    assert all(len(classes) == 1 for classes in patients.values())  # patient numbers are unique over the set
    assert len(patients) == 4 * (2 + 2)  # 3 B-scans per patient, and a patient per DICOM file
    # 16-bit PNG and TIFF are written and decode to the same picture as an 8-bit file would
    for name in ("CNV/" + n for n in os.listdir(os.path.join(out, "CNV"))):
        path = os.path.join(out, name)
        if name.endswith((".png", ".tif")):
            raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            rgb = read_image(path)
            assert rgb.shape == (96, 128, 3) and raw.ndim == 2
    depths = {cv2.imread(os.path.join(out, "DME", n), cv2.IMREAD_UNCHANGED).dtype
              for n in os.listdir(os.path.join(out, "DME")) if n.endswith((".png", ".tif"))}
    assert depths == {np.dtype(np.uint8), np.dtype(np.uint16)}
    volumes = [n for n in os.listdir(os.path.join(out, "DRUSEN")) if n.endswith(".dcm")]
    for name in volumes:
        with open(os.path.join(out, "DRUSEN", name), "rb") as f:
            volume = Volume(f.read(), name)
        assert volume.modality == "oct"
        assert volume.frames == (3 if "vol3" in name else 1)
        assert volume.ds.PatientID == name.split("-")[1] and volume.ds.Laterality in ("L", "R")
        assert volume.ds.SeriesInstanceUID and volume.ds.StudyInstanceUID
        assert volume.frame(volume.frames - 1).shape == (96, 128, 3)


def test_same_seed_writes_the_same_files(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    synthetic_oct.write_dataset(a, 4, seed=5, size=(64, 96), log=None)
    synthetic_oct.write_dataset(b, 4, seed=5, size=(64, 96), log=None)
    for cls in synthetic_oct.CLASSES:
        names = sorted(os.listdir(os.path.join(a, cls)))
        assert names == sorted(os.listdir(os.path.join(b, cls)))
        for name in names:
            with open(os.path.join(a, cls, name), "rb") as fa, open(os.path.join(b, cls, name), "rb") as fb:
                assert fa.read() == fb.read(), name
