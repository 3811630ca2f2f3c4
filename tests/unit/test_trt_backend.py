"""The TensorRT runner over fakes of TensorRT 8.2, 8.6, 10 and 11 and a fake CUDA runtime.

What is checked: the data path (host batch -> pinned -> device -> network ->
host; device batch straight to the network), stage times from CUDA events,
no allocation per batch, optimisation profiles for batch > 1, the
calibrator protocol on real images through the reference preprocessing,
INT8 Q/DQ variants, progress, the preprocessor choice, and the pipeline
seam. Nothing here runs TensorRT or a GPU: see tests/unit/trtfakes.
"""
import os
import sys
import threading
import types

import numpy as np
import pytest

from conftest import REPO_ROOT, Collect
from edge.backends import BackendError
from edge.backends.trt_build import BuildProgress
from edge.preprocess import HostPreprocessor, preprocess
from trtfakes.cuda_fake import DTOH_MS, HTOD_MS
from trtfakes.helpers import NANO, ORIN, Lines, add_variant, fakes, make_backend
from trtfakes.tensorrt_fake import VERSIONS
from trtfakes.tensorrt_fake_engine import NETWORK_MS, fake_logits

SAMPLES = os.path.join(REPO_ROOT, "samples", "fundus")
API_OF = {"8.2.1.8": ("execute_async_v2", "bindings"), "8.6.1": ("execute_async_v3", "named tensors"),
          "10.0.1": ("execute_async_v3", "named tensors"), "10.12.0": ("execute_async_v3", "named tensors"),
          "11.0.0": ("execute_async_v3", "named tensors")}


class DeviceBatch(object):
    """What the CUDA preprocessor's collate returns: ``n`` images already in the engine's input buffer."""

    def __init__(self, n, ptr):
        self.n, self.ptr = n, ptr


@pytest.mark.parametrize("version", VERSIONS)
def test_host_batches_run_with_the_io_api_of_each_version(tiny_bundle, tmp_path, version):
    backend, trt, cuda, _ = make_backend(tiny_bundle, tmp_path, version=version, gpu=ORIN, batch=2)
    execute, kind = API_OF[version]
    assert kind in backend.describe() and version in backend.describe()
    x = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    logits = backend.infer(x)
    assert logits.dtype == np.float32 and np.allclose(logits, fake_logits(x), atol=1e-6)
    assert trt.fake.called(execute) == [2]
    # CUDA-event times on the stream, not CPU clocks: the fake GPU's exact costs
    assert backend.last_times_ms() == {"host-to-device": HTOD_MS, "network": NETWORK_MS,
                                       "device-to-host": DTOH_MS}
    backend.close()


def test_a_device_batch_goes_to_the_network_without_a_round_trip(tiny_bundle, tmp_path):
    backend, trt, cuda, _ = make_backend(tiny_bundle, tmp_path, version="10.0.1", batch=4)
    x = np.random.RandomState(1).rand(3, 3, 32, 32).astype(np.float32)
    cuda.memory.write(backend.input.device.ptr, x)  # what the CUDA preprocessor does, on the same stream
    launches = len(cuda.memory.launches)
    logits = backend.infer(DeviceBatch(3, backend.input.device.ptr))
    assert np.allclose(logits, fake_logits(x), atol=1e-6)
    kinds = [what for _, what in cuda.memory.launches[launches:]]
    assert kinds == ["execute_async_v3", "dtoh"]  # no host-to-device copy, one copy back per batch
    assert "host-to-device" not in backend.last_times_ms()  # the preprocessor reports its own
    with pytest.raises(BackendError, match="not in this engine's input buffer"):
        backend.infer(DeviceBatch(1, backend.input.device.ptr + 4096))
    backend.close()


def test_the_per_batch_path_allocates_nothing(tiny_bundle, tmp_path):
    backend, trt, cuda, _ = make_backend(tiny_bundle, tmp_path, version="8.2.1.8", batch=4)
    allocations, pinned, streams = cuda.allocations, cuda.pinned_arrays, len(cuda.streams)
    for n in (1, 4, 2, 2, 3):
        backend.infer(np.ones((n, 3, 32, 32), np.float32))
    assert (cuda.allocations, cuda.pinned_arrays, len(cuda.streams)) == (allocations, pinned, streams)
    assert len(set(handle for handle, _ in cuda.memory.launches)) == 1  # one stream
    backend.close()
    assert cuda.memory.blocks == {} and not cuda.closed  # buffers freed; the caller's runtime is the caller's


