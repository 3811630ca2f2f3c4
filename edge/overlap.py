"""The overlapped run: reading, decoding and outputs on threads around the network.

    reader thread       source -> Frame, one at a time, only while a slot of the window is free
        | todo queue
    worker thread(s)    decode, checks, preprocessor.prepare   (``Pipeline.prepare``)
        | ready queue
    calling thread      preprocessor.collate, backend.infer, post-process  (``Pipeline.infer_batch``)
        | finished queue
    output thread       every output (the ledger first), then source.done, in input order

Why this shape: the backend is used only by the thread that built it (a CUDA
context is current on one thread; TensorRT and pycuda rely on it), and
signal handlers run on that same main thread. Decoding and preparing are
NumPy/OpenCV calls that release the GIL, so they overlap the network.

Memory: a semaphore of ``Pipeline.in_flight_limit`` slots is taken for each
frame the reader takes from the source and given back when its outputs have
it, so however slow an output is, no more than that many frames (and their
pixels) exist at once, and a live source is read only when there is room
(it keeps the newest frame itself). The queues are bounded by the same limit.
A live source gets a smaller window (``Pipeline.window_for``): frames waiting
in queues would only make the displayed picture older.

Batching rule: the network thread blocks for one prepared frame, then takes
those already waiting, until one lane's group reaches that lane's batch size
(``Lane.batch``); it never waits for a batch to fill, so batches grow only
when decoding runs ahead of the network. With several bundles the frames taken
are grouped by lane (``Pipeline.lane_of``) and each group is one network call:
a backend only ever sees frames of its own bundle.

Order: the reader numbers frames; with several workers they may finish out
of order, so the output thread holds early ones (at most the window) and
emits strictly by number. Results therefore appear in input order.

Stopping: ``Pipeline.stop()`` stops the reader; the frames already read go
through every stage and every output, then the threads end. A failing output
aborts at once (the frame it was writing is never marked done); a failing
source stops reading like ``stop()``; either is raised by ``run`` once the
threads have ended. Every blocking get, put or acquire waits at most
``POLL_S`` before looking at stop/abort again: no spinning, no hang.
"""
import queue
import threading
from collections import OrderedDict

from edge.pipeline import OutputFailed, PipelineFailed, RunStats, SourceFailed, source_failure
from edge.profiling.profiler import StageTimes
from edge.records import error_result

POLL_S = 0.1
ABORT_JOIN_S = 5.0  # after an abort, how long to wait for a thread still inside a decode or a read
_END = object()      # a producer has no more items
_ABORTED = object()  # what a get returns once the run is aborted


class _Item(object):
    """A frame with its place in the input order and what the stages made of it."""

    __slots__ = ("seq", "frame", "times", "start", "prepared", "result")

    def __init__(self, seq, frame, times, start):
        self.seq, self.frame, self.times, self.start = seq, frame, times, start
        self.prepared = self.result = None


