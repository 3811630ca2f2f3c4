"""Build a TensorRT engine from a bundle, or load it from the engine cache; with progress.

``engine_for`` is what the backend (and ``retina-edge build``) call: it makes
the engine's key, loads a cached engine whose key matches, and otherwise
builds one (ONNX parser, workspace, optimisation profile, precision flags or
calibrator, persistent timing cache), writes it to the cache and returns it.
Every TensorRT call goes through the TrtApi, so no version is known here.
"""
import threading
import time

from edge.backends import BackendError
from edge.backends.engine_cache import engine_key, sha256_bytes

# What a Jetson Nano (4 GB shared by CPU and GPU) should have free, RAM + swap, before a first build.
# An estimate, not a measurement here: JetPack 4.6 builds of small CNNs commonly run out of memory
# without the swap NVIDIA's setup guides add; the builder's tactic trials need host and device memory at once.
NANO_FIRST_BUILD_BYTES = 3 << 30
CALIBRATION_BATCH = 8
PROGRESS_EVERY_S = 15.0


class EngineInfo(object):
    """Where the engine came from: ``origin`` "cache" or "built", ``path`` (None: in memory only), ``key``."""

    def __init__(self, origin, path, key, plan, seconds, notes=()):
        self.origin, self.path, self.key, self.plan, self.seconds = origin, path, key, plan, seconds
        self.notes = list(notes)

    def as_dict(self):
        return {"origin": self.origin, "path": self.path, "seconds": round(self.seconds, 3), "key": self.key,
                "precision": self.plan.precision, "requested": self.plan.requested, "notes": self.notes}


def variant_sha256(bundle, variant):
    if variant == "fp32":
        return bundle.manifest["model"]["sha256"]
    entry = bundle.manifest.get("variants", {}).get(variant, {})
    return entry.get("sha256") or _file_sha256(bundle.model_path(variant))


def _file_sha256(path):
    with open(path, "rb") as f:
        return sha256_bytes(f.read())


class EngineRequest(object):
    """What the engine must be: bundle, plan (trt_precision), batch, workspace, GPU, calibration folder."""

    def __init__(self, bundle, plan, max_batch, workspace_bytes, gpu_name, compute_capability,
                 calibration_dir=None):
        self.bundle, self.plan, self.max_batch = bundle, plan, int(max_batch)
        self.workspace_bytes = workspace_bytes
        self.gpu_name, self.compute_capability = gpu_name, tuple(compute_capability)
        self.calibration_dir = calibration_dir
        self.model_path = bundle.model_path(plan.variant)
        self.model_sha256 = variant_sha256(bundle, plan.variant)
        self.input_shape = (self.max_batch,) + tuple(bundle.input_shape[1:])

    def key(self, api, calibration_sha256=None):
        return engine_key(model_sha256=self.model_sha256, variant=self.plan.variant, tensorrt=api.version_text,
                          gpu=self.gpu_name, compute_capability=list(self.compute_capability),
                          precision=self.plan.precision, input_shape=list(self.input_shape),
                          max_batch=self.max_batch, workspace_bytes=self.workspace_bytes,
                          calibration_sha256=calibration_sha256)


def engine_for(api, runtime, request, cache, log, clock=time.time):
    """(engine, EngineInfo): the cached engine whose key matches, else a new build (stored when possible)."""
    start = clock()
    cal_path = cal_bytes = None
    if request.plan.calibrate:
        cal_path = cache.calibration_cache_path(request.model_sha256, request.calibration_dir)
        cal_bytes = cache.read_bytes(cal_path) if cal_path else None
    key = request.key(api, sha256_bytes(cal_bytes) if cal_bytes else None)
    path = cache.engine_path(request.bundle.manifest["name"], key)
    if not (request.plan.calibrate and cal_bytes is None):  # nothing can match a calibration still to run
        engine = cache.load(path, key, api.deserialize)
        if engine is not None:
            return engine, EngineInfo("cache", path, key, request.plan, clock() - start)
    check_build_memory(log)
    log("building the TensorRT {} engine for {} ({}, batch up to {}); a first build takes minutes on a "
        "Jetson Nano".format(request.plan.precision, request.model_path, api.version_text, request.max_batch))
    plan_bytes, cal_written = build_engine_bytes(api, runtime, request, cache, cal_path, log)
    if request.plan.calibrate:
        key = request.key(api, sha256_bytes(cal_written or cal_bytes or b""))
    seconds = clock() - start
    stored = cache.store(path, key, plan_bytes, {"build_seconds": round(seconds, 1),
                                                 "notes": request.plan.notes})
    engine = api.deserialize(plan_bytes)
    if engine is None:
        raise BackendError("{}: TensorRT {} cannot load the engine it just built".format(
            request.model_path, api.version_text))
    return engine, EngineInfo("built", stored, key, request.plan, seconds)


