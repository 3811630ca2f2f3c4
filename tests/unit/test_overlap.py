"""The overlapped run (edge/overlap.py through Pipeline.run): order, bounded memory, stopping, failures,
batching and the one-thread rule for the backend. Python 3.6, no torch, no timed assertions.

Real ONNX Runtime (tests/data/tiny4.onnx) and real SQLite where they can show the behaviour; a recording
backend where the test must see which thread called it or make a call slow.
"""
import gc
import os
import sqlite3
import threading
import time
import weakref

import numpy as np
import pytest

from conftest import LABELS, Collect, _VALID_MANIFEST
from edge.backends import create_backend
from edge.io.outputs import LedgerOutput, open_output
from edge.io.sources import open_source
from edge.ledger import Ledger
from edge.pipeline import OutputFailed, Pipeline, SourceFailed
from edge.preprocess import HostPreprocessor
from edge.records import Frame, Result


class RecordingBackend(object):
    """Logits computed from each row of the batch (so a mix-up between frames shows), recording the
    thread of every call and the size of every batch. ``delay_s`` makes the network the slow stage."""

    def __init__(self, max_batch=1, delay_s=0.0, fail_on=None):
        self.max_batch = max_batch
        self.delay_s = delay_s
        self.fail_on = fail_on  # a pixel mean that makes infer raise (a frame the network cannot take)
        self.created_on = threading.get_ident()
        self.infer_threads, self.batches = set(), []
        self.preprocessor = _RecordingPreprocessor()

    def make_preprocessor(self):
        return self.preprocessor

    def infer(self, x):
        self.infer_threads.add(threading.get_ident())
        self.batches.append(len(x))
        time.sleep(self.delay_s)
        means = x.reshape(len(x), -1).mean(axis=1)
        if self.fail_on is not None and np.any(np.isclose(means, self.fail_on, atol=1e-3)):
            raise RuntimeError("cannot take this one")
        return np.stack([means, -means, means * 2, np.zeros_like(means)], axis=1).astype(np.float32)

    def last_times_ms(self):
        return {}


class _RecordingPreprocessor(HostPreprocessor):
    def __init__(self):
        super(_RecordingPreprocessor, self).__init__(_VALID_MANIFEST["preprocess"])
        self.prepare_threads, self.collate_threads = set(), set()

    def prepare(self, rgb):
        self.prepare_threads.add(threading.get_ident())
        return super(_RecordingPreprocessor, self).prepare(rgb)

    def collate(self, prepared):
        self.collate_threads.add(threading.get_ident())
        return super(_RecordingPreprocessor, self).collate(prepared)


def grey_frames(n, size=64):
    """Frames with a bright square of a brightness of their own, so each frame's logits differ."""
    frames = []
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[8:size - 8, 8:size - 8] = 40 + (i * 7) % 200
        frames.append(Frame("frame{:03d}.png".format(i), img, meta={"index": i}))
    return frames


class ListSource(object):
    """A finite source over frames, recording how many it has handed out and which were marked done."""

    def __init__(self, frames):
        self.frames = frames
        self.yielded = 0
        self.done_ids = []

    def __iter__(self):
        for frame in self.frames:
            self.yielded += 1
            yield frame

    def done(self, frame, result):
        self.done_ids.append(frame.source_id)

    def describe(self):
        return "list of {} frames".format(len(self.frames))


def run(pipeline, frames):
    collect = Collect()
    pipeline.outputs.append(collect)
    source = ListSource(frames)
    stats = pipeline.run(source)
    return stats, collect, source


def test_results_come_in_input_order_although_workers_finish_out_of_order(tiny_bundle):
    delays = [0.03 if i % 3 == 0 else 0.0 for i in range(24)]

    def slow_check(frame, bundle):  # a check taking longer on some frames: workers finish out of order
        time.sleep(delays[frame.meta["index"]])
        return None
    pipeline = Pipeline(tiny_bundle, RecordingBackend(max_batch=4), checks=[slow_check], workers=3)
    frames = grey_frames(24)
    stats, collect, source = run(pipeline, frames)
    ids = [f.source_id for f in frames]
    assert [r.path for r in collect.results] == ids
    assert source.done_ids == ids  # done in input order, after the outputs
    assert stats.frames == 24 and stats.counts["ok"] == 24 and not stats.interrupted


class SlowOutput(object):
    """Takes 5 ms a frame and records in ``seen`` how far the source was read ahead of it."""

    def __init__(self, seen):
        self.seen = seen

    def write(self, frame, result):
        time.sleep(0.005)
        self.seen["written"] += 1
        self.seen["ahead"] = max(self.seen["ahead"], self.seen["read"] - self.seen["written"])

    def close(self):
        pass


