"""OCT training data: OCT2017 and DICOM grouping rules, DICOM frames as samples, modality detection, GREY."""
import csv
import os

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.torch  # imports training/

pytest.importorskip("pydicom", reason="DICOM samples need pydicom")

from edge.io.dicom import Volume  # noqa: E402
from training import data as datalib  # noqa: E402
from training.splits import LeakError, check_no_leak, grouped_split  # noqa: E402
from training.synthetic_oct import make_bscan, opt_dicom, write_dataset  # noqa: E402


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def volume(seed, frames=1, **tags):
    scans = np.stack([make_bscan("DME", seed + i, 64, 96) for i in range(frames)])
    return opt_dicom(scans if frames > 1 else scans[0], **tags)


def test_oct2017_names_group_by_patient_across_classes():
    group = datalib.group_of("/d/CNV/CNV-1016042-1.jpeg", "CNV")
    assert group == "patient:1016042"
    assert group == datalib.group_of("/d/CNV/CNV-1016042-17.jpeg", "CNV")
    assert group == datalib.group_of("/d/DME/DME-1016042-2.png", "DME")  # one patient, two classes
    assert group != datalib.group_of("/d/CNV/CNV-1016043-1.jpeg", "CNV")
    # the fundus4 rules are untouched
    assert datalib.group_of("/d/normal/1234_left.jpg", "normal") == "patient:1234"
    assert datalib.group_of("/d/NORMAL/normal-scan.png", "NORMAL").startswith("image:")


def test_dicom_groups_by_patient_then_study_then_series_else_itself(tmp_path):
    right = write(str(tmp_path / "a.dcm"), volume(1, patient_id="P7", laterality="R", study_uid="1.2.3",
                                                  series_uid="1.2.3.4"))
    left = write(str(tmp_path / "b.dcm"), volume(2, patient_id="P7", laterality="L", study_uid="1.2.9",
                                                 series_uid="1.2.9.4"))
    study = write(str(tmp_path / "c.dcm"), volume(3, study_uid="1.2.5", series_uid="1.2.5.1"))
    series = write(str(tmp_path / "d.dcm"), volume(4, series_uid="1.2.6.1"))
    bare = write(str(tmp_path / "e.dcm"), volume(5))
    assert datalib.group_of(right, "DME") == datalib.group_of(left, "DME") == "patient:P7"  # both eyes together
    assert datalib.group_of(study, "DME") == "study:1.2.5"
    assert datalib.group_of(series, "DME") == "series:1.2.6.1"
    warnings = []
    assert datalib.group_of(bare, "DME", log=warnings.append) == "file:" + os.path.abspath(bare)
    assert len(warnings) == 1 and bare in warnings[0] and "PatientID" in warnings[0]


def test_a_multi_frame_volume_is_one_sample_per_frame_in_one_group(tmp_path):
    root = tmp_path / "data"
    vol = write(str(root / "DME" / "scan.dcm"), volume(10, frames=4, series_uid="1.9.9"))
    write(str(root / "DME" / "single.dcm"), volume(20, series_uid="1.9.8"))
    cv2.imwrite(str(root / "NORMAL" / "NORMAL-55-1.png"), make_bscan("NORMAL", 1, 64, 96))
    samples = datalib.scan_folder(str(root))
    frames = [s for s in samples if s.path.startswith(vol)]
    assert [s.path for s in frames] == ["{}#frame={}".format(vol, i) for i in range(4)]
    assert {s.group for s in frames} == {"series:1.9.9"}
    assert any(s.path.endswith("single.dcm") for s in samples)  # a single frame keeps its plain path
    # each frame reads as edge's DICOM reader decodes it
    with open(vol, "rb") as f:
        reference = Volume(f.read(), vol)
    for i in (0, 3):
        assert np.array_equal(datalib.read_sample("{}#frame={}".format(vol, i)), reference.frame(i))
    with pytest.raises(datalib.ImageError, match="frame 4"):
        datalib.read_sample(vol + "#frame=4")


def test_a_csv_may_name_one_frame_and_cannot_split_a_volume(tmp_path):
    vol = write(str(tmp_path / "v.dcm"), volume(30, frames=3, patient_id="Q1"))
    rows = [("v.dcm#frame=0", "DME", "a", "train"), ("v.dcm#frame=2", "DME", "b", "test")]
    manifest = str(tmp_path / "data.csv")
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "group", "split")] + rows)
    samples = datalib.read_manifest(manifest)
    assert [s.path for s in samples] == [vol + "#frame=0", vol + "#frame=2"]
    with pytest.raises(LeakError, match="v.dcm"):  # the CSV's groups differ, the file is still one volume
        check_no_leak(samples)
    names = [("CNV-9-1.png", "CNV", "x", "train"), ("DME-9-2.png", "DME", "y", "val")]
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "group", "split")] + names)
    with pytest.raises(LeakError, match="patient:9"):
        check_no_leak(datalib.read_manifest(manifest))


def test_grouped_split_of_synthetic_folders_keeps_patients_and_volumes_whole(tmp_path):
    root = str(tmp_path / "syn")
    write_dataset(root, 9, seed=1, dicom=True, size=(64, 96), log=None)
    samples = grouped_split(datalib.scan_folder(root), {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    check_no_leak(samples)
    sides = {}
    for s in samples:
        sides.setdefault(datalib.split_frame(s.path)[0], set()).add(s.split)
        sides.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in sides.values())
    assert len(samples) == 4 * (9 + 1 + 3)
    assert {s.split for s in samples} == {"train", "val", "test"}


def test_modality_is_decided_from_the_data(tmp_path, fundus_dir):
    root = str(tmp_path / "syn")
    write_dataset(root, 3, seed=2, dicom=True, size=(64, 96), log=None)
    modality, reason = datalib.detect_modality(datalib.scan_folder(root))
    assert modality == "oct" and "grey" in reason and "OPT" in reason
    only_dicom = [s for s in datalib.scan_folder(root) if datalib.is_dicom(s.path)]
    assert datalib.detect_modality(only_dicom) == ("oct", "every file is DICOM with Modality OPT")
    fundus = datalib.scan_folder(fundus_dir)[::400]
    modality, reason = datalib.detect_modality(fundus)
    assert modality == "fundus" and "colour" in reason
    with pytest.raises(ValueError, match="--modality"):
        datalib.detect_modality(fundus + only_dicom)


def test_prepared_images_for_a_grey_network_have_one_channel(tmp_path):
    root = str(tmp_path / "syn")
    write_dataset(root, 2, seed=4, dicom=True, size=(64, 96), log=None)
    samples = datalib.scan_folder(root)
    spec = {"colour_order": "GREY", "roi": {"kind": "retina_band"}, "resize": {"size": [32, 32],
            "interpolation": "area"}, "scale": 1 / 255.0, "mean": [0.5], "std": [0.5]}
    grey = datalib.prepare_images(samples, spec, cache_dir=str(tmp_path / "cache"), log=None)
    assert grey.shape == (len(samples), 32, 32, 1)
    rgb = datalib.prepare_images(samples, dict(spec, colour_order="RGB", mean=[0.5] * 3, std=[0.5] * 3),
                                 cache_dir=str(tmp_path / "cache"), log=None)
    assert rgb.shape == (len(samples), 32, 32, 3)  # a separate cache entry, not the grey one
    assert np.array_equal(rgb[..., 0], grey[..., 0])  # a grey B-scan: the grey value is the stored value
    assert len(os.listdir(str(tmp_path / "cache"))) == 2
