"""edge/checks.py + edge/quality.py + the bundle's modality: the verdicts given before the network runs.

Gradable images are real fundus4 photographs (skipped with a reason where the data is absent);
ungradable ones are made from them by the test. Python 3.6, no torch.
"""
import os

import cv2
import numpy as np
import pytest

from conftest import CATARACT_JPG, DR_JPEG, GLAUCOMA_AUGMENTED, GLAUCOMA_PNG, NORMAL_BORDERED
from edge.checks import check_modality, check_quality, default_checks
from edge.io.decode import read_image
from edge.quality import MIN_BRIGHT, MIN_DETAIL, assess, working_copy
from edge.records import Frame
from models.bundle import BundleError, load_bundle, validate_manifest, write_bundle

REAL = (NORMAL_BORDERED, DR_JPEG, GLAUCOMA_PNG, GLAUCOMA_AUGMENTED, CATARACT_JPG)


@pytest.fixture
def oct_bundle(tmp_path, tiny_onnx_path, make_manifest):
    manifest = make_manifest()
    manifest["modality"] = "oct"
    with open(tiny_onnx_path, "rb") as f:
        return write_bundle(str(tmp_path / "oct-bundle"), f.read(), manifest)


# --- the bundle's modality ---------------------------------------------------------------------------

def test_bundles_without_a_modality_are_fundus_models(tiny_bundle, oct_bundle):
    assert "modality" not in tiny_bundle.manifest and tiny_bundle.modality == "fundus"
    assert load_bundle(oct_bundle.root).modality == "oct"


@pytest.mark.parametrize("value", ["xray", "", 3, None])
def test_an_unknown_modality_is_refused_naming_the_field(valid_manifest, value):
    valid_manifest["modality"] = value
    valid_manifest["model"].update(file="model.onnx", sha256="0" * 64)
    with pytest.raises(BundleError, match="field 'modality'"):
        validate_manifest(valid_manifest)


# --- modality ------------------------------------------------------------------------------------------

def test_an_oct_b_scan_into_a_fundus_model_is_skipped_with_a_reason(tiny_bundle):
    frame = Frame("/x/oct.dcm#7", image=np.zeros((8, 8, 3), np.uint8),
                  meta={"modality": "oct", "dicom_modality": "OPT", "index": 7})
    result = check_modality(frame, tiny_bundle)
    assert result.status == "skipped" and result.path == "/x/oct.dcm#7"
    assert result.label is None and result.probs is None
    assert result.error == ("modality: OCT B-scan (DICOM Modality OPT), but the model tiny4-test screens "
                            "fundus photographs only")


def test_photographs_pass_a_fundus_model_and_are_skipped_by_an_oct_one(tiny_bundle, oct_bundle):
    photo = Frame("/x/a.jpg", meta={"modality": "fundus"})
    camera = Frame("csi://0", meta={})  # a frame without a modality is a photograph
    assert check_modality(photo, tiny_bundle) is None and check_modality(camera, tiny_bundle) is None
    assert check_modality(photo, oct_bundle).error.startswith("modality: fundus photograph, but the model")
    other = check_modality(Frame("/x/xc.dcm", meta={"modality": "xc", "dicom_modality": "XC"}), tiny_bundle)
    assert other.status == "skipped" and "xc image (DICOM Modality XC)" in other.error


def test_default_checks_are_modality_then_quality_for_fundus_models(tiny_bundle, oct_bundle):
    assert default_checks(tiny_bundle) == [check_modality, check_quality]
    assert default_checks(oct_bundle) == [check_modality]  # the fundus gate means nothing for B-scans


# --- the quality gate ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", REAL)
def test_real_fundus_photographs_pass_and_keep_their_measures(tiny_bundle, fundus_dir, rel):
    frame = Frame(rel, image=read_image(os.path.join(fundus_dir, rel)))
    assert check_quality(frame, tiny_bundle) is None
    assert frame.meta["quality_brightness"] >= MIN_BRIGHT and frame.meta["quality_detail"] >= MIN_DETAIL


def test_a_black_or_uniform_frame_has_no_retina(tiny_bundle):
    for image in (np.zeros((300, 400, 3), np.uint8), np.full((300, 400, 3), 5, np.uint8)):
        result = check_quality(Frame("/x/cap.jpg", image=image), tiny_bundle)
        assert result.status == "ungradable" and result.path == "/x/cap.jpg"
        assert result.error.startswith("quality: no retina found")


def test_a_far_too_dark_photograph_is_ungradable(tiny_bundle, fundus_dir):
    rgb = read_image(os.path.join(fundus_dir, NORMAL_BORDERED))
    dark = (rgb.astype(np.float32) * 0.1).astype(np.uint8)  # a tenth of the exposure
    result = check_quality(Frame("dark.jpg", image=dark), tiny_bundle)
    assert result.status == "ungradable" and result.error.startswith("quality: far too dark (brightest retina")


def test_a_featureless_disc_is_far_too_blurred(tiny_bundle, fundus_dir):
    rgb = read_image(os.path.join(fundus_dir, DR_JPEG))
    mask = rgb.max(axis=2) > 10
    flat = np.zeros_like(rgb)
    flat[mask] = rgb[mask].mean(axis=0).astype(np.uint8)
    flat = cv2.GaussianBlur(flat, (0, 0), 3)  # a soft rim, as defocus leaves it
    result = check_quality(Frame("flat.jpg", image=flat), tiny_bundle)
    assert result.status == "ungradable" and result.error.startswith("quality: far too blurred")


def test_cataract_haze_is_not_taken_for_blur(fundus_dir):
    """The blurriest cataract photographs of the development data stay gradable (see edge/quality.py)."""
    for rel in (os.path.join("cataract", "_121_3847336.jpg"), os.path.join("cataract", "2168_left.jpg")):
        path = os.path.join(fundus_dir, rel)
        if os.path.isfile(path):
            q = assess(read_image(path))
            assert q.reason == "" and q.detail < 2 * MIN_DETAIL  # close to the line, on the right side of it


def test_the_gate_measures_a_large_photograph_like_its_small_copy(fundus_dir):
    rgb = read_image(os.path.join(fundus_dir, NORMAL_BORDERED))
    big = cv2.resize(rgb, (3001, 2999), interpolation=cv2.INTER_CUBIC)
    assert max(working_copy(big).shape[:2]) == 256
    small, large = assess(rgb), assess(big)
    assert large.reason == "" and abs(large.brightness - small.brightness) < 12