def test_batches_up_to_the_profile_and_shapes_checked(tiny_bundle, tmp_path):
    backend, trt, cuda, _ = make_backend(tiny_bundle, tmp_path, version="10.12.0", batch=4)
    assert trt.fake.called("set_shape") == [("input", (1, 3, 32, 32), (4, 3, 32, 32), (4, 3, 32, 32))]
    for n in (4, 1, 3):
        x = np.random.rand(n, 3, 32, 32).astype(np.float32)
        assert np.allclose(backend.infer(x), fake_logits(x), atol=1e-6)
    assert trt.fake.called("execute_async_v3") == [4, 1, 3]
    with pytest.raises(BackendError, match="this engine takes 1 to 4"):
        backend.infer(np.zeros((5, 3, 32, 32), np.float32))
    with pytest.raises(BackendError, match=r"takes \(N,\) \+ \(3, 32, 32\)"):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32))
    backend.close()


def test_a_fixed_batch_model_refuses_a_larger_batch(tiny_bundle, tmp_path):
    static = {"inputs": [("input", (1, 3, 32, 32))], "outputs": [("logits", (1, 4))]}
    with pytest.raises(BackendError, match="input batch is fixed at 1; --batch 2"):
        make_backend(tiny_bundle, tmp_path, batch=2, network=static)
    backend, trt, _, _ = make_backend(tiny_bundle, tmp_path, batch=1, network=static)
    assert trt.fake.called("set_shape") == []  # no profile needed for a static input
    assert backend.infer(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 4)
    backend.close()


def test_a_manifest_input_the_network_lacks_is_a_clear_error(tiny_bundle, tmp_path):
    other = {"inputs": [("images", (-1, 3, 32, 32))], "outputs": [("logits", (-1, 4))]}
    with pytest.raises(BackendError, match=r"manifest's input 'input' is not among the network's inputs \['images'\]"):
        make_backend(tiny_bundle, tmp_path, network=other)


@pytest.mark.parametrize("version, flags", [("8.6.1", ["FP16", "INT8"]), ("10.12.0", ["FP16", "INT8"]),
                                            ("11.0.0", [])])
def test_int8_builds_the_qdq_variant(tiny_bundle, tmp_path, version, flags):
    bundle = add_variant(tiny_bundle, "int8", b"QDQ")
    backend, trt, _, log = make_backend(bundle, tmp_path, version=version, gpu=ORIN, precision="int8")
    assert trt.fake.called("build_serialized_network") == [flags]
    assert backend.precision == "int8" and backend.engine_info.key["variant"] == "int8"
    assert backend.engine_info.key["model_sha256"] == bundle.manifest["variants"]["int8"]["sha256"]
    backend.close()


def test_best_on_orin_skips_an_int8_variant_whose_recorded_agreement_is_low(tiny_bundle, tmp_path):
    bundle = add_variant(tiny_bundle, "int8", b"QDQ", agreement=0.94)
    backend, trt, _, log = make_backend(bundle, tmp_path, version="10.3.0", gpu=ORIN, precision="best")
    assert backend.precision == "fp16" and backend.engine_info.key["variant"] == "fp32"
    assert log.having("agreement with fp32 is 94.0%")
    backend.close()


def test_int8_on_the_nano_builds_fp16_unless_forced(tiny_bundle, tmp_path):
    bundle = add_variant(tiny_bundle, "int8", b"QDQ")
    backend, trt, _, log = make_backend(bundle, tmp_path, version="8.2.1.8", gpu=NANO, precision="int8")
    assert backend.precision == "fp16" and trt.fake.called("build_serialized_network") == [["FP16"]]
    assert log.having("no fast INT8") and "fp16 (int8 asked)" in backend.describe()
    backend.close()
    forced, trt, _, _ = make_backend(bundle, tmp_path, version="8.2.1.8", gpu=NANO, precision="int8",
                                     force_int8=True)
    assert forced.precision == "int8" and trt.fake.called("build_serialized_network") == [["FP16", "INT8"]]
    forced.close()


def test_fp16_on_tensorrt_11_builds_the_fp16_typed_variant(tiny_bundle, tmp_path):
    bundle = add_variant(tiny_bundle, "fp16", b"FP16TYPED")
    backend, trt, cuda, _ = make_backend(bundle, tmp_path, version="11.0.0", gpu=ORIN, precision="fp16")
    assert backend.input_dtype == np.float16 and backend.engine_info.key["variant"] == "fp16"
    x = np.random.rand(1, 3, 32, 32).astype(np.float16)
    assert np.allclose(backend.infer(x), fake_logits(x), atol=1e-2)
    backend.close()


