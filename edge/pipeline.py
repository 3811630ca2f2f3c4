"""source -> decode -> checks -> pre-process -> network -> post-process -> outputs.

The stages are small methods on ``Pipeline``; ``run`` streams a source
through them. With ``workers=0`` it runs them one frame at a time on the
calling thread; with ``workers >= 1`` (the default) they overlap on threads
joined by bounded queues (``edge.overlap``): the source is read and each
frame decoded, checked and ``prepare``d on worker threads, the network runs
on the calling thread (the one that built the backend: a CUDA context belongs
to the thread that made it current), and outputs run on an output thread,
in input order. Either way nothing is kept per frame once its outputs have
it, so memory stays flat however long a watched folder runs.

A frame that fails at any stage becomes an error result naming the file and
the stage; the run goes on with the next frame. An *output* that fails (the
ledger's disk is full) stops the run: ``run`` raises ``OutputFailed`` naming
the output, and that frame is never marked done. A source that raises stops
it with ``SourceFailed``. Both carry the stats of the frames finished before.

The preprocessor comes from the backend (``backend.make_preprocessor()``):
the NumPy/OpenCV reference for ONNX Runtime, the CUDA kernel writing into
the engine's input buffer for TensorRT. ``checks`` are callables
``check(frame, bundle) -> Result or None`` run on the decoded frame before
it is preprocessed (modality, gradability): a Result they return is the
frame's verdict and the network is not run.

Several bundles (``lanes=``, ``edge.lanes``): after decoding, the router sends
each frame to the lane of its modality (DICOM header, else a guess from the
pixels when the station needs one), or skips it when no bundle serves it; the
lane's checks, preprocessor and backend do the rest, and every network call
holds frames of one lane only. ``Pipeline(bundle, backend, ...)`` is one lane.
"""
import threading
import time
from collections import Counter

from edge.io.decode import ImageError, decode_image
from edge.lanes import Lane, Router
from edge.postprocess import classify
from edge.profiling.profiler import Profiler, StageTimes
from edge.records import STATUSES, Result, error_result

# stage times kept for the percentiles of a long run (past it a uniform sample: memory stays flat)
PROFILER_SAMPLES = 5000
# the stages whose sum is a frame's processing latency (latency_ms in results)
_LATENCY_STAGES = ("pre-process", "host-to-device", "network", "device-to-host", "post-process")


class RunStats(object):
    """Counts per status; ``interrupted`` when a stop was asked for before the source ended,
    ``aborted`` when ``Pipeline.abort()`` ended it without the frames in flight."""

    def __init__(self):
        self.counts = Counter(dict((s, 0) for s in STATUSES))
        self.referred = 0  # ok results with refer True (the bundle's referral point)
        self.interrupted = False
        self.aborted = False

    @property
    def frames(self):
        return sum(self.counts.values())

    def add(self, result):
        self.counts[result.status] += 1
        if getattr(result, "refer", None):
            self.referred += 1

    def as_dict(self):
        out = dict(self.counts)
        out.update(frames=self.frames, referred=self.referred, interrupted=self.interrupted)
        return out


class PipelineFailed(RuntimeError):
    """The run stopped because a part of it (an output, the source) failed; ``stats`` has what was done."""

    def __init__(self, message, part, cause=None):
        super(PipelineFailed, self).__init__(message)
        self.part, self.cause, self.stats = part, cause, None


class OutputFailed(PipelineFailed):
    """An output raised; the frame it was writing is not marked done."""


class SourceFailed(PipelineFailed):
    """The source raised while reading; the frames read before it are finished."""


