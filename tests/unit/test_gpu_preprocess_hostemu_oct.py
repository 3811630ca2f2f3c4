"""The OCT rules of edge/gpu/preprocess.cu (retina band, centre square, one grey channel) against the
reference, bit for bit, by host emulation (see test_gpu_preprocess_hostemu.py for why no tolerance)."""
import os

import cv2
import numpy as np
import pytest

from conftest import GLAUCOMA_PNG
from edge.io.decode import read_image
from edge.preprocess import centre_box, find_retina_band
from gpu_hostemu.cases import REAL, SYNTHETIC, assert_identical, band_image, make_spec, reference, with_pitch
from gpu_hostemu.emulator import Station, session_kernels
from synthetic import bscan


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return session_kernels(tmp_path_factory)


def _band(threshold=20, margin=0.1):
    return {"kind": "retina_band", "threshold": threshold, "margin": margin, "pad": "square"}


def _check(kernels, image, spec, dtype=np.float32, **options):
    """Kernel == reference (on the RGB image the decoder would give); returns the station's plan."""
    options.setdefault("max_input_bytes", max(image.nbytes, 16))
    station = Station(kernels, spec, dtype=dtype, **options)
    _, got = station.run([image])
    if image.ndim == 2:
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    else:
        rgb = image[:, :, ::-1] if options.get("input_order") == "BGR" else image
    assert_identical(got, reference(np.ascontiguousarray(rgb), spec, dtype))
    return station.plan()


BSCANS = [(96, 128, 0), (200, 300, 1), (496, 512, 2), (131, 77, 3)]


@pytest.mark.parametrize("rows,cols,seed", BSCANS)
@pytest.mark.parametrize("colour_order", ["RGB", "GREY"])
def test_synthetic_b_scans_with_the_retina_band_are_bit_exact(kernels, rows, cols, seed, colour_order):
    stored = bscan(rows, cols, seed=seed)
    rgb = cv2.cvtColor(stored, cv2.COLOR_GRAY2RGB)
    spec = make_spec(size=(64, 64), roi=_band(), colour_order=colour_order, mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7))
    plan = _check(kernels, rgb, spec)
    box = find_retina_band(rgb, 20, 0.1)
    assert box is not None and plan[7] == 1 and tuple(plan[:4]) == box
    assert tuple(_check(kernels, stored, spec)[:4]) == box                   # a one-channel upload: same band
    assert tuple(_check(kernels, with_pitch(stored, 5), spec)[:4]) == box


@pytest.mark.parametrize("interpolation", ["area", "linear", "nearest"])
@pytest.mark.parametrize("out", [(32, 32), (224, 224), (300, 300), (200, 120)])
def test_grey_network_input_on_a_real_colour_image(kernels, fundus_dir, interpolation, out):
    """Each OpenCV resize path on the grey of a colour photograph (shrinking, enlarging, non-square)."""
    rgb = read_image(os.path.join(fundus_dir, GLAUCOMA_PNG))
    spec = make_spec(size=out, interpolation=interpolation, colour_order="GREY", mean=(0.45,), std=(0.22,))
    _check(kernels, rgb, spec)
    _check(kernels, np.ascontiguousarray(rgb[:, :, ::-1]), spec, input_order="BGR")
    _check(kernels, rgb, spec, dtype=np.float16)


@pytest.mark.parametrize("size,rel", REAL[::2], ids=["{}x{}".format(*s) for s, _ in REAL[::2]])
@pytest.mark.parametrize("roi", [_band(), _band(40, 0.3), {"kind": "centre", "fraction": 0.8},
                                 {"kind": "centre"}, {"kind": "fundus_disc", "threshold": 10}],
                         ids=["band", "band-40", "centre-0.8", "centre", "disc"])