def test_implicit_int8_calibrates_on_real_images_through_the_same_preprocessing(tiny_bundle, tmp_path):
    backend, trt, cuda, log = make_backend(tiny_bundle, tmp_path, version="8.2.1.8", gpu=ORIN, precision="int8",
                                           calibration=SAMPLES)
    assert backend.precision == "int8" and trt.fake.called("calibration") == [1]  # 12 images: one batch of 8
    from edge.io.decode import read_image
    from edge.backends.trt_calibrator import image_paths
    expected = np.concatenate([preprocess(read_image(p), tiny_bundle.preprocess) for p in image_paths(SAMPLES)[:8]])
    (seen,) = trt.fake.calibration_batches
    assert np.allclose(seen, expected)
    cache_files = os.listdir(str(tmp_path / "calibration"))
    assert len(cache_files) == 1 and backend.engine_info.key["calibration_sha256"]
    backend.close()
    # the same images again: the engine (keyed by the calibration cache) comes from the cache
    again, trt, _, _ = make_backend(tiny_bundle, tmp_path, version="8.2.1.8", gpu=ORIN, precision="int8",
                                    calibration=SAMPLES)
    assert again.engine_info.origin == "cache"
    again.close()
    # another engine, no --calibration: the scales are read back, no batch is asked for
    other, trt, _, log = make_backend(tiny_bundle, tmp_path, version="8.2.1.8", gpu=ORIN, precision="int8",
                                      workspace_mb=64)
    assert trt.fake.called("calibration") == ["from cache"] and trt.fake.calibration_batches == []
    assert log.having("calibration: reusing the scales")
    other.close()


def test_the_calibrator_protocol(tiny_bundle, tmp_path):
    from edge.backends.engine_cache import EngineCache
    from edge.backends.trt_calibrator import make_calibrator
    trt, cuda = fakes("8.2.1.8", ORIN)
    batches = [np.full((2, 3, 32, 32), v, np.float32) for v in (0.25, 0.75)]
    cache = EngineCache(str(tmp_path))
    path = str(tmp_path / "calibration" / "m.cache")
    calibrator = make_calibrator(trt, cuda, iter(batches), 2, (2, 3, 32, 32), np.float32, path, cache)
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2) and calibrator._base_initialised
    assert calibrator.get_batch_size() == 2 and calibrator.read_calibration_cache() is None
    for expected in batches:
        (pointer,) = calibrator.get_batch(["input"])
        assert np.array_equal(cuda.memory.read(pointer, (2, 3, 32, 32), np.float32), expected)
    assert calibrator.get_batch(["input"]) is None
    calibrator.write_calibration_cache(b"TRT-8201-EntropyCalibration2\n")
    assert calibrator.read_calibration_cache() == b"TRT-8201-EntropyCalibration2\n"
    calibrator.release()


def test_calibration_folder_problems_are_clear(tiny_bundle, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackendError, match="no images to calibrate with"):
        make_backend(tiny_bundle, tmp_path, gpu=ORIN, precision="int8", calibration=str(empty))
    with pytest.raises(BackendError, match="INT8 needs the bundle's INT8 Q/DQ variant"):
        make_backend(tiny_bundle, tmp_path, gpu=ORIN, precision="int8")


def test_build_progress_uses_the_monitor_where_tensorrt_has_one(tiny_bundle, tmp_path):
    trt, cuda = fakes("10.0.1", ORIN)
    phases = []

    def during_build(config):
        phases.append(type(config.progress_monitor).__name__)
    trt.fake.on_build = during_build
    backend, _, _, _ = make_backend(tiny_bundle, tmp_path, trt=trt, cuda=cuda)
    assert phases == ["PhaseMonitor"]
    backend.close()
    progress = BuildProgress(lambda line: None)
    from edge.backends.trt_api import TrtApi
    api = TrtApi(fakes("10.0.1")[0])
    config = api.create_builder().create_builder_config()
    assert api.attach_progress(config, progress)
    monitor = config.progress_monitor
    monitor.phase_start("Building engine", None, 3)
    monitor.phase_start("Tactic selection", "Building engine", 40)
    assert monitor.step_complete("Tactic selection", 9) is True
    assert progress.text == "Building engine 0/3 > Tactic selection 10/40"
    monitor.phase_finish("Tactic selection")
    assert progress.text == "Building engine 0/3"


def test_build_progress_reports_elapsed_time_without_a_monitor(tiny_bundle, tmp_path, monkeypatch):
    trt, cuda = fakes("8.2.1.8", NANO)
    ticked = threading.Event()
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("building:"):
            ticked.set()
    trt.fake.on_build = lambda config: ticked.wait(10)  # the build "runs" until progress was reported
    import edge.backends.trt_build as trt_build
    monkeypatch.setattr(trt_build, "PROGRESS_EVERY_S", 0.01)
    backend, _, _, _ = make_backend(tiny_bundle, tmp_path, trt=trt, cuda=cuda, log=log)
    assert ticked.is_set() and [l for l in lines if l.startswith("building: ")][0].endswith("s elapsed")
    backend.close()


def test_the_preprocessor_falls_back_to_the_reference_once_and_says_so(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "edge.gpu.preprocess", None)  # as if the kernel module were missing
    backend, _, _, log = make_backend(tiny_bundle, tmp_path)
    first, second = backend.make_preprocessor(), backend.make_preprocessor()
    assert isinstance(first, HostPreprocessor) and first.dtype == np.float32 and isinstance(second, HostPreprocessor)
    assert len(log.having("CUDA pre-processing unavailable")) == 1
    backend.close()


