"""preprocess.cu on a real GPU through CuPy's RawModule: the same bit-exact parity as the host emulation.

Runs where CuPy and a CUDA GPU are present (a desktop GPU: `pip install cupy-cuda12x`); skips
with the reason elsewhere. The tolerance is zero for the reasons given in
test_gpu_preprocess_hostemu.py: every floating-point step is an IEEE round-to-nearest intrinsic,
which the GPU executes to the same bits as the CPU.
"""
import os

import numpy as np
import pytest

from edge.io.decode import read_image
from edge.preprocess import preprocess
from gpu_hostemu.cases import REAL, REAL_IDS, SYNTHETIC, assert_identical, make_spec, with_pitch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    try:
        import cupy
    except ImportError as exc:
        pytest.skip("CuPy is not installed ({}): the GPU parity tests run the kernel through CuPy".format(exc))
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy raises CUDARuntimeError without a driver
        pytest.skip("no CUDA GPU ({})".format(" ".join(str(exc).split())))
    if count < 1:
        pytest.skip("no CUDA GPU (CuPy sees none)")
    from edge.gpu.cuda_cupy import CupyRuntime
    from edge.gpu.kernel import CupyKernels
    runtime = CupyRuntime()
    return runtime, CupyKernels()


def run_on_gpu(gpu, spec, images, dtype=np.float32, input_order="RGB"):
    from edge.gpu.preprocess import CudaPreprocessor
    runtime, kernels = gpu
    h, w = spec["resize"]["size"]
    out = runtime.alloc(len(images) * 3 * h * w * np.dtype(dtype).itemsize)
    stream = runtime.stream()
    pre = CudaPreprocessor(spec, runtime, out.ptr, dtype, len(images), stream, kernels=kernels,
                           input_order=input_order)
    batch = pre.collate([pre.prepare(image) for image in images])
    host = np.empty((batch.n, 3, h, w), dtype)
    runtime.dtoh(host, out.ptr, stream)
    stream.synchronize()
    times = pre.last_times_ms()
    assert times["pre-process"] > 0 and times["host-to-device"] > 0
    pre.close()
    out.free()
    return host


@pytest.mark.parametrize("size,rel", REAL, ids=REAL_IDS)
def test_real_images_of_every_size_bit_exact_on_the_gpu(gpu, fundus_dir, size, rel):
    rgb = read_image(os.path.join(fundus_dir, rel))
    spec = make_spec()
    want = preprocess(rgb, spec)
    assert_identical(run_on_gpu(gpu, spec, [rgb]), want)
    assert_identical(run_on_gpu(gpu, spec, [with_pitch(rgb, 5)]), want)
    assert_identical(run_on_gpu(gpu, spec, [np.ascontiguousarray(rgb[:, :, ::-1])], input_order="BGR"), want)
    assert_identical(run_on_gpu(gpu, spec, [rgb], dtype=np.float16), want.astype(np.float16))


@pytest.mark.parametrize("interpolation", ["area", "linear", "nearest"])
def test_synthetic_cases_and_a_batch_on_the_gpu(gpu, interpolation):
    names = sorted(SYNTHETIC)
    images = [SYNTHETIC[name]() for name in names]
    spec = make_spec(size=(96, 96), interpolation=interpolation)
    got = run_on_gpu(gpu, spec, images)
    for i, image in enumerate(images):
        assert_identical(got[i:i + 1], preprocess(image, spec))
