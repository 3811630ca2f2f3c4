"""Implicit INT8 before TensorRT 10: an IInt8EntropyCalibrator2 over a folder of images.

The images go through the same preprocessing as screening (``edge.preprocess``),
so the scales TensorRT measures are those of the inputs it will see. The
calibrator keeps a calibration cache (``read_calibration_cache`` /
``write_calibration_cache``, the pair torch2trt #446 forgot): a later build
reads the scales back and skips calibration.

Protocol (release/8.2 samples/python/int8_caffe_mnist/calibrator.py, NvInfer.h
IInt8Calibrator): TensorRT calls ``get_batch_size()``, then ``get_batch(names)``
until it returns None; each call returns one device pointer per input name,
pointing at a batch of exactly ``get_batch_size()`` inputs; first it asks
``read_calibration_cache()`` (bytes, or None to calibrate) and, after
calibrating, hands the cache to ``write_calibration_cache(cache)``.

The class is made on first use because it must subclass the module's own
``IInt8EntropyCalibrator2`` (a pybind11 trampoline: the base constructor must
be called explicitly).
"""
import os

import numpy as np

from edge.backends import BackendError

# NVIDIA's developer guide: about 500 images suffice to calibrate ImageNet classifiers.
MAX_CALIBRATION_IMAGES = 500


def image_paths(folder):
    from edge.io.decode import IMAGE_SUFFIXES
    if not os.path.isdir(folder):
        raise BackendError("{}: --calibration needs a folder of images (no such folder)".format(folder))
    paths = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames.sort()
        paths.extend(os.path.join(dirpath, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise BackendError("{}: no images to calibrate with ({})".format(folder, ", ".join(IMAGE_SUFFIXES)))
    return paths


def calibration_batches(folder, spec, batch_size, dtype=np.float32, max_images=MAX_CALIBRATION_IMAGES, log=None):
    """Yield NCHW host batches of exactly ``batch_size`` images of ``folder`` through ``edge.preprocess``.

    Unreadable images are skipped with a line naming them; a last partial batch is dropped.
    """
    from edge.io.decode import ImageError, read_image
    from edge.preprocess import preprocess
    log = log or (lambda line: None)
    pending = []
    for path in image_paths(folder)[:max_images]:
        try:
            pending.append(preprocess(read_image(path), spec)[0])
        except ImageError as exc:
            log("calibration: skipping {}".format(exc))
            continue
        if len(pending) == batch_size:
            yield np.ascontiguousarray(np.stack(pending), dtype=dtype)
            pending = []


_CLASSES = {}


def make_calibrator(trt, runtime, batches, batch_size, input_shape, input_dtype, cache_path, cache, log=None):
    """An IInt8EntropyCalibrator2 feeding ``batches`` (an iterator of host NCHW arrays) from one device buffer.

    ``cache_path``: where the calibration cache is read from and written to;
    ``cache``: the EngineCache (its atomic, warn-once writes). The device and
    pinned buffers are allocated here, once; ``release()`` frees the device one.
    """
    cls = _CLASSES.get(id(trt))
    if cls is None:
        cls = _CLASSES[id(trt)] = _calibrator_class(trt)
    return cls(runtime, batches, batch_size, input_shape, input_dtype, cache_path, cache, log or (lambda l: None))


def _calibrator_class(trt):
    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self, runtime, batches, batch_size, input_shape, input_dtype, cache_path, cache, log):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.runtime, self.batches, self.batch_size = runtime, iter(batches), int(batch_size)
            self.cache_path, self.cache, self.log = cache_path, cache, log
            shape = (self.batch_size,) + tuple(input_shape[1:])
            self.host = runtime.pinned(shape, input_dtype)
            self.device = runtime.alloc(self.host.nbytes)
            self.stream = runtime.stream()
            self.batches_given = 0
            self.error = None  # what stopped the calibration early, raised once the build returns
            self.written = None  # the cache bytes TensorRT handed over, kept even if the disk refused them

        def get_batch_size(self):
            return self.batch_size

        def get_batch(self, names, *_):
            # TensorRT calls this from C++ code that must not throw (NvInfer.h: getBatch is noexcept): an
            # exception here would end the process, so it ends the calibration instead and is raised after.
            try:
                return self._next_batch(names)
            except Exception as exc:
                self.error = exc
                return None

        def _next_batch(self, names):
            batch = next(self.batches, None)
            if batch is None:
                return None  # no more batches: TensorRT computes the scales
            if batch.shape != self.host.shape:
                raise BackendError("calibration batch has shape {}, expected {}".format(batch.shape, self.host.shape))
            np.copyto(self.host, batch, casting="same_kind")
            self.runtime.htod(self.device.ptr, self.host, self.stream)
            self.stream.synchronize()  # TensorRT reads the buffer as soon as get_batch returns
            self.batches_given += 1
            if self.batches_given % 10 == 1:
                self.log("calibrating: batch {} ({} images so far)".format(
                    self.batches_given, self.batches_given * self.batch_size))
            return [self.device.ptr] * len(names)

        def read_calibration_cache(self):
            data = self.cache.read_bytes(self.cache_path) if self.cache_path else None
            if data:
                self.log("calibration: reusing the scales in {}".format(self.cache_path))
            return data or None

        def write_calibration_cache(self, cache):
            self.written = bytes(memoryview(cache))
            if self.cache_path:
                self.cache.write_atomic(self.cache_path, self.written, "calibration")

        def release(self):
            self.device.free()
    return EntropyCalibrator
