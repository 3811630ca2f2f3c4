"""edge/gpu/preprocess.cu against the reference (edge/preprocess.py), run on the CPU by host emulation.

The kernel source is compiled for the host with g++ (tests/gpu_hostemu: a shim for CUDA's
built-ins, each CUDA thread a fiber so __syncthreads() is a real barrier), and driven through the
real edge.gpu.preprocess.CudaPreprocessor on a host-memory runtime.

Tolerance: none. The output must equal the reference bit for bit, float32 and float16. Why that
is provable rather than lucky: the kernel performs OpenCV's own sequence of operations (integer
sums, the same float32/float64 products, sums and divisions in the same order, round half to
even), each as an IEEE round-to-nearest intrinsic that no compiler may fuse or reorder; so the
resized uint8 image is identical, and the normalisation is numpy's three float32 steps (x * scale,
- mean, / std), each correctly rounded on both sides. A GPU executes those intrinsics to the same
IEEE results (tests/unit/test_gpu_preprocess_cupy.py checks it where there is one). A difference
of one ulp would mean a different operation somewhere, which these tests exist to catch.
"""
import os

import cv2
import numpy as np
import pytest

from conftest import GLAUCOMA_AUGMENTED, GLAUCOMA_PNG, NORMAL_BORDERED
from edge.gpu.preprocess import CudaPreprocessor, DeviceBatch, PreprocessSpecError
from edge.io.decode import ImageError, read_image
from edge.preprocess import find_fundus_disc
from gpu_hostemu.cases import (REAL, REAL_IDS, SYNTHETIC, assert_identical, disc_image, make_spec, reference,
                               with_pitch)
from gpu_hostemu.emulator import HostRuntime, Station, session_kernels


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return session_kernels(tmp_path_factory)


@pytest.mark.parametrize("size,rel", REAL, ids=REAL_IDS)
def test_real_fundus_images_of_every_size_are_bit_exact(kernels, fundus_dir, size, rel):
    rgb = read_image(os.path.join(fundus_dir, rel))
    assert rgb.shape[:2] == size
    spec = make_spec()                                   # the shipped bundle's rule
    station = Station(kernels, spec)
    _, got = station.run([rgb])
    assert_identical(got, reference(rgb, spec))
    # and the plan found the reference's disc
    box = find_fundus_disc(rgb, 10)
    plan = station.plan()
    assert plan[7] == 1 and tuple(plan[:4]) == box


@pytest.mark.parametrize("size,rel", REAL[::2], ids=["{}x{}".format(*s) for s, _ in REAL[::2]])
def test_real_images_as_bgr_grey_pitched_and_float16(kernels, fundus_dir, size, rel):
    rgb = read_image(os.path.join(fundus_dir, rel))
    spec = make_spec()
    want = reference(rgb, spec)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert_identical(Station(kernels, spec, input_order="BGR").run([bgr])[1], want)
    assert_identical(Station(kernels, spec).run([with_pitch(rgb, 7)])[1], want)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    grey_want = reference(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), spec)
    assert_identical(Station(kernels, spec).run([grey])[1], grey_want)
    assert_identical(Station(kernels, spec).run([with_pitch(grey, 3)])[1], grey_want)
    assert_identical(Station(kernels, spec, dtype=np.float16).run([rgb])[1], reference(rgb, spec, np.float16))


