"""The CUDA preprocessor: the bundle's preprocessing on the GPU, written straight into the engine's input.

    pre = CudaPreprocessor(bundle.preprocess, runtime, input_ptr, np.float16, max_batch, stream)
    batch = pre.collate([pre.prepare(rgb) for rgb in images])   # DeviceBatch(n, ptr, shape, dtype)
    engine.infer(batch); pre.last_times_ms()  # {"host-to-device": ms, "pre-process": ms}

Same interface as edge.preprocess.HostPreprocessor: ``prepare`` runs on a worker thread (CPU only),
``collate`` on the inference thread, on the backend's stream: per image, a copy into pinned staging,
an asynchronous upload, and preprocess.cu's kernels writing batch slot i of ``out_ptr``. The
host never waits for the GPU except to reuse a staging buffer whose upload is still running.

Every buffer is allocated when the preprocessor is built, sized for ``max_input_bytes`` (default:
a 4000x3000 RGB photograph) and ``max_side`` pixels; a larger image makes it grow once, with a log
line (see _ensure_capacity). The kernels reproduce edge/preprocess.py bit for bit (tests/unit/
test_gpu_preprocess_hostemu.py); the runtime interface is edge.gpu.cuda's.
"""
import collections
import math

import numpy as np

from edge.io.decode import ImageError
from models.bundle import CHANNELS, PreprocessError, roi_parameters

# the manifest's names (models/preprocess_spec.py) -> preprocess.cu's codes; cubic is not in the kernel
INTERPOLATIONS = {"nearest": 0, "linear": 1, "area": 2}                          # RE_INTERP_*
ROI_KINDS = {"none": 0, "fundus_disc": 1, "retina_band": 2, "centre": 3}         # RE_ROI_*
# what re_roi_counts measures for a kind (RE_MEASURE_*); kinds not listed need no counts
ROI_MEASURES = {"fundus_disc": 0, "retina_band": 1}
OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
DEFAULT_MAX_INPUT_BYTES = 4000 * 3000 * 3
DEFAULT_MAX_SIDE = 8192
RESIZE_BLOCK = (32, 8, 1)
_STAGING_BUFFERS = 2    # the host fills one while the other uploads


class PreprocessSpecError(ValueError):
    """A manifest preprocess section the kernel does not implement; the backend falls back to OpenCV."""


DeviceBatch = collections.namedtuple("DeviceBatch", "n ptr shape dtype")
DeviceBatch.__doc__ = "n images, NCHW, in device memory at ptr (the backend's input buffer)."


class KernelSettings(object):
    """The manifest's ``preprocess`` section as the kernel's arguments (validated)."""

    def __init__(self, spec):
        resize = spec.get("resize", {})
        interpolation = resize.get("interpolation")
        if interpolation not in INTERPOLATIONS:
            raise PreprocessSpecError("the CUDA kernel resizes with {}; the bundle asks for {!r}".format(
                ", ".join(sorted(INTERPOLATIONS)), interpolation))
        try:
            roi = roi_parameters(spec.get("roi", {"kind": "none"}))
        except PreprocessError as exc:
            raise PreprocessSpecError("the CUDA kernel knows roi kinds {} and their parameters; {}".format(
                ", ".join(sorted(ROI_KINDS)), exc))
        if roi["kind"] not in ROI_KINDS:
            raise PreprocessSpecError("the CUDA kernel knows roi kinds {}; the bundle asks for {!r}".format(
                ", ".join(sorted(ROI_KINDS)), roi["kind"]))
        self.colour_order = spec.get("colour_order")
        if self.colour_order not in CHANNELS:
            raise PreprocessSpecError("colour_order must be one of {}, not {!r}".format(
                ", ".join(sorted(CHANNELS)), self.colour_order))
        self.channels = CHANNELS[self.colour_order]
        if len(spec["mean"]) != self.channels or len(spec["std"]) != self.channels:
            raise PreprocessSpecError("mean and std need {} value(s) each for colour_order {}".format(
                self.channels, self.colour_order))
        self.out_h, self.out_w = (int(v) for v in resize["size"])
        self.interp = INTERPOLATIONS[interpolation]
        self.roi = ROI_KINDS[roi["kind"]]
        self.measure = ROI_MEASURES.get(roi["kind"])       # None: re_roi_counts is not launched
        # uint8 v > t  <=>  v > floor(t): the kernel compares integers (fundus disc)
        self.threshold = int(min(255, max(-1, math.floor(roi.get("threshold", 0)))))
        # the reference's float64 parameters, compared and multiplied in double precision (band, centre)
        self.band_threshold = float(roi.get("threshold", 0))
        self.margin = float(roi.get("margin", 0))
        self.fraction = float(roi.get("fraction", 1))
        # the reference's float32 constants (np.float32(scale), float32 mean/std arrays), padded to 3
        self.scale = np.float32(spec["scale"])
        self.mean = [np.float32(v) for v in spec["mean"]] + [np.float32(0)] * (3 - self.channels)
        self.std = [np.float32(v) for v in spec["std"]] + [np.float32(1)] * (3 - self.channels)

    def chan_map(self, input_order, colour_order=None):
        """Output channel c (``colour_order``, default the manifest's) reads source channel bits[2c:2c+2].
        With colour_order RGB (and for GREY): the source channels of R, G and B, which the grey value weighs."""
        value = 0
        for c in range(3):
            rgb = 2 - c if (colour_order or self.colour_order) == "BGR" else c
            source = rgb if input_order == "RGB" else (2 - rgb if input_order == "BGR" else 0)
            value |= source << (2 * c)
        return value


