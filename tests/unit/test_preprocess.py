"""edge/preprocess.py on real fundus images and on images made here (Python 3.6, no torch)."""
import os

import cv2
import numpy as np
import pytest

from conftest import CATARACT_JPG, DR_JPEG, GLAUCOMA_AUGMENTED, GLAUCOMA_PNG, NORMAL_BORDERED
from edge.io.decode import ImageError, decode_image, read_image, to_rgb8
from edge.preprocess import (centre_box, find_fundus_disc, find_retina_band, normalize, pad_square, prepare, preprocess,
                             region_of_interest, to_grey)

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def make_spec(size=32, roi="fundus_disc", colour_order="RGB", mean=MEAN, std=STD, interpolation="area"):
    return {"colour_order": colour_order, "roi": {"kind": roi, "threshold": 10},
            "resize": {"size": [size, size], "interpolation": interpolation},
            "scale": 1.0 / 255.0, "mean": list(mean), "std": list(std)}


def disc_image(h=400, w=400, centre=None, radius=100, colour=(200, 120, 60)):
    """Black RGB frame with one bright disc (RGB order)."""
    img = np.zeros((h, w, 3), np.uint8)
    cx, cy = centre or (w // 2, h // 2)
    cv2.circle(img, (cx, cy), radius, colour, thickness=-1)
    return img


REAL = [NORMAL_BORDERED, DR_JPEG, GLAUCOMA_PNG, GLAUCOMA_AUGMENTED, CATARACT_JPG]


@pytest.mark.parametrize("rel", REAL)
def test_real_images_become_1x3xHxW_float32_in_the_normalised_range(fundus_dir, rel):
    rgb = read_image(os.path.join(fundus_dir, rel))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    spec = make_spec(size=48)
    x = preprocess(rgb, spec)
    assert x.shape == (1, 3, 48, 48)
    assert x.dtype == np.float32
    assert x.flags["C_CONTIGUOUS"]
    mean = np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, np.float32).reshape(1, 3, 1, 1)
    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
    assert np.all(x >= lo - 1e-5) and np.all(x <= hi + 1e-5)
    # undoing mean/std/scale gives back exactly the prepared uint8 pixels
    prepared = prepare(rgb, spec)
    back = (x * std + mean) * 255.0
    np.testing.assert_allclose(back[0].transpose(1, 2, 0), prepared.astype(np.float32), atol=1e-3)
    # the black border is there (darkest value hits the lower bound) and so is the bright retina
    assert np.allclose(x.min(axis=(0, 2, 3)), lo.ravel(), atol=1e-5)
    assert x[0, 0].max() > 0.0


def test_real_image_channel_order_is_rgb(fundus_dir):
    path = os.path.join(fundus_dir, NORMAL_BORDERED)
    rgb = read_image(path)
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])
    # a fundus is red: R > B on average inside the disc
    assert rgb[..., 0].mean() > rgb[..., 2].mean()


def test_fundus_disc_found_and_border_cropped_on_a_real_normal_image(fundus_dir):
    rgb = read_image(os.path.join(fundus_dir, NORMAL_BORDERED))
    h, w = rgb.shape[:2]
    assert (h, w) == (400, 400)
    assert rgb[:5, :5].max() < 10 and rgb[-5:, -5:].max() < 10  # black border in the original
    box = find_fundus_disc(rgb, 10)
    assert box is not None
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert (x1 - x0) * (y1 - y0) < 0.8 * h * w  # smaller than the frame
    # the box holds (nearly) every bright pixel: the disc is not cut
    bright = rgb.max(axis=2) > 10
    assert bright[y0:y1, x0:x1].sum() >= 0.995 * bright.sum()

    square, got_box = region_of_interest(rgb, {"kind": "fundus_disc", "threshold": 10})
    assert got_box == box
    side = max(x1 - x0, y1 - y0)
    assert square.shape == (side, side, 3)

    prepared = prepare(rgb, make_spec(size=64))
    assert prepared.shape == (64, 64, 3) and prepared.dtype == np.uint8
    for corner in (prepared[0, 0], prepared[0, -1], prepared[-1, 0], prepared[-1, -1]):
        assert corner.max() < 20
    assert prepared[28:36, 28:36].mean() > 60
    # after the crop the disc reaches the frame's edges on its long axis
    inner = find_fundus_disc(prepared, 10)
    assert inner is not None
    assert inner[1] <= 1 and inner[3] >= 63


