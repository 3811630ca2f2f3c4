"""edge.modality.guess_modality: real fundus photographs -> fundus, synthetic B-scans -> oct, odd input -> a
defined answer. Python 3.6 safe, no torch. The time per guess is printed by benchmarks/modality_classifier.py,
not asserted here."""
import os

import cv2
import numpy as np
import pytest

from conftest import CATARACT_JPG, DR_JPEG, GLAUCOMA_AUGMENTED, GLAUCOMA_PNG, NORMAL_BORDERED
from edge.io.decode import read_image
from edge.modality import Guess, guess_modality
from tests.synthetic import bscan

# across the four classes and the sources (400x400 JPEG, .jpeg, 266x400 PNG, 256x256 augmented copy), and
# the photograph the benchmark finds most OCT-like: a disc cropped at top and bottom (row means vary a lot)
PHOTOGRAPHS = (NORMAL_BORDERED, DR_JPEG, GLAUCOMA_PNG, GLAUCOMA_AUGMENTED, CATARACT_JPG,
               os.path.join("diabetic_retinopathy", "10444_right.jpeg"))
SIZES = ((496, 512), (496, 768), (496, 1024), (96, 128), (1024, 1000))   # rows, cols


def grey_of(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


@pytest.mark.parametrize("name", PHOTOGRAPHS)
def test_real_fundus_photographs_are_fundus_in_colour_grey_and_green(fundus_dir, name):
    rgb = read_image(os.path.join(fundus_dir, name))
    grey = grey_of(rgb)
    for label, image in (("colour", rgb), ("grey", grey), ("grey as RGB", cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)),
                         ("green channel", np.ascontiguousarray(rgb[..., 1]))):
        guess = guess_modality(image)
        assert guess.modality == "fundus", (label, guess)
        assert guess.score < 0, (label, guess)


def test_colour_is_extra_evidence_for_a_fundus_photograph(fundus_dir):
    rgb = read_image(os.path.join(fundus_dir, NORMAL_BORDERED))
    assert guess_modality(rgb).score < guess_modality(grey_of(rgb)).score
    assert "warmth" in guess_modality(rgb).reason


@pytest.mark.parametrize("rows,cols", SIZES)
def test_synthetic_bscans_are_oct_at_several_sizes(rows, cols):
    for seed in (0, 7):
        scan = bscan(rows, cols, seed=seed)
        for label, image in (("grey", scan), ("grey as RGB", cv2.cvtColor(scan, cv2.COLOR_GRAY2RGB))):
            guess = guess_modality(image)
            assert guess.modality == "oct", (label, rows, cols, seed, guess)
            assert guess.score > 0.5, (label, rows, cols, seed, guess)


def test_sixteen_bit_and_false_colour_bscans_are_oct():
    deep = bscan(496, 512, seed=3, dtype=np.uint16)          # 12 bits used, as the raw export holds them
    assert guess_modality(deep).modality == "oct"
    scan = bscan(496, 1024, seed=4)
    for cmap in (cv2.COLORMAP_JET, cv2.COLORMAP_HOT):         # HOT is red/orange, like a fundus photograph
        coloured = cv2.cvtColor(cv2.applyColorMap(scan, cmap), cv2.COLOR_BGR2RGB)
        guess = guess_modality(coloured)
        assert guess.modality == "oct", (cmap, guess)


@pytest.mark.parametrize("image", [
    np.zeros((0, 0, 3), np.uint8), np.zeros((1, 1, 3), np.uint8), np.full((5, 7, 3), 200, np.uint8),
    np.zeros((7, 300), np.uint8), np.zeros((300, 400, 3), np.uint8), np.full((64, 64), 255, np.uint8),
    np.zeros((50, 50, 4), np.uint8), np.zeros((40, 40, 1), np.uint16), np.zeros(10, np.uint8),
], ids=["empty", "1x1", "5x7", "7x300 grey", "black", "white grey", "RGBA blank", "1-channel uint16", "1-D"])
def test_tiny_or_blank_images_get_a_defined_answer(image):
    guess = guess_modality(image)
    assert isinstance(guess, Guess)
    assert guess.modality == "fundus" and guess.score == 0.0
    assert "fundus by default" in guess.reason


def test_the_guess_is_a_namedtuple_with_a_readable_reason():
    guess = guess_modality(bscan(496, 512, seed=2))
    modality, score, reason = guess
    assert (modality, score, reason) == (guess.modality, guess.score, guess.reason)
    assert isinstance(score, float) and reason.startswith("clear oct")