@pytest.mark.parametrize("interpolation", ["area", "linear", "nearest"])
@pytest.mark.parametrize("out", [(32, 32), (300, 300), (200, 120)])
def test_real_image_other_rules(kernels, fundus_dir, interpolation, out):
    """Shrinking, enlarging (INTER_AREA becomes OpenCV's bilinear variant) and a non-square output."""
    rgb = read_image(os.path.join(fundus_dir, GLAUCOMA_PNG))
    spec = make_spec(size=out, interpolation=interpolation, colour_order="BGR",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert_identical(Station(kernels, spec).run([rgb])[1], reference(rgb, spec))


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_odd_cases(kernels, name):
    image = SYNTHETIC[name]()
    station = Station(kernels, make_spec(), max_input_bytes=image.nbytes)
    assert_identical(station.run([image])[1], reference(image, make_spec()))
    plan = station.plan()
    spec = make_spec(size=(48, 48), roi="none", interpolation="linear")
    assert_identical(Station(kernels, spec, max_input_bytes=image.nbytes).run([image])[1], reference(image, spec))
    box = find_fundus_disc(image, 10)
    h, w = image.shape[:2]
    assert (plan[7] == 1) == (box is not None)
    assert tuple(plan[:4]) == (box if box is not None else (0, 0, w, h))


@pytest.mark.parametrize("interpolation,factor,mode", [("area", 2, 3), ("area", 3, 3), ("area", 1.5, 2),
                                                        ("linear", 2, 3), ("linear", 3, 1), ("area", 0.75, 1)])
def test_each_opencv_path_is_taken_where_opencv_takes_it(kernels, interpolation, factor, mode):
    """hal::resize picks its path from the scale: integer factors take resizeAreaFast (and INTER_LINEAR
    at exactly 2x does too), other shrinks the area tables, enlarging the bilinear variant."""
    side = int(round(64 * factor))
    image = np.random.RandomState(side).randint(0, 256, (side, side, 3)).astype(np.uint8)
    spec = make_spec(size=(64, 64), interpolation=interpolation, roi="none")
    station = Station(kernels, spec)
    assert_identical(station.run([image])[1], reference(image, spec))
    assert station.plan()[8] == mode           # RE_MODE_* of preprocess.cu


def test_the_two_percent_and_threshold_boundaries(kernels):
    """A line counts when MORE than 2 % of its pixels are brighter (>) than the threshold."""
    img = np.zeros((200, 100, 3), np.uint8)
    img[20:180, 10:90] = 90                      # the disc
    img[5, :2] = 200                             # row 5: exactly 2 % of 100 -> not in the disc
    img[190, :3] = 200                           # row 190: 3 % -> in the disc
    img[:4, 95] = 200                            # column 95: 4 of 200 = 2 % -> not
    img[100:105, 2] = 11                         # column 2: 5 of 200 = 2.5 % at threshold + 1 -> in
    img[100:105, 97] = 10                        # column 97: at the threshold, not above -> not
    box = find_fundus_disc(img, 10)
    assert box == (2, 20, 90, 191)
    station = Station(kernels, make_spec())
    _, got = station.run([img])
    assert tuple(station.plan()[:4]) == box
    assert_identical(got, reference(img, make_spec()))
    for threshold in (10.5, 89, 90):             # a float threshold, and one that drops the disc
        spec = make_spec(threshold=threshold)
        assert_identical(Station(kernels, spec).run([img])[1], reference(img, spec))


def test_batch_slots_are_written_in_order_and_nothing_past_them(kernels, fundus_dir):
    images = [read_image(os.path.join(fundus_dir, rel)) for rel in (NORMAL_BORDERED, GLAUCOMA_PNG, GLAUCOMA_AUGMENTED)]
    spec = make_spec()
    station = Station(kernels, spec, max_batch=4)
    batch, got = station.run(images)
    assert isinstance(batch, DeviceBatch) and batch.n == 3 and batch.ptr == station.out.ptr
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for i, rgb in enumerate(images):
        assert_identical(got[i:i + 1], reference(rgb, spec))
    slot = 3 * 224 * 224 * 4
    assert np.all(station.out.array[3 * slot:] == 0xA5)          # slot 3 untouched
    times = station.pre.last_times_ms()
    assert set(times) == {"host-to-device", "pre-process"} and all(v >= 0 for v in times.values())
    with pytest.raises(ValueError):
        station.pre.collate(images * 2)


def test_no_allocation_per_frame_and_one_logged_growth_for_a_larger_image(kernels):
    messages = []
    spec = make_spec(size=(32, 32))
    station = Station(kernels, spec, max_input_bytes=200 * 200 * 3, max_side=256, log=messages.append)
    calls = station.runtime.calls
    small, large = disc_image(200, 180, 80), disc_image(300, 400, 120)
    station.run([small])
    allocations = calls.count("alloc") + calls.count("pinned")
    station.run([small])
    assert calls.count("alloc") + calls.count("pinned") == allocations       # none per frame
    assert_identical(station.run([large])[1], reference(large, spec))         # grows, still exact
    assert len(messages) == 1 and "growing" in messages[0]
    grown = calls.count("alloc") + calls.count("pinned")
    station.run([large])
    station.run([small])
    assert calls.count("alloc") + calls.count("pinned") == grown and len(messages) == 1


def test_launch_configuration(kernels):
    station = Station(kernels, make_spec())
    del kernels.launches[:]
    station.run([disc_image(100, 600, 40)])
    launches = dict((name, (grid, block)) for name, grid, block in kernels.launches)
    assert launches["re_roi_counts"] == ((3, 4, 1), (256, 1, 1))       # ceil(600/256), ceil(100/32)
    assert launches["re_roi_plan"] == ((1, 1, 1), (256, 1, 1))
    assert launches["re_resize_normalize"] == ((7, 28, 1), (32, 8, 1))


def test_unsupported_rules_and_inputs_are_refused_clearly(kernels):
    runtime = HostRuntime()
    for spec, words in ((make_spec(interpolation="cubic"), "cubic"), (make_spec(roi="optic_cup"), "optic_cup"),
                        (dict(make_spec(), colour_order="RGBA"), "RGBA")):
        with pytest.raises(PreprocessSpecError, match=words):
            CudaPreprocessor(spec, runtime, 0, np.float32, 1, runtime.stream(), kernels=kernels)
    with pytest.raises(PreprocessSpecError, match="float32 or float16"):
        CudaPreprocessor(make_spec(), runtime, 0, np.float64, 1, runtime.stream(), kernels=kernels)
    station = Station(kernels, make_spec())
    for bad, words in ((np.zeros((10, 10, 4), np.uint8), "shape"), (np.zeros((10, 10, 3), np.uint16), "uint8")):
        with pytest.raises(ImageError, match=words):
            station.pre.prepare(bad)
    flipped = disc_image(50, 60, 20)[:, ::-1]                   # negative strides: made packed by prepare
    assert_identical(station.run([flipped])[1], reference(np.ascontiguousarray(flipped), make_spec()))


def test_float16_conversion_matches_numpy_everywhere(kernels):
    """The kernel's own float -> half (no cuda_fp16.h) against numpy on every class of float32."""
    rng = np.random.RandomState(0)
    bits = np.concatenate([rng.randint(0, 2 ** 32, 400000, dtype=np.uint64).astype(np.uint32),
                           np.arange(0x33000000 - 8, 0x33000000 + 8, dtype=np.uint32),    # 2^-25: rounds to 0
                           np.arange(0x387fe000, 0x38802000, 64, dtype=np.uint32),        # subnormal -> normal
                           np.arange(0x477fe000, 0x47801000, 256, dtype=np.uint32),       # 65504 -> infinity
                           np.array([0, 0x80000000, 0x7f800000, 0xff800000], np.uint32)])
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    values = bits.view(np.float32)
    finite = ~np.isnan(values)
    with np.errstate(over="ignore"):
        want = values[finite].astype(np.float16).view(np.uint16)
    got = kernels.f32_to_f16_bits(values)
    assert np.array_equal(got[finite], want)
    assert np.all((got[~finite] & 0x7c00) == 0x7c00) and np.all(got[~finite] & 0x03ff)   # NaN stays NaN


def test_the_emulator_really_waits_at_barriers_and_reports_divergence(kernels):
    """The host emulation is only evidence if its __syncthreads() is CUDA's: checked on two small kernels."""
    values = np.arange(512, dtype=np.int32)
    rc, out, _ = kernels.selftest(values, threads=256)
    assert rc == 0 and np.array_equal(out, np.concatenate([values[255::-1], values[:255:-1]]))
    rc, _, error = kernels.selftest(values[:64], threads=64, divergent=True)
    assert rc != 0 and "63 of 64" in error