class Pipeline(object):
    """``workers``: decode threads (0: run every stage on the calling thread). ``batch``: the most
    frames per network call (default: the backend's ``max_batch``); the network takes the frames
    already prepared, up to ``batch``, and never waits for a batch to fill.

    ``lanes``: several bundles (``edge.lanes.Lane``, each with its own backend, checks and batch) in
    place of ``bundle``, ``backend``, ``checks`` and ``batch``; ``guess``: the router's modality guess
    (default ``edge.modality.guess_modality``). ``bundle``, ``backend``, ``preprocessor`` and
    ``checks`` are the first lane's."""

    def __init__(self, bundle=None, backend=None, outputs=(), profiler=None, checks=(), clock=time.perf_counter,
                 workers=1, batch=None, lanes=None, guess=None):
        if lanes is None:
            lanes = [Lane(bundle.manifest["name"], bundle, backend, checks, batch)]
        self.router = Router(lanes, guess)
        self.lanes = self.router.lanes
        first = self.lanes[0]
        self.bundle, self.backend, self.preprocessor, self.checks = (first.bundle, first.backend,
                                                                     first.preprocessor, first.checks)
        self.outputs = list(outputs)
        self.profiler = profiler or Profiler(clock=clock, max_samples=PROFILER_SAMPLES)
        self.clock = clock
        self.workers = max(0, int(workers))
        self.batch = max(lane.batch for lane in self.lanes)
        self.stats = RunStats()
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._aborted_run = None  # the overlapped run's own abort event, while one runs
        self._source = None

    def stop(self):
        """Ask the run to end after the frames in flight (safe from a signal handler or another thread).

        A source with a ``stop()`` (a watched folder, a camera waiting for its
        next frame) is told too, so a read in progress returns at once.
        """
        self._stop.set()
        stop_source = getattr(self._source, "stop", None)
        if stop_source is not None:
            stop_source()

    def abort(self):
        """End the run at once, without waiting for the frames in flight (a second Ctrl-C).

        An event the run's threads poll, not an exception raised into the main
        thread: an exception from a signal handler can land anywhere, even in
        the clean-up that finishes the ledger. Frames already judged are still
        written; the run returns with ``stats.aborted`` set.
        """
        self._abort.set()
        self.stop()
        aborted = self._aborted_run
        if aborted is not None:
            aborted.set()

    @property
    def stopping(self):
        return self._stop.is_set()

    @property
    def aborting(self):
        return self._abort.is_set()

    @property
    def in_flight_limit(self):
        """The most frames between the source and the outputs at once (read, not yet emitted)."""
        return 1 if self.workers == 0 else 2 * (self.workers + self.batch) + 2

    def window_for(self, source):
        """The in-flight limit for ``source``. A live source (a camera, a stream) gets the smallest window
        that still keeps every stage busy, one frame per worker, one batch, one being written, since
        every frame waiting in a queue makes the picture on the display older; files get the wider one."""
        if self.workers and getattr(source, "live", False):
            return self.workers + self.batch + 1
        return self.in_flight_limit

    # --- the stages ---------------------------------------------------------------------------------

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

    def lane_of(self, frame):
        """The lane ``frame`` was routed to (``meta["model"]``)."""
        return self.router.lane_of(frame)

    def check(self, frame):
        """Route the decoded frame to its lane, then the lane's checks: a Result verdict, or None."""
        lane, verdict = self.router.route(frame)
        return verdict if lane is None else lane.check(frame)

    def prepare(self, frame, times):
        """Decode, route, checks, ``preprocessor.prepare`` (a worker's part) -> (prepared, None) or (None, Result)."""
        result = self.decode(frame, times)
        stage, model = "check", None
        try:
            if result is None:
                with times.stage("pre-process"):  # routing and the quality gate are image work before the network
                    result = self.check(frame)
            if result is not None:
                return None, result
            stage, lane = "pre-process", self.lane_of(frame)
            model = lane.name
            with times.stage("pre-process"):
                return lane.preprocessor.prepare(frame.image), None
        except Exception as exc:  # a bad frame must not stop the run; the message names it
            return None, error_result(frame.source_id, "{}: {}".format(stage, _message(exc, frame.source_id)),
                                      model)

    def infer_batch(self, frames, prepared, times):
        """Collate, network, post-process for frames already prepared -> one Result each.

        Runs on the thread that built the backend. Per-frame stage times are the
        batch's divided by its size. A batch that fails is retried frame by frame,
        so an error row names only the frame that fails on its own. Every frame
        of a batch belongs to one lane (that of the first).
        """
        n = len(frames)
        lane = self.lane_of(frames[0])
        stage = "pre-process"
        try:
            batch_times = StageTimes({}, self.clock)
            with batch_times.stage("pre-process"):
                x = lane.preprocessor.collate(prepared)
            stage = "network"
            with batch_times.stage("network"):
                logits = lane.backend.infer(x)
            _merge_device_times(batch_times, lane.preprocessor.last_times_ms(), lane.backend.last_times_ms())
            stage = "post-process"
            with batch_times.stage("post-process"):
                classes = classify(logits, lane.bundle)
                if len(classes) != n:
                    raise ValueError("the network gave {} rows of output for {} images".format(len(classes), n))
        except Exception as exc:  # a bad frame must not stop the run; the message names it
            if n > 1:
                return [self.infer_batch([f], [p], [t])[0] for f, p, t in zip(frames, prepared, times)]
            return [error_result(frames[0].source_id, "{}: {}".format(stage, _message(exc, frames[0].source_id)),
                                 lane.name)]
        results = []
        for frame, c, t in zip(frames, classes, times):
            for name, ms in batch_times.times_ms.items():
                t.add(name, ms / n)
            latency_ms = sum(t.times_ms.get(s, 0.0) for s in _LATENCY_STAGES)
            probs = dict((lab, float(p)) for lab, p in zip(c.labels, c.probs))
            results.append(Result(frame.source_id, "ok", c.label, c.confidence, probs, "", latency_ms, c.refer,
                                  lane.name))
        return results

    def infer(self, frame, times):
        """Pre-process, network, post-process for one decoded frame -> Result."""
        stage, lane = "pre-process", self.lane_of(frame)
        try:
            with times.stage("pre-process"):
                prepared = lane.preprocessor.prepare(frame.image)
        except Exception as exc:
            return error_result(frame.source_id, "{}: {}".format(stage, _message(exc, frame.source_id)), lane.name)
        return self.infer_batch([frame], [prepared], [times])[0]

    def process(self, frame, times=None):
        """One frame -> Result: decode, checks, then the network; exceptions become error results."""
        times = times or StageTimes(frame.times_ms, self.clock)
        prepared, result = self.prepare(frame, times)
        if result is None:
            result = self.infer_batch([frame], [prepared], [times])[0]
        return result

    def emit(self, frame, result, source=None):
        """Give every output the frame and its result, then tell the source the frame is done.

        ``source`` may be any iterable of frames; a Source's ``done`` is called
        only after every output (the ledger first) has the result. An output
        that raises stops here with OutputFailed naming it: the frame is not done.
        """
        times = StageTimes(frame.times_ms, self.clock)
        with times.stage("output"):
            for output in self.outputs:
                try:
                    output.write(frame, result)
                except Exception as exc:
                    raise OutputFailed("output {} failed writing {}: {}: {}".format(
                        describe_output(output), frame.source_id, type(exc).__name__, exc), output, exc)
        done = getattr(source, "done", None)
        if done is not None:
            try:
                done(frame, result)
            except Exception as exc:
                raise SourceFailed("input {} failed marking {} done: {}: {}".format(
                    _describe(source), frame.source_id, type(exc).__name__, exc), source, exc)

    # --- the run ------------------------------------------------------------------------------------

    def run(self, source):
        """Process every frame of ``source`` until it ends or ``stop()``; returns RunStats.

        A source may yield None to say its read timed out with nothing new: the
        run checks for a stop and reads again. Raises PipelineFailed (with
        ``stats``) when an output or the source fails.
        """
        self.stats = RunStats()  # counted live, so a run aborted by a second Ctrl-C can still report
        self.profiler.start()
        self._source = source
        try:
            if self.workers == 0:
                return self._run_serial(source, self.stats)
            from edge.overlap import OverlappedRun
            overlapped = OverlappedRun(self, source, self.stats)
            self._aborted_run = overlapped.aborted
            if self.aborting:  # asked for before the run's threads existed
                overlapped.aborted.set()
            return overlapped.run()
        finally:
            self._source = self._aborted_run = None

    def finish_frame(self, frame, result, start, stats, source):
        """Emit one frame, then account for it (total time, profiler, counts)."""
        self.emit(frame, result, source)
        frame.times_ms["total"] = (self.clock() - start) * 1000.0
        self.profiler.add_frame(frame.times_ms)
        stats.add(result)

    def _run_serial(self, source, stats):
        frames = iter(source)
        ended = False
        try:
            while not self.stopping:
                start = self.clock()
                frame = next(frames, _END)
                if frame is _END:
                    ended = True
                    break
                if frame is None:  # the source's read timed out: nothing new
                    continue
                times = StageTimes(frame.times_ms, self.clock)
                times.add("capture", (self.clock() - start) * 1000.0)
                self.finish_frame(frame, self.process(frame, times), start, stats, source)
        except PipelineFailed as exc:
            exc.stats = stats
            raise
        except Exception as exc:  # only the source's iterator can raise here
            failed = SourceFailed(source_failure(source, exc), source, exc)
            failed.stats = stats
            raise failed
        stats.interrupted = self.stopping and not ended
        stats.aborted = self.aborting
        return stats


_END = object()


def _describe(thing):
    describe = getattr(thing, "describe", None)
    return describe() if describe is not None else type(thing).__name__


def describe_output(output):
    return _describe(output)


def source_failure(source, exc):
    return "input {} failed while reading: {}: {}".format(_describe(source), type(exc).__name__, exc)


def _merge_device_times(times, *device_times):
    """CUDA-event times replace the CPU clock for the stages they cover."""
    for measured in device_times:
        for name, ms in measured.items():
            times.times_ms[name] = ms


def _message(exc, source_id):
    if isinstance(exc, ImageError):  # already names the file and the problem
        return str(exc)
    return "{}: {}: {}".format(source_id, type(exc).__name__, exc)