def test_synthetic_disc_box_is_exact_and_crop_fills_the_frame():
    rgb = disc_image(400, 400, radius=100)
    box = find_fundus_disc(rgb, 10)
    # the disc spans 100..300; its extreme rows/columns hold too few pixels (< 2%) to count
    assert box is not None
    assert np.allclose(box, (100, 100, 301, 301), atol=2)
    prepared = prepare(rgb, make_spec(size=32, interpolation="nearest"))
    assert prepared[0, 0].max() == 0 and prepared[-1, -1].max() == 0
    np.testing.assert_array_equal(prepared[16, 16], [200, 120, 60])
    assert prepared[16, 0].max() > 0 and prepared[0, 16].max() > 0  # disc touches all four sides
    # without the ROI step the disc stays small in the middle
    plain = prepare(rgb, make_spec(size=32, roi="none", interpolation="nearest"))
    assert plain[16, 2].max() == 0 and plain[2, 16].max() == 0


def test_box_is_exact_for_a_sharp_edged_region():
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[50:250, 120:280] = (0, 0, 90)  # only blue: the threshold applies to the brightest channel
    assert find_fundus_disc(rgb, 10) == (120, 50, 280, 250)
    rgb[50:250, 120:280] = 10  # not brighter than the threshold
    assert find_fundus_disc(rgb, 10) is None
    assert find_fundus_disc(rgb, 9) == (120, 50, 280, 250)


def test_off_centre_region_in_a_wide_frame_is_cropped_and_square_padded():
    rgb = np.zeros((200, 500, 3), np.uint8)
    rgb[40:160, 340:460] = 200
    rgb[60:140, 380:420] = 50
    square, box = region_of_interest(rgb, {"kind": "fundus_disc", "threshold": 10})
    assert box == (340, 40, 460, 160)
    assert square.shape == (120, 120, 3)
    np.testing.assert_array_equal(square, rgb[40:160, 340:460])
    rgb = disc_image(200, 500, centre=(400, 100), radius=60)
    square, box = region_of_interest(rgb, {"kind": "none"})
    assert box is None
    assert square.shape == (500, 500, 3)
    # the 200-row frame is centred: 150 black rows above it
    assert square[:150].max() == 0 and square[150:350].max() > 0 and square[350:].max() == 0