class OverlappedRun(object):
    def __init__(self, pipeline, source, stats=None):
        self.p = pipeline
        self.source = source
        self.stats = stats if stats is not None else RunStats()
        limit = pipeline.window_for(source)
        self.window = threading.Semaphore(limit)
        self.todo = queue.Queue(maxsize=limit)
        self.ready = queue.Queue(maxsize=limit)
        self.finished = queue.Queue(maxsize=limit)
        self.aborted = threading.Event()
        self.halted = threading.Event()  # stop reading because a part failed (not a user's stop)
        self.failure = None
        self.source_ended = False
        self._lock = threading.Lock()

    def run(self):
        """Start the threads, run the network here, wait for the outputs; returns RunStats."""
        threads = [_start("retina-read", self._read)]
        threads += [_start("retina-prepare-{}".format(i), self._prepare) for i in range(self.p.workers)]
        threads.append(_start("retina-output", self._emit))
        try:
            self._infer()
            _join(threads, timeout_s=ABORT_JOIN_S if self.aborted.is_set() else None)
        except BaseException:  # a second Ctrl-C, or a bug on this thread: abort, let threads end, re-raise
            self.aborted.set()
            _join(threads, timeout_s=ABORT_JOIN_S)
            raise
        if self.failure is not None:
            self.failure.stats = self.stats
            raise self.failure
        self.stats.interrupted = self.p.stopping and not self.source_ended
        self.stats.aborted = self.p.aborting
        return self.stats

    def fail(self, exc, abort):
        with self._lock:
            if self.failure is None:
                self.failure = exc
        (self.aborted if abort else self.halted).set()

    # --- the threads ------------------------------------------------------------------------------

    def _read(self):
        clock = self.p.clock
        try:
            frames = iter(self.source)
            seq = 0
            while not (self.p.stopping or self.halted.is_set() or self.aborted.is_set()):
                if not self.window.acquire(timeout=POLL_S):
                    continue
                start = clock()
                frame = next(frames, _END)
                if frame is _END or frame is None:  # None: the source's read timed out, nothing new
                    self.window.release()
                    self.source_ended = frame is _END
                    if self.source_ended:
                        break
                    continue
                times = StageTimes(frame.times_ms, clock)
                times.add("capture", (clock() - start) * 1000.0)
                if not self._put(self.todo, _Item(seq, frame, times, start)):
                    break
                seq += 1
                frame = times = None  # hold no frame while waiting for a free slot
        except Exception as exc:  # the source itself broke: finish what was read, then raise it
            self.fail(SourceFailed(source_failure(self.source, exc), self.source, exc), abort=False)
        finally:
            for _ in range(self.p.workers):
                self._put(self.todo, _END)

    def _prepare(self):
        try:
            while True:
                item = self._get(self.todo)
                if item is _END or item is _ABORTED:
                    break
                try:
                    item.prepared, item.result = self.p.prepare(item.frame, item.times)
                except Exception as exc:  # Pipeline.prepare catches per stage; this is the last net
                    item.result = error_result(item.frame.source_id, "prepare: {}: {}: {}".format(
                        item.frame.source_id, type(exc).__name__, exc))
                if not self._put(self.ready, item):
                    break
                item = None  # hold no frame while waiting for the next one
        finally:
            self._put(self.ready, _END)

    def _infer(self):
        """On the calling thread: batches of prepared frames through the backend."""
        ended = 0
        while ended < self.p.workers:
            item = self._get(self.ready)
            batches = OrderedDict()  # lane name -> its items: one network call each
            while item is not _ABORTED:
                full = False
                if item is _END:
                    ended += 1
                elif item.result is not None:  # set aside or judged by a check: straight to the outputs
                    if not self._put(self.finished, item):
                        return
                else:
                    lane = self.p.lane_of(item.frame)
                    batch = batches.setdefault(lane.name, [])
                    batch.append(item)
                    full = len(batch) >= lane.batch
                if full or ended == self.p.workers:
                    break
                try:
                    item = self.ready.get_nowait()
                except queue.Empty:
                    break
            if self.aborted.is_set():
                return
            for batch in batches.values():
                if not self._infer_batch(batch):
                    return
            item = batch = batches = None  # hold no frame while waiting for the next one
        self._put(self.finished, _END)

    def _infer_batch(self, batch):
        """One network call for ``batch`` (frames of one lane); False once the run is aborted."""
        results = self.p.infer_batch([i.frame for i in batch], [i.prepared for i in batch],
                                     [i.times for i in batch])
        for done, result in zip(batch, results):
            done.prepared, done.result = None, result
            if not self._put(self.finished, done):
                return False
        return True

    def _emit(self):
        """On the output thread: every output, then the source's done, strictly in input order."""
        waiting = {}
        next_seq = 0
        while True:
            item = self._get(self.finished)
            if item is _END or item is _ABORTED:
                return
            waiting[item.seq] = item
            while next_seq in waiting:
                item = waiting.pop(next_seq)
                next_seq += 1
                try:
                    self.p.finish_frame(item.frame, item.result, item.start, self.stats, self.source)
                except PipelineFailed as exc:
                    self.fail(exc, abort=True)
                    return
                except Exception as exc:  # never let this thread die quietly: the run would wait for it
                    self.fail(OutputFailed("finishing {} failed: {}: {}".format(
                        item.frame.source_id, type(exc).__name__, exc), None, exc), abort=True)
                    return
                self.window.release()
                item = None  # hold no frame while waiting for the next one

    # --- waiting without spinning, and without hanging once aborted -------------------------------

    def _put(self, q, item):
        while not self.aborted.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q):
        while not self.aborted.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return _ABORTED


def _start(name, target):
    thread = threading.Thread(target=target, name=name)
    thread.daemon = True  # a source stuck in a read must not keep the process alive after an abort
    thread.start()
    return thread


def _join(threads, timeout_s=None):
    """Join each thread; in short waits so a signal handler can run on this thread meanwhile."""
    for thread in threads:
        waited = 0.0
        while thread.is_alive() and (timeout_s is None or waited < timeout_s):
            thread.join(POLL_S)
            waited += POLL_S