def test_a_slow_output_never_lets_frames_pile_up(tiny_bundle):
    """However slow an output is, the source is read only as far as the window allows and no more
    frames (with their pixels) are alive than the pipeline's in-flight limit."""
    pipeline = Pipeline(tiny_bundle, RecordingBackend(max_batch=4), workers=2)
    limit = pipeline.in_flight_limit
    unread = grey_frames(40)
    alive = [weakref.ref(f.image) for f in unread]
    seen = {"read": 0, "written": 0, "ahead": 0, "alive": 0}

    def source():  # like files on disk: a frame is in memory only once read
        while unread:
            frame = unread.pop(0)
            seen["read"] += 1
            yield frame
            del frame
            seen["alive"] = max(seen["alive"], sum(r() is not None for r in alive) - len(unread))

    pipeline.outputs.append(SlowOutput(seen))
    stats = pipeline.run(source())
    assert stats.frames == 40 and seen["written"] == 40
    assert 0 < seen["ahead"] <= limit, "the source was read {} frames ahead of the outputs".format(seen["ahead"])
    assert 0 < seen["alive"] <= limit, "{} frames alive at once".format(seen["alive"])
    gc.collect()
    assert sum(r() is not None for r in alive) == 0, "the pipeline kept frames after the run"


def test_a_live_source_gets_a_smaller_window_so_the_picture_stays_fresh(tiny_bundle):
    """A camera always has a newest frame; frames queued behind the network only age. The reader takes
    the next one only when the smaller live window has room."""
    pipeline = Pipeline(tiny_bundle, RecordingBackend(max_batch=1), workers=2)
    live_limit = pipeline.workers + pipeline.batch + 1
    assert live_limit < pipeline.in_flight_limit
    seen = {"read": 0, "written": 0, "ahead": 0}

    class Camera(object):
        live = True

        def __iter__(self):
            for frame in grey_frames(30):
                seen["read"] += 1
                yield frame

    pipeline.outputs.append(SlowOutput(seen))
    stats = pipeline.run(Camera())
    assert stats.frames == 30 and seen["written"] == 30
    assert live_limit - 1 <= seen["ahead"] <= live_limit, "read {} frames ahead of the outputs".format(seen["ahead"])
    assert pipeline.window_for(grey_frames(1)) == pipeline.in_flight_limit  # files keep the wider window


def test_the_pipeline_keeps_nothing_per_frame_after_the_run(tiny_bundle):
    backend = create_backend("onnxruntime", tiny_bundle)
    pipeline = Pipeline(tiny_bundle, backend, workers=2)
    frames = grey_frames(30)
    alive = [weakref.ref(f.image) for f in frames]
    stats = pipeline.run(iter(frames))
    del frames
    gc.collect()
    assert stats.frames == 30
    assert [r() for r in alive if r() is not None] == []


def test_stop_mid_run_finishes_the_frames_in_flight_flushes_and_counts(tmp_path, tiny_bundle):
    pipeline = Pipeline(tiny_bundle, RecordingBackend(max_batch=2), workers=2)
    csv_path = str(tmp_path / "r.csv")
    sink = open_output(csv_path, LABELS)

    class StopAtFive(object):
        written = 0

        def write(self, frame, result):
            StopAtFive.written += 1
            if StopAtFive.written == 5:
                pipeline.stop()  # as a signal handler would, from another thread than the network's

        def close(self):
            pass
    pipeline.outputs.extend([sink, StopAtFive()])
    source = ListSource(grey_frames(200))
    stats = pipeline.run(source)
    with open(csv_path) as f:
        rows = f.read().splitlines()
    sink.close()
    assert stats.interrupted
    assert 5 <= stats.frames < 200
    # every frame taken from the source went through every output and was marked done: none half-way
    assert source.yielded == stats.frames == StopAtFive.written == len(source.done_ids) == len(rows) - 1
    assert stats.frames <= 5 + pipeline.in_flight_limit


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_check_is_an_error_row_naming_the_stage(tiny_bundle, workers):
    def picky(frame, bundle):
        if frame.meta["index"] == 2:
            raise ValueError("cannot judge this one")
        return Result(frame.source_id, "ungradable", error="too dark") if frame.meta["index"] == 3 else None
    stats, collect, _ = run(Pipeline(tiny_bundle, RecordingBackend(), checks=[picky], workers=workers),
                            grey_frames(5))
    assert [r.status for r in collect.results] == ["ok", "ok", "error", "ungradable", "ok"]
    assert collect.results[2].error == "check: frame002.png: ValueError: cannot judge this one"
    assert (stats.counts["ok"], stats.counts["error"], stats.counts["ungradable"]) == (3, 1, 1)