def image_layout(image):
    """(height, width, channels, pitch_bytes) of a uint8 HxW, HxWx1 or HxWx3 array whose pixels are packed."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError("CUDA pre-processing takes uint8 images, got {}".format(getattr(image, "dtype", type(image))))
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError("CUDA pre-processing takes HxW grey or HxWx3 colour images, got shape {}".format(image.shape))
    h, w, c = image.shape
    pitch = image.strides[0]
    if (c > 1 and image.strides[2] != 1) or image.strides[1] != c or pitch < w * c:
        raise ImageError("pixels are not packed (strides {})".format(image.strides))
    return h, w, c, pitch


class CudaPreprocessor(object):
    name = "cuda"

    def __init__(self, spec, runtime, out_ptr, out_dtype, max_batch, stream, kernels=None,
                 input_order="RGB", max_input_bytes=DEFAULT_MAX_INPUT_BYTES, max_side=DEFAULT_MAX_SIDE, log=None):
        if input_order not in ("RGB", "BGR"):
            raise ValueError("input_order must be RGB or BGR (grey is told by the image's shape)")
        self.settings = KernelSettings(spec)
        self.out_dtype = np.dtype(out_dtype)
        if self.out_dtype not in OUTPUT_DTYPES:
            raise PreprocessSpecError("the CUDA kernel writes float32 or float16, not {}".format(self.out_dtype))
        if runtime is None:
            raise ValueError("CudaPreprocessor needs a CUDA runtime (edge.gpu.cuda.load_runtime())")
        self.runtime, self.stream, self.out_ptr = runtime, stream, int(out_ptr)
        self.max_batch, self.input_order = int(max_batch), input_order
        self.log = log or (lambda message: None)
        if kernels is None:
            from edge.gpu.kernel import load_kernels
            kernels = load_kernels(runtime)
        self.kernels = kernels
        self.defines = kernels.defines
        s = self.settings
        self.slot_bytes = s.channels * s.out_h * s.out_w * self.out_dtype.itemsize
        # fixed scratch: plan, per-column and per-row taps
        tab_bytes = 4 * self.defines["RE_TAB_INTS"]
        self.plan = runtime.alloc(4 * self.defines["RE_PLAN_INTS"])
        self.xtab = runtime.alloc(tab_bytes * s.out_w)
        self.ytab = runtime.alloc(tab_bytes * s.out_h)
        self._capacity_bytes, self._max_side = 0, 0
        self._raw = self._counts = None
        self._staging, self._staged = [], []
        self._allocate_inputs(int(max_input_bytes), int(max_side))
        self._events = [(runtime.event(), runtime.event(), runtime.event()) for _ in range(self.max_batch)]
        self._last_n = 0

    def _allocate_inputs(self, capacity_bytes, max_side):
        rt = self.runtime
        self._raw = rt.alloc(capacity_bytes)
        self._counts = rt.alloc(4 * 2 * max_side)           # bright pixels per row, then per column
        self._staging = [rt.pinned((capacity_bytes,), np.uint8) for _ in range(_STAGING_BUFFERS)]
        self._staged = [None] * _STAGING_BUFFERS            # the event after each buffer's last upload
        self._capacity_bytes, self._max_side = capacity_bytes, max_side

    def _ensure_capacity(self, nbytes, side):
        """Grow the input buffers for an image larger than any before (logged; not per frame).

        Sizing for the largest input once keeps the per-frame path free of GPU allocation, which on a
        Jetson costs milliseconds and fragments the memory the CPU and GPU share. An image larger than
        that is still screened, at the price of one reallocation: the stream is drained first, since
        queued uploads and kernels may still use the old buffers.
        """
        if nbytes <= self._capacity_bytes and side <= self._max_side:
            return
        capacity = max(nbytes, self._capacity_bytes)
        max_side = max(side, self._max_side)
        self.log("CUDA pre-processing: growing its input buffers to {:.1f} MB and {} px per side for a larger "
                 "image (allocated once)".format(capacity / 1e6, max_side))
        self.stream.synchronize()
        self._raw.free()
        self._counts.free()
        self._allocate_inputs(capacity, max_side)

    def prepare(self, image):
        """Worker thread, CPU only: check the image and make its pixels packed (rows may keep a pitch)."""
        try:
            image_layout(image)
        except ImageError:
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
                raise
            image = np.ascontiguousarray(image)
            image_layout(image)
        return image

    def collate(self, images):
        """Inference thread: upload and preprocess each image into its batch slot; returns a DeviceBatch."""
        n = len(images)
        if not 1 <= n <= self.max_batch:
            raise ValueError("batch of {} image(s); this preprocessor takes 1 to {}".format(n, self.max_batch))
        for i, image in enumerate(images):
            self._one(i, image)
        self._last_n = n
        s = self.settings
        return DeviceBatch(n, self.out_ptr, (n, s.channels, s.out_h, s.out_w), self.out_dtype)

    def _one(self, slot, image):
        rt, stream, s, d = self.runtime, self.stream, self.settings, self.defines
        h, w, c, pitch = image_layout(image)
        nbytes = (h - 1) * pitch + w * c
        self._ensure_capacity(nbytes, max(h, w))
        k = slot % _STAGING_BUFFERS
        if self._staged[k] is not None:
            self._staged[k].synchronize()                  # its previous upload has left the buffer
        staging = self._staging[k]
        np.ndarray((h, w, c), np.uint8, staging, 0, (pitch, c, 1))[...] = image.reshape(h, w, c)
        start, uploaded, done = self._events[slot]
        start.record(stream)
        rt.htod(self._raw.ptr, staging[:nbytes], stream)
        uploaded.record(stream)
        self._staged[k] = uploaded
        rows, cols = self._counts.ptr, self._counts.ptr + 4 * h
        order = "GREY" if c == 1 else self.input_order
        chan_map = s.chan_map(order)
        if s.measure is not None:                            # the fundus disc and the retina band count
            rt.memset(rows, 0, 4 * (h + w), stream)
            threads, strip = d["RE_ROI_THREADS"], d["RE_ROI_ROWS"]
            self.kernels.launch("re_roi_counts", (_blocks(w, threads), _blocks(h, strip)), (threads,),
                                (self._raw.ptr, pitch, w, h, c, s.measure, s.threshold, s.chan_map(order, "RGB"),
                                 rows, cols), stream)
        self.kernels.launch("re_roi_plan", (1,), (d["RE_PLAN_THREADS"],),
                            (rows, cols, w, h, s.roi, s.out_w, s.out_h, s.interp, s.band_threshold, s.margin,
                             s.fraction, self.plan.ptr, self.xtab.ptr, self.ytab.ptr), stream)
        bx, by, _ = RESIZE_BLOCK
        self.kernels.launch("re_resize_normalize", (_blocks(s.out_w, bx), _blocks(s.out_h, by)), RESIZE_BLOCK,
                            (self._raw.ptr, pitch, c, self.plan.ptr, self.xtab.ptr, self.ytab.ptr,
                             self.out_ptr + slot * self.slot_bytes, s.out_w, s.out_h,
                             int(self.out_dtype == np.float16), chan_map, s.channels, s.scale)
                            + tuple(s.mean) + tuple(s.std), stream)
        done.record(stream)

    def last_times_ms(self):
        """Device times of the last collate from CUDA events (waits for it to finish)."""
        if not self._last_n:
            return {}
        events = self._events[:self._last_n]
        events[-1][2].synchronize()
        return {"host-to-device": sum(up.elapsed_ms(start) for start, up, _ in events),
                "pre-process": sum(done.elapsed_ms(up) for _, up, done in events)}

    def describe(self):
        s = self.settings
        return "CUDA pre-processing ({}; {}x{} {}, {} input buffer {:.1f} MB)".format(
            self.kernels.describe(), s.out_h, s.out_w, self.out_dtype.name, self.input_order,
            self._capacity_bytes / 1e6)

    def close(self):
        """Free the device buffers (pinned staging is the runtime's, freed by its close())."""
        for buffer in (self._raw, self._counts, self.plan, self.xtab, self.ytab):
            if buffer is not None:
                buffer.free()
        self._raw = self._counts = None


def _blocks(n, per_block):
    return (int(n) + per_block - 1) // per_block