def test_all_black_image_falls_back_to_the_full_frame():
    black = np.zeros((300, 200, 3), np.uint8)
    assert find_fundus_disc(black, 10) is None
    square, box = region_of_interest(black, {"kind": "fundus_disc", "threshold": 10})
    assert box is None
    assert square.shape == (300, 300, 3)
    x = preprocess(black, make_spec(size=16))
    assert x.shape == (1, 3, 16, 16)
    expected = (0.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    np.testing.assert_allclose(x[0, :, 5, 5], expected, rtol=1e-6)


def test_a_tiny_bright_speck_is_not_trusted_as_a_disc():
    rgb = np.zeros((400, 400, 3), np.uint8)
    rgb[190:210, 190:210] = 255  # 0.25% of the frame, far below the 10% minimum
    assert find_fundus_disc(rgb, 10) is None


def test_unknown_roi_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown roi kind"):
        region_of_interest(disc_image(), {"kind": "optic_cup"})


def test_pad_square_centres_the_image():
    img = np.full((2, 6, 3), 7, np.uint8)
    out = pad_square(img)
    assert out.shape == (6, 6, 3)
    assert out[2:4].min() == 7 and out[:2].max() == 0 and out[4:].max() == 0


def test_bgr_colour_order_reverses_channels():
    prepared = np.zeros((4, 4, 3), np.uint8)
    prepared[..., 0], prepared[..., 1], prepared[..., 2] = 10, 20, 30
    unit = dict(mean=[0, 0, 0], std=[1, 1, 1])
    rgb = normalize(prepared, make_spec(size=4, **unit))
    bgr = normalize(prepared, make_spec(size=4, colour_order="BGR", **unit))
    np.testing.assert_allclose(rgb[0, :, 0, 0], np.array([10, 20, 30]) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(bgr[0], rgb[0, ::-1])


def test_normalize_batches_nhwc_to_nchw():
    batch = np.arange(2 * 3 * 5 * 3, dtype=np.uint8).reshape(2, 3, 5, 3)
    x = normalize(batch, make_spec(size=3, mean=[0, 0, 0], std=[1, 1, 1]))
    assert x.shape == (2, 3, 3, 5) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(x[1, 2, 1, 4], batch[1, 1, 4, 2] / 255.0, rtol=1e-6)


# --- decoding: file types and pixel formats ---------------------------------------------------------

def _bgr_pattern(h=24, w=32, dtype=np.uint8, values=(10, 120, 250)):
    """Channels in OpenCV's B, G, R order with distinct values."""
    img = np.zeros((h, w, 3), dtype)
    img[..., 0], img[..., 1], img[..., 2] = values
    return img


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_colour_files_decode_to_rgb_uint8(tmp_path, ext):
    path = str(tmp_path / ("img" + ext))
    assert cv2.imwrite(path, _bgr_pattern())
    rgb = read_image(path)
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [250, 120, 10])


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    path = str(tmp_path / "deep.png")
    img = _bgr_pattern(dtype=np.uint16, values=(0, 257 * 100, 65535))
    img[0, 0] = (257 * 3 + 100, 128, 65535 - 200)  # rounding: 871 -> 3, 128 -> 0 (.498), 65335 -> 254
    assert cv2.imwrite(path, img)
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED).dtype == np.uint16
    rgb = read_image(path)
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1, 1], [255, 100, 0])
    np.testing.assert_array_equal(rgb[0, 0], [254, 0, 3])


def test_16_bit_tiff_is_scaled_to_8_bits(tmp_path):
    path = str(tmp_path / "deep.tif")
    assert cv2.imwrite(path, _bgr_pattern(dtype=np.uint16, values=(65535, 0, 257 * 50)))
    np.testing.assert_array_equal(read_image(path)[3, 3], [50, 0, 255])


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_greyscale_files_become_three_equal_channels(tmp_path, ext):
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    path = str(tmp_path / ("grey" + ext))
    assert cv2.imwrite(path, grey)
    rgb = read_image(path)
    assert rgb.shape == (16, 32, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    if ext != ".jpg":
        np.testing.assert_array_equal(rgb[..., 0], grey)


def test_bgra_png_drops_alpha_by_compositing_over_black(tmp_path):
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[...] = (10, 120, 250, 255)
    bgra[:, :3, 3] = 0  # transparent: black, like the camera's border (tests/unit/test_decode.py has more)
    path = str(tmp_path / "alpha.png")
    assert cv2.imwrite(path, bgra)
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED).shape == (10, 12, 4)
    rgb = read_image(path)
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[5, 5], [250, 120, 10])
    np.testing.assert_array_equal(rgb[5, 1], [0, 0, 0])


def test_to_rgb8_handles_single_channel_arrays_and_rejects_others():
    grey = np.full((3, 4, 1), 9, np.uint8)
    np.testing.assert_array_equal(to_rgb8(grey), np.full((3, 4, 3), 9, np.uint8))
    with pytest.raises(ImageError, match="unsupported pixel type float32"):
        to_rgb8(np.zeros((3, 4, 3), np.float32), "x.exr")
    with pytest.raises(ImageError, match="unsupported image shape"):
        to_rgb8(np.zeros((3, 4, 2), np.uint8), "two.png")


def test_empty_and_garbage_bytes_raise_image_error_naming_the_source(tmp_path):
    with pytest.raises(ImageError, match="scan.jpg: empty file"):
        decode_image(b"", "scan.jpg")
    with pytest.raises(ImageError, match="notes.jpg: not a readable image"):
        decode_image(b"hello, not an image\n" * 10, "notes.jpg")
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(ImageError) as info:
        read_image(missing)
    assert missing in str(info.value) and "cannot read file" in str(info.value)