def test_a_bad_file_is_an_error_row_and_the_run_goes_on(tiny_bundle, screen_folder):
    folder, good, bad = screen_folder
    pipeline = Pipeline(tiny_bundle, create_backend("onnxruntime", tiny_bundle, batch=4), workers=2)
    stats, collect, _ = run(pipeline, list(open_source(folder)))
    by_path = dict((r.path, r) for r in collect.results)
    assert all(by_path[p].status == "ok" for p in good)
    assert all(by_path[p].status == "error" and by_path[p].error.startswith("decode: " + p) for p in bad)


def test_a_network_failure_in_a_batch_names_only_the_frame_that_fails(tiny_bundle):
    frames = grey_frames(12)
    bad = frames[5]
    backend = RecordingBackend(max_batch=4, delay_s=0.01)
    bad_mean = backend.preprocessor.prepare(bad.image).mean()
    backend.fail_on = bad_mean
    stats, collect, _ = run(Pipeline(tiny_bundle, backend, workers=2), frames)
    statuses = dict((r.path, r.status) for r in collect.results)
    assert statuses.pop(bad.source_id) == "error"
    assert set(statuses.values()) == {"ok"}
    (row,) = [r for r in collect.results if r.status == "error"]
    assert row.error == "network: frame005.png: RuntimeError: cannot take this one"


def test_batches_take_what_is_ready_and_split_the_logits_back_to_their_frames(tiny_bundle, screen_folder):
    # a slow network lets prepared frames queue up: batches form, never above the limit
    backend = RecordingBackend(max_batch=4, delay_s=0.02)
    stats, collect, _ = run(Pipeline(tiny_bundle, backend, workers=2), grey_frames(30))
    assert sum(backend.batches) == 30 and max(backend.batches) <= 4 and max(backend.batches) > 1
    # each frame got the logits of its own row: the same as one frame at a time
    _, serial, _ = run(Pipeline(tiny_bundle, RecordingBackend(max_batch=1), workers=0), grey_frames(30))
    assert [r.path for r in collect.results] == [r.path for r in serial.results]
    for a, b in zip(collect.results, serial.results):
        assert a.label == b.label
        np.testing.assert_allclose([a.probs[l] for l in LABELS], [b.probs[l] for l in LABELS], rtol=1e-5)


def test_batched_real_network_matches_one_image_at_a_time(tiny_bundle, screen_folder):
    folder, good, _ = screen_folder
    frames = lambda: [f for f in open_source(folder) if f.source_id in good] * 4  # noqa: E731
    batched = run(Pipeline(tiny_bundle, create_backend("onnxruntime", tiny_bundle, batch=4), workers=2), frames())[1]
    single = run(Pipeline(tiny_bundle, create_backend("onnxruntime", tiny_bundle), workers=0), frames())[1]
    assert [r.path for r in batched.results] == [r.path for r in single.results]
    for a, b in zip(batched.results, single.results):
        np.testing.assert_allclose([a.probs[l] for l in LABELS], [b.probs[l] for l in LABELS], atol=1e-5)


def test_the_backend_is_only_ever_used_from_the_thread_that_built_it(tiny_bundle):
    backend = RecordingBackend(max_batch=3, delay_s=0.005)
    pipeline = Pipeline(tiny_bundle, backend, workers=2)
    run(pipeline, grey_frames(20))
    assert backend.infer_threads == {backend.created_on}
    assert backend.preprocessor.collate_threads == {backend.created_on}  # the CUDA preprocessor relies on it
    assert backend.created_on not in backend.preprocessor.prepare_threads  # prepare runs on the workers
    assert not [t for t in threading.enumerate() if t.name.startswith("retina-")], "threads left running"