def test_the_cuda_preprocessor_gets_the_engine_input_buffer_and_stream(tiny_bundle, tmp_path, monkeypatch):
    made = []

    class CudaPreprocessor(object):
        def __init__(self, spec, runtime, out_ptr, out_dtype, max_batch, stream, log=None):
            made.append((spec, runtime, out_ptr, np.dtype(out_dtype), max_batch, stream))
            assert log is backend.log  # the kernel's one-time growth message reaches the user
    module = types.ModuleType("edge.gpu.preprocess")
    module.CudaPreprocessor = CudaPreprocessor
    monkeypatch.setitem(sys.modules, "edge.gpu.preprocess", module)
    backend, _, cuda, log = make_backend(tiny_bundle, tmp_path, batch=3)
    assert isinstance(backend.make_preprocessor(), CudaPreprocessor), log.lines
    assert made == [(tiny_bundle.preprocess, cuda, backend.input.device.ptr, np.dtype(np.float32), 3, backend.stream)]
    assert not log.having("unavailable")
    backend.close()


def test_the_pipeline_screens_real_images_through_the_fake_engine(tiny_bundle, tmp_path, screen_folder,
                                                                  monkeypatch):
    from edge.io.sources import open_source
    from edge.pipeline import Pipeline
    monkeypatch.setitem(sys.modules, "edge.gpu.preprocess", None)
    folder, good, bad = screen_folder
    backend, trt, _, _ = make_backend(tiny_bundle, tmp_path, version="10.0.1", gpu=ORIN)
    out = Collect()
    stats = Pipeline(tiny_bundle, backend, [out]).run(open_source(folder))
    assert stats.counts["ok"] == len(good) and stats.counts["error"] == len(bad)
    ok = [(f, r) for f, r in zip(out.frames, out.results) if r.status == "ok"]
    for frame, result in ok:
        assert frame.times_ms["network"] == NETWORK_MS and frame.times_ms["host-to-device"] == HTOD_MS
    assert len(trt.fake.called("execute_async_v3")) == len(good)
    backend.close()


def test_describe_names_version_gpu_precision_and_origin(tiny_bundle, tmp_path):
    backend, _, _, _ = make_backend(tiny_bundle, tmp_path, version="8.2.1.8", precision="best")
    text = backend.describe()
    for part in ("tensorrt 8.2.1.8", "fake-cuda", "NVIDIA Tegra X1 sm_53", "fp16 (best asked)", "bindings",
                 "engine built in", "cached at"):
        assert part in text, part
    assert backend.engine_info.as_dict()["precision"] == "fp16"
    backend.close()


def test_ctrl_c_during_a_build_cancels_it_through_the_progress_monitor(tiny_bundle, tmp_path, monkeypatch):
    import edge.backends.trt_build as trt_build
    calls = []

    def phase(self, text):
        calls.append(text)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Python delivers Ctrl-C in the first callback TensorRT makes after it
    monkeypatch.setattr(trt_build.BuildProgress, "phase", phase)
    with pytest.raises(KeyboardInterrupt):
        make_backend(tiny_bundle, tmp_path, version="10.0.1", gpu=ORIN)
    assert not os.path.exists(str(tmp_path / "engines"))  # nothing half-built was cached


def test_a_calibrator_error_ends_calibration_instead_of_crashing_inside_tensorrt(tmp_path):
    from edge.backends.engine_cache import EngineCache
    from edge.backends.trt_calibrator import make_calibrator
    trt, cuda = fakes("8.2.1.8", ORIN)
    wrong = iter([np.zeros((3, 3, 32, 32), np.float32)])
    calibrator = make_calibrator(trt, cuda, wrong, 2, (2, 3, 32, 32), np.float32, None, EngineCache(str(tmp_path)))
    assert calibrator.get_batch(["input"]) is None  # TensorRT's getBatch is noexcept: no exception may escape
    assert isinstance(calibrator.error, BackendError) and "expected (2, 3, 32, 32)" in str(calibrator.error)


def test_a_calibration_folder_of_unreadable_images_is_a_clear_error(tiny_bundle, tmp_path):
    bad = tmp_path / "calib"
    bad.mkdir()
    for i in range(9):
        (bad / "{}.jpg".format(i)).write_bytes(b"not a jpeg")
    log = Lines()
    with pytest.raises(BackendError, match="could not build an engine"):
        make_backend(tiny_bundle, tmp_path, gpu=ORIN, precision="int8", calibration=str(bad), log=log)
    skipped = log.having("calibration: skipping")
    assert len(skipped) == 9 and "0.jpg: not a readable image" in skipped[0]