# --- OCT rules: retina band, centre square, one grey channel ----------------------------------------

def test_every_kind_and_interpolation_of_the_vocabulary_has_a_reference():
    from edge.preprocess import _INTERPOLATION, ROI_FINDERS
    from models.bundle import INTERPOLATIONS, ROI_KINDS
    assert set(ROI_FINDERS) == set(ROI_KINDS) and set(_INTERPOLATION) == set(INTERPOLATIONS)


def _band_image(h=120, w=80, band=(30, 60), value=100, background=5):
    img = np.full((h, w, 3), background, np.uint8)
    img[band[0]:band[1]] = value
    return img


def test_retina_band_box_is_the_signal_rows_widened_by_the_margin_and_clamped():
    img = _band_image()
    assert find_retina_band(img, 20, 0.0) == (0, 30, 80, 60)
    assert find_retina_band(img, 20, 0.1) == (0, 27, 80, 63)          # floor(0.1 * 30) = 3 rows each side
    assert find_retina_band(img, 20, 0.25) == (0, 23, 80, 67)         # floor(7.5) = 7
    assert find_retina_band(img, 20, 1.0) == (0, 0, 80, 90)           # clamped at the top
    assert find_retina_band(img, 100, 0.1) is None                    # at the threshold is not above it
    assert find_retina_band(img, 99.5, 0.0) == (0, 30, 80, 60)
    # the mean, not a count: a row half at 50, half at 0 has mean 25
    img[80, :40] = 50
    img[80, 40:] = 0
    assert find_retina_band(img, 24.9, 0.0) == (0, 30, 80, 81) and find_retina_band(img, 25, 0.0) == (0, 30, 80, 60)


def test_retina_band_then_square_padding_keeps_full_width():
    img = _band_image(h=120, w=80, band=(30, 60))
    square, box = region_of_interest(img, {"kind": "retina_band", "threshold": 20, "margin": 0.1})
    assert box == (0, 27, 80, 63)
    assert square.shape == (80, 80, 3)                                # 36 rows padded to the 80-pixel width
    top = (80 - 36) // 2
    assert square[:top].max() == 0 and square[top + 36:].max() == 0
    np.testing.assert_array_equal(square[top:top + 36], img[27:63])


def test_retina_band_on_synthetic_b_scans_holds_the_layers_and_drops_the_vitreous():
    from synthetic import bscan
    for seed, (rows, cols) in enumerate([(96, 128), (200, 300), (496, 512)]):
        img = cv2.cvtColor(bscan(rows, cols, seed=seed), cv2.COLOR_GRAY2RGB)
        box = find_retina_band(img, 20, 0.0)
        # bscan(): layer i centred at top + (i + 0.5) * 0.07 rows, top = 0.3 rows +- 0.08 rows (the curvature)
        first_layer = (0.3 - 0.08 + 0.035) * rows
        last_layer = (0.3 + 0.08 + 4.5 * 0.07) * rows
        assert box is not None and box[0] == 0 and box[2] == cols
        assert box[1] <= first_layer and box[3] >= last_layer, (box, first_layer, last_layer)
        assert box[1] >= (0.3 - 0.08) * rows - 4 and box[3] <= (0.3 + 0.08 + 0.35) * rows + 4
        assert box[3] - box[1] < 0.7 * rows                              # the vitreous and the choroid are cut


def test_retina_band_degenerate_frames():
    black = np.zeros((50, 70, 3), np.uint8)
    assert find_retina_band(black, 20, 0.1) is None
    square, box = region_of_interest(black, {"kind": "retina_band"})
    assert box is None and square.shape == (70, 70, 3)
    line = np.zeros((50, 70, 3), np.uint8)
    line[49] = 255                                                    # one signal row, at the bottom edge
    assert find_retina_band(line, 20, 0.5) == (0, 49, 70, 50)         # floor(0.5 * 1) = 0
    x = preprocess(line, dict(make_spec(size=8), roi={"kind": "retina_band"}))
    assert x.shape == (1, 3, 8, 8)
    one = np.full((1, 1, 3), 200, np.uint8)
    assert find_retina_band(one, 20, 0.1) == (0, 0, 1, 1)