@pytest.mark.parametrize("workers", [0, 2])
def test_an_output_that_fails_stops_the_run_naming_it_and_the_frame_is_not_done(tmp_path, tiny_bundle, workers):
    path = str(tmp_path / "ledger.db")
    ledger = Ledger(path)
    run_id = ledger.start_run("frames", tiny_bundle, "test")
    # a real SQLite ledger allowed one page more than it has: SQLITE_FULL part way through, as on a full disk
    ledger.conn.execute("PRAGMA max_page_count = {}".format(ledger.conn.execute("PRAGMA page_count").fetchone()[0] + 1))
    collect = Collect()
    pipeline = Pipeline(tiny_bundle, RecordingBackend(), [LedgerOutput(ledger, run_id), collect], workers=workers)
    source = ListSource(grey_frames(400))
    with pytest.raises(OutputFailed) as info:
        pipeline.run(source)
    message = str(info.value)
    assert message.startswith("output ledger {} (run {}) failed writing frame".format(path, run_id))
    assert "OperationalError: database or disk is full" in message
    stats = info.value.stats
    assert 0 < stats.frames < 400
    committed = sqlite3.connect(path).execute("SELECT COUNT(*) FROM results").fetchone()[0]
    # what was counted is what the ledger holds, the later outputs got exactly those, and only they are done
    assert committed == stats.frames == len(collect.results) == len(source.done_ids)
    assert not [t for t in threading.enumerate() if t.name.startswith("retina-")]
    ledger.close()


class BrokenSource(ListSource):
    """Hands out some frames, says twice that its read timed out, then breaks."""

    def __iter__(self):
        for frame in self.frames[:3]:
            self.yielded += 1
            yield frame
            yield None
        raise IOError("camera unplugged")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_source_that_breaks_stops_the_run_after_the_frames_it_gave(tiny_bundle, workers):
    collect = Collect()
    source = BrokenSource(grey_frames(10))
    with pytest.raises(SourceFailed) as info:
        Pipeline(tiny_bundle, RecordingBackend(), [collect], workers=workers).run(source)
    assert str(info.value) == "input list of 10 frames failed while reading: OSError: camera unplugged"
    assert info.value.stats.frames == 3 and len(collect.results) == 3 and len(source.done_ids) == 3


def test_an_abort_on_the_network_thread_ends_every_thread_and_is_raised(tiny_bundle):
    class Interrupting(RecordingBackend):
        def infer(self, x):
            if len(self.batches) == 3:
                raise KeyboardInterrupt  # what a second Ctrl-C raises in the main thread
            return super(Interrupting, self).infer(x)
    pipeline = Pipeline(tiny_bundle, Interrupting(), workers=2)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, grey_frames(50))
    assert pipeline.stats.frames <= 3
    assert not [t for t in threading.enumerate() if t.name.startswith("retina-")]


@pytest.mark.parametrize("workers", [0, 2])
def test_abort_from_another_thread_ends_the_run_at_once_and_says_so(tiny_bundle, workers):
    """What a second Ctrl-C does: an event the threads poll, so nothing is raised into the main thread."""
    class Aborting(RecordingBackend):
        def __init__(self):
            super(Aborting, self).__init__()
            self.pipeline = None

        def infer(self, x):
            if len(self.batches) == 3:
                threading.Thread(target=self.pipeline.abort).start()  # as a signal handler would, mid-run
                time.sleep(0.3)
            return super(Aborting, self).infer(x)
    backend = Aborting()
    pipeline = backend.pipeline = Pipeline(tiny_bundle, backend, workers=workers)
    stats, collect, _ = run(pipeline, grey_frames(50))
    assert stats.aborted and stats.interrupted
    assert stats.frames == len(collect.results) <= 4
    assert not [t for t in threading.enumerate() if t.name.startswith("retina-")]
    stats, collect, _ = run(Pipeline(tiny_bundle, RecordingBackend(), workers=workers), grey_frames(5))
    assert not stats.aborted and stats.frames == 5


def test_serial_and_overlapped_give_the_same_rows(tiny_bundle, screen_folder):
    folder = screen_folder[0]
    results = []
    for workers in (0, 1, 3):
        collect = Collect()
        Pipeline(tiny_bundle, create_backend("onnxruntime", tiny_bundle), [collect], workers=workers).run(
            open_source(folder))
        results.append([(r.path, r.status, r.label, r.error) for r in collect.results])
    assert results[0] == results[1] == results[2]
    assert len(results[0]) == 6 and os.path.isabs(results[0][0][0])


def test_stop_tells_a_waiting_source_so_its_read_returns(tiny_bundle):
    """A watched folder or a camera blocks in its read until a frame comes; stop() must wake it."""
    class Waiting(ListSource):
        def __init__(self, frames):
            super(Waiting, self).__init__(frames)
            self.woken = threading.Event()

        def __iter__(self):
            for frame in self.frames:
                yield frame
            self.woken.wait(60)  # nothing more arrives: only stop() ends this read

        def stop(self):
            self.woken.set()
    pipeline = Pipeline(tiny_bundle, RecordingBackend(), workers=1)
    source = Waiting(grey_frames(3))
    stopper = threading.Timer(0.3, pipeline.stop)
    stopper.start()
    stats = pipeline.run(source)
    assert source.woken.is_set() and stats.frames == 3
