"""source -> decode -> checks -> pre-process -> network -> post-process -> outputs.

One loop owns timing and streams: nothing is kept per frame once its outputs
have it, so memory stays flat however long a watched folder runs. A frame
that fails at any stage becomes an error result naming the file and the
stage; the loop goes on with the next frame.

The preprocessor comes from the backend (``backend.make_preprocessor()``):
the NumPy/OpenCV reference for ONNX Runtime, the CUDA kernel writing into
the engine's input buffer for TensorRT. ``checks`` are callables
``check(frame, bundle) -> Result or None`` run on the decoded frame before
it is preprocessed (modality, gradability): a Result they return is the
frame's verdict and the network is not run.
"""
import threading
import time
from collections import Counter

from edge.io.decode import ImageError, decode_image
from edge.postprocess import classify
from edge.profiling.profiler import Profiler, StageTimes
from edge.records import STATUSES, Result, error_result

# the stages whose sum is a frame's processing latency (latency_ms in results)
_LATENCY_STAGES = ("pre-process", "host-to-device", "network", "device-to-host", "post-process")


class RunStats(object):
    """Counts per status; ``interrupted`` when a stop was asked for before the source ended."""

    def __init__(self):
        self.counts = Counter(dict((s, 0) for s in STATUSES))
        self.interrupted = False

    @property
    def frames(self):
        return sum(self.counts.values())

    def add(self, result):
        self.counts[result.status] += 1

    def as_dict(self):
        out = dict(self.counts)
        out.update(frames=self.frames, interrupted=self.interrupted)
        return out


class Pipeline(object):
    def __init__(self, bundle, backend, outputs=(), profiler=None, checks=(), clock=time.perf_counter):
        self.bundle = bundle
        self.backend = backend
        self.outputs = list(outputs)
        self.profiler = profiler or Profiler(clock=clock)
        self.checks = list(checks)
        self.clock = clock
        self.preprocessor = backend.make_preprocessor()
        self._stop = threading.Event()

    def stop(self):
        """Ask the run to end after the frame in flight (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopping(self):
        return self._stop.is_set()

    def decode(self, frame, times):
        """Fill ``frame.image`` from ``frame.data``; returns an error Result or None."""
        if frame.error:
            return error_result(frame.source_id, frame.error)
        if frame.image is None:
            try:
                with times.stage("decode"):
                    frame.image = decode_image(frame.data, frame.source_id)
            except Exception as exc:  # decoders raise many types; the message names the file
                return error_result(frame.source_id, "decode: {}".format(_message(exc, frame.source_id)))
            finally:
                frame.data = None
        return None

    def check(self, frame):
        for check in self.checks:
            verdict = check(frame, self.bundle)
            if verdict is not None:
                return verdict
        return None

    def infer(self, frame, times):
        """Pre-process, network, post-process for one decoded frame -> Result."""
        stage = "pre-process"
        try:
            with times.stage("pre-process"):
                prepared = self.preprocessor.prepare(frame.image)
                x = self.preprocessor.collate([prepared])
            stage = "network"
            with times.stage("network"):
                logits = self.backend.infer(x)
            _merge_device_times(times, self.preprocessor.last_times_ms(), self.backend.last_times_ms())
            stage = "post-process"
            with times.stage("post-process"):
                (c,) = classify(logits, self.bundle)
                probs = dict((lab, float(p)) for lab, p in zip(c.labels, c.probs))
        except Exception as exc:  # a bad frame must not stop the run; the message names it
            return error_result(frame.source_id, "{}: {}".format(stage, _message(exc, frame.source_id)))
        latency_ms = sum(times.times_ms.get(s, 0.0) for s in _LATENCY_STAGES)
        return Result(frame.source_id, "ok", c.label, c.confidence, probs, "", latency_ms)

    def process(self, frame, times=None):
        """One frame -> Result: decode, checks, then the network; exceptions become error results."""
        times = times or StageTimes(frame.times_ms, self.clock)
        result = self.decode(frame, times)
        if result is None:
            result = self.check(frame)
        if result is None:
            result = self.infer(frame, times)
        return result

    def emit(self, frame, result, source=None):
        """Give every output the frame and its result, then tell the source the frame is done.

        ``source`` may be any iterable of frames; a Source's ``done`` is called
        only after every output (the ledger first) has the result.
        """
        times = StageTimes(frame.times_ms, self.clock)
        with times.stage("output"):
            for output in self.outputs:
                output.write(frame, result)
        done = getattr(source, "done", None)
        if done is not None:
            done(frame, result)

    def run(self, source):
        """Process every frame of ``source`` until it ends or ``stop()``; returns RunStats."""
        stats = RunStats()
        prof = self.profiler
        prof.start()
        frames = iter(source)
        while not self.stopping:
            start = self.clock()
            frame = next(frames, None)
            if frame is None:
                break
            times = StageTimes(frame.times_ms, self.clock)
            times.add("capture", (self.clock() - start) * 1000.0)
            result = self.process(frame, times)
            self.emit(frame, result, source)
            frame.times_ms["total"] = (self.clock() - start) * 1000.0
            prof.add_frame(frame.times_ms)
            stats.add(result)
        stats.interrupted = self.stopping
        return stats


def _merge_device_times(times, *device_times):
    """CUDA-event times replace the CPU clock for the stages they cover."""
    for measured in device_times:
        for name, ms in measured.items():
            times.times_ms[name] = ms


def _message(exc, source_id):
    if isinstance(exc, ImageError):  # already names the file and the problem
        return str(exc)
    return "{}: {}: {}".format(source_id, type(exc).__name__, exc)