def build_engine_bytes(api, runtime, request, cache, cal_path, log):
    """Parse, configure and build; returns (serialized engine bytes, calibration cache bytes or None)."""
    builder = api.create_builder()
    _cross_check_gpu(api, builder, request, log)
    network = api.create_network(builder)
    with open(request.model_path, "rb") as f:
        parser = api.parse_onnx(network, f.read(), request.model_path)
    name, dims = _network_input(network, request)
    config = builder.create_builder_config()
    api.set_workspace(config, request.workspace_bytes)
    rest = tuple(dims[1:])
    if any(d < 0 for d in dims):
        api.add_profile(builder, config, name, (1,) + rest, (request.max_batch,) + rest,
                        (request.max_batch,) + rest)
    elif dims[0] != request.max_batch:
        raise BackendError("{}: the model's input batch is fixed at {}; --batch {} needs a model exported with a "
                           "dynamic batch".format(request.model_path, dims[0], request.max_batch))
    api.set_precision_flags(config, request.plan.flags)
    calibrator = _attach_calibrator(api, runtime, request, builder, config, name, dims, cache, cal_path, log)
    timing_path = cache.timing_cache_path(api.version_text, request.gpu_name, request.compute_capability)
    timing = cache.read_bytes(timing_path)
    if not api.use_timing_cache(config, timing) and timing:
        log("timing cache {} is from another TensorRT or GPU; starting a new one".format(timing_path))
    progress = BuildProgress(log)
    api.attach_progress(config, progress)
    try:
        with progress:
            plan_bytes = _build_checked(api, builder, network, config, request, calibrator, progress)
    finally:
        if calibrator is not None:
            calibrator.release()
    log("built in {:.0f} s".format(progress.seconds))
    cache.write_atomic(timing_path, api.timing_cache_bytes(config), "timing")
    del parser
    return plan_bytes, (calibrator.written if calibrator is not None else None)


def _build_checked(api, builder, network, config, request, calibrator, progress):
    """Build; an error the calibrator or a Ctrl-C met inside TensorRT's callbacks is raised here."""
    plan_bytes = failure = None
    try:
        plan_bytes = api.build_serialized(builder, network, config, request.model_path)
    except BackendError as exc:
        failure = exc
    if progress.cancelled:
        raise KeyboardInterrupt
    if calibrator is not None and calibrator.error is not None:
        raise BackendError("calibration with {} failed: {}".format(request.calibration_dir, calibrator.error))
    if failure is not None:
        raise failure
    return plan_bytes


def _network_input(network, request):
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    wanted = request.bundle.input_name
    for tensor in inputs:
        if tensor.name == wanted:
            return tensor.name, tuple(int(d) for d in tensor.shape)
    raise BackendError("{}: the manifest's input {!r} is not among the network's inputs {}".format(
        request.model_path, wanted, [t.name for t in inputs]))


def _attach_calibrator(api, runtime, request, builder, config, name, dims, cache, cal_path, log):
    if not request.plan.calibrate:
        return None
    from edge.backends.trt_calibrator import calibration_batches, make_calibrator
    dynamic = any(d < 0 for d in dims)
    batch = CALIBRATION_BATCH if dynamic else dims[0]
    shape = (batch,) + tuple(dims[1:])
    batches = (calibration_batches(request.calibration_dir, request.bundle.preprocess, batch, log=log)
               if request.calibration_dir else iter(()))
    calibrator = make_calibrator(api.trt, runtime, batches, batch, shape, "float32", cal_path, cache, log)
    profile = None
    if dynamic:  # TensorRT calibrates a dynamic network at a calibration profile's shapes
        profile = builder.create_optimization_profile()
        profile.set_shape(name, shape, shape, shape)
    api.attach_calibrator(config, calibrator, profile)
    return calibrator


def _cross_check_gpu(api, builder, request, log):
    """Where TensorRT still reports fast FP16/INT8 (<= 10), say when it disagrees with the plan's table."""
    from edge.backends.trt_api import fast_fp16, fast_int8
    if not hasattr(builder, "platform_has_fast_int8"):
        return
    cc = request.compute_capability
    reported = api.gpu_fast(cc, builder)
    expected = (fast_fp16(cc), fast_int8(cc))
    if reported != expected:
        log("note: TensorRT reports fast FP16={}, fast INT8={} on this GPU (sm_{}{}), the table says {}, {}; "
            "building as planned".format(reported[0], reported[1], cc[0], cc[1], expected[0], expected[1]))


class BuildProgress(object):
    """Logs elapsed time every ``every_s`` seconds while a build runs, with the builder's phase where known."""

    def __init__(self, log, every_s=None, clock=time.time):
        self.log, self.clock = log, clock
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.text = ""
        self.monitor = None
        self.cancelled = False  # set by the progress monitor on Ctrl-C: it asks TensorRT to stop the build
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = None

    def phase(self, text):
        self.text = text

    def __enter__(self):
        self.start = self.clock()
        self._thread = threading.Thread(target=self._run, name="trt-build-progress")
        self._thread.daemon = True
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.every_s):
            self.log("building: {:.0f} s elapsed{}".format(self.clock() - self.start,
                                                             "; " + self.text if self.text else ""))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seconds = self.clock() - self.start
        return False


def memory_available_bytes(meminfo="/proc/meminfo"):
    """MemAvailable + SwapFree from /proc/meminfo, in bytes; None where it cannot be read."""
    values = {}
    try:
        with open(meminfo, "r") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("MemAvailable:", "MemFree:", "SwapFree:"):
                    values[parts[0][:-1]] = int(parts[1]) * 1024  # kB
    except (OSError, ValueError):
        return None
    memory = values.get("MemAvailable", values.get("MemFree"))
    return None if memory is None else memory + values.get("SwapFree", 0)


def check_build_memory(log, meminfo="/proc/meminfo", needed_bytes=NANO_FIRST_BUILD_BYTES):
    """Warn when free memory + swap is below what a Nano needs for a first build; returns the bytes found."""
    available = memory_available_bytes(meminfo)
    if available is not None and available < needed_bytes:
        log("warning: {:.1f} GiB of memory + swap is free; a first TensorRT build on a Jetson Nano wants about "
            "{:.0f} GiB and may be killed or crawl: add swap (deploy/README.md) or close other programs".format(
                available / float(1 << 30), needed_bytes / float(1 << 30)))
    return available