def test_every_roi_kind_on_real_colour_images_rgb_bgr_and_grey(kernels, fundus_dir, size, rel, roi):
    """The band's grey weights see R, G and B where the upload has them (RGB or BGR input)."""
    rgb = read_image(os.path.join(fundus_dir, rel))
    for colour_order in ("RGB", "BGR", "GREY"):
        spec = make_spec(roi=roi, colour_order=colour_order)
        plan = _check(kernels, rgb, spec)
        _check(kernels, np.ascontiguousarray(rgb[:, :, ::-1]), spec, input_order="BGR")
    if roi["kind"] == "retina_band":
        box = find_retina_band(rgb, roi["threshold"], roi["margin"])
        assert tuple(plan[:4]) == (box or (0, 0, rgb.shape[1], rgb.shape[0])) and plan[7] == (box is not None)


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_odd_frames_with_the_band_and_the_centre(kernels, name):
    image = SYNTHETIC[name]()
    h, w = image.shape[:2]
    for roi in (_band(), _band(0, 0.5), {"kind": "centre", "fraction": 0.33}, {"kind": "centre", "fraction": 0.01}):
        for colour_order in ("RGB", "GREY"):
            plan = _check(kernels, image, make_spec(size=(48, 48), roi=roi, colour_order=colour_order,
                                                    interpolation="linear"))
        if roi["kind"] == "centre":
            assert tuple(plan[:4]) == centre_box(h, w, roi["fraction"]) and plan[7] == 1
        else:
            box = find_retina_band(image, roi["threshold"], roi["margin"])
            assert tuple(plan[:4]) == (box or (0, 0, w, h))


def test_band_threshold_and_margin_boundaries(kernels):
    """A row is signal when its mean grey value is ABOVE the threshold: a row whose mean is exactly 25
    (half 50, half 0) is in at 24.9 and 24.999999, out at 25; margins round down per side."""
    img = np.zeros((90, 40, 3), np.uint8)
    img[30:50] = 100
    img[70, :20] = 50
    for threshold, margin, want in ((25, 0.0, (0, 30, 40, 50)), (24.9, 0.0, (0, 30, 40, 71)),
                                    (24.999999, 0.1, (0, 26, 40, 75)), (100, 0.1, None), (99.99, 0.1, (0, 28, 40, 52)),
                                    (0, 1.0, (0, 0, 40, 90)), (20, 0.149, (0, 24, 40, 77))):
        spec = make_spec(size=(32, 32), roi=_band(threshold, margin), interpolation="area")
        plan = _check(kernels, img, spec)
        assert find_retina_band(img, threshold, margin) == want
        assert tuple(plan[:4]) == (want or (0, 0, 40, 90)) and plan[7] == (want is not None)


def test_colour_band_image_is_found_on_its_grey_value(kernels):
    img = band_image(150, 220, (40, 95), colour=True)
    for threshold in (20, 60, 75.5):
        plan = _check(kernels, img, make_spec(size=(56, 56), roi=_band(threshold, 0.05), colour_order="GREY"))
        assert tuple(plan[:4]) == (find_retina_band(img, threshold, 0.05) or (0, 0, 220, 150))


def test_grey_batches_have_one_channel_slots_and_nothing_past_them(kernels):
    images = [bscan(120, 160, seed=s) for s in range(3)]
    spec = make_spec(size=(40, 40), roi=_band(), colour_order="GREY", mean=(0.1,), std=(0.9,))
    station = Station(kernels, spec, max_batch=4)
    batch, got = station.run(images)
    assert batch.shape == (3, 1, 40, 40)
    for i, image in enumerate(images):
        assert_identical(got[i:i + 1], reference(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), spec))
    assert np.all(station.out.array[3 * 40 * 40 * 4:] == 0xA5)


def test_the_centre_and_the_whole_frame_launch_no_counting_kernel(kernels):
    image = bscan(100, 140)
    for roi, counted in ((_band(), True), ({"kind": "centre"}, False), ({"kind": "none"}, False)):
        station = Station(kernels, make_spec(size=(32, 32), roi=roi))
        del kernels.launches[:]
        station.run([image])
        names = [name for name, _, _ in kernels.launches]
        assert names == (["re_roi_counts"] if counted else []) + ["re_roi_plan", "re_resize_normalize"]