def test_centre_square_crop():
    assert centre_box(100, 200, 1.0) == (50, 0, 150, 100)
    assert centre_box(100, 200, 0.5) == (75, 25, 125, 75)
    assert centre_box(201, 100, 0.33) == (33, 84, 66, 117)            # side 33; ((100 - 33) // 2, (201 - 33) // 2)
    assert centre_box(3, 3, 0.01) == (1, 1, 2, 2)                     # at least one pixel
    img = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)
    square, box = region_of_interest(img, {"kind": "centre"})
    assert box == (2, 0, 8, 6)
    np.testing.assert_array_equal(square, img[:, 2:8])


def test_to_grey_is_opencvs_fixed_point_rgb2gray():
    """The formula the CUDA kernel uses (15-bit weights; the 14-bit R2Y/G2Y/B2Y constants of OpenCV's
    color.hpp differ on about 0.3 % of pixels). Checked on all 2^24 triples once, here on a sample."""
    rgb = np.random.RandomState(3).randint(0, 256, (400, 500, 3)).astype(np.uint8)
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    np.testing.assert_array_equal(to_grey(rgb), ((9798 * r + 19235 * g + 3735 * b + (1 << 14)) >> 15).astype(np.uint8))
    grey = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    np.testing.assert_array_equal(to_grey(grey)[0], np.arange(256))   # a grey image keeps its stored value


def _grey_spec(size=16, roi="none", interpolation="area"):
    return dict(make_spec(size=size, roi=roi, interpolation=interpolation), colour_order="GREY", mean=[0.25],
                std=[0.5])


def test_grey_network_input_is_one_channel_of_the_grey_value(fundus_dir):
    from synthetic import bscan
    stored = bscan(96, 128, seed=4)
    rgb = cv2.cvtColor(stored, cv2.COLOR_GRAY2RGB)                   # what the decoder gives for a grey file
    spec = _grey_spec(size=32, interpolation="nearest")
    prepared = prepare(rgb, spec)
    assert prepared.shape == (32, 32, 1) and prepared.dtype == np.uint8
    np.testing.assert_array_equal(prepared[:, :, 0], cv2.resize(pad_square(stored), (32, 32),
                                                                 interpolation=cv2.INTER_NEAREST))
    x = preprocess(rgb, spec)
    assert x.shape == (1, 1, 32, 32) and x.dtype == np.float32
    want = (prepared[:, :, 0].astype(np.float32) * np.float32(1 / 255.0) - np.float32(0.25)) / np.float32(0.5)
    np.testing.assert_array_equal(x[0, 0], want)
    # a 3-channel RGB network sees the same grey three times
    x3 = preprocess(rgb, dict(spec, colour_order="RGB", mean=[0.25] * 3, std=[0.5] * 3))
    np.testing.assert_array_equal(x3[0, 0], x[0, 0])
    np.testing.assert_array_equal(x3[0, 2], x[0, 0])
    # a colour photograph: the grey of its ROI crop
    colour = read_image(os.path.join(fundus_dir, GLAUCOMA_PNG))
    spec = _grey_spec(size=48, roi="fundus_disc")
    crop, _ = region_of_interest(colour, {"kind": "fundus_disc", "threshold": 10})
    want = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(prepare(colour, spec)[:, :, 0], want)


def test_host_preprocessor_batches_grey_bundles():
    from edge.preprocess import HostPreprocessor
    pre = HostPreprocessor(_grey_spec(size=8), np.float16)
    images = [np.full((20, 30, 3), v, np.uint8) for v in (0, 128, 255)]
    batch = pre.collate([pre.prepare(img) for img in images])
    assert batch.shape == (3, 1, 8, 8) and batch.dtype == np.float16
    assert batch[0, 0, 0, 0] == np.float16(-0.5) and batch[2, 0, 4, 4] == np.float16(1.5)
    assert batch[2, 0, 0, 0] == np.float16(-0.5)                     # the square padding of a wide frame
